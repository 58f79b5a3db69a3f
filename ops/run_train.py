"""RunTrain: `dp train` one model from its starting model, then freeze it (one process).

Start modes (DP-GEN's keys): `init_model` (--init-model from a checkpoint: training_iter0_model_path in
iteration 1, the previous iteration's checkpoints after that, when training_init_model is true),
`init_frz_model` (training_init_frozen_model), `finetune` (training_finetune_model; from a multi-task model's
branch with `model_branch`), or `scratch`.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from dflow.python import OP, OPIO, Artifact, FatalError, OPIOSign, TransientError

from .data import find_systems, open_system
from .exact_train import refit, run_exact, systems_with_ids
from .params import OPParams, fatal_errors

BACKENDS = {
    # flag, checkpoint files to keep, init-model argument inside a checkpoint dir, frozen model name
    "tensorflow": ("--tf", ["checkpoint", "model.ckpt.*"], "model.ckpt", "graph.pb"),
    "pytorch": ("--pt", ["checkpoint", "model.ckpt*.pt"], "model.ckpt.pt", "graph.pth"),
}
INIT_MODES = ("init_model", "init_frz_model", "finetune", "scratch")
TRAIN_STYLES = ("sgd", "exact")
SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "DP_INTRA_OP_PARALLELISM_THREADS": "1", "DP_INTER_OP_PARALLELISM_THREADS": "1"}


@dataclass(frozen=True)
class TrainConfig(OPParams):
    """RunTrain's parameters (DP-GEN's `train_backend`, `sys_batch_size`, `init_batch_size`,
    `dp_train_skip_neighbor_stat`; `step_configs.run_train.envs`; `model_branch`); `init_mode` as in this
    module's doc."""

    backend: str
    init_mode: str
    sys_batch_size: object = "auto"
    init_batch_size: object = "auto"
    skip_neighbor_stat: bool | None = None  # None: skip_neighbor_stat_by_default decides
    envs: dict = field(default_factory=dict)
    model_branch: str | None = None  # finetune from this branch of a multi-task model
    train_style: str = "sgd"  # "exact": solve the output layer (ops/exact_train.py) instead of `dp train`
    exact_refit: bool = False  # after `dp train`, re-solve the output layer exactly
    bootstrap: bool = False  # exact fits on a Poisson bootstrap of the frames (models from one starting file)
    seed: int = 0  # of the bootstrap
    type_map: list = field(default_factory=list)  # the data's types, for the exact fit
    renamed_types: bool = False  # element_substitution: the starting models name the types otherwise

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"train_backend: expected one of {list(BACKENDS)}, got {self.backend!r}")
        if self.init_mode not in INIT_MODES:
            raise ValueError(f"init_mode: expected one of {list(INIT_MODES)}, got {self.init_mode!r}")
        if self.train_style not in TRAIN_STYLES:
            raise ValueError(f"train_style: expected one of {list(TRAIN_STYLES)}, got {self.train_style!r}")


def system_paths(root: str | os.PathLike) -> list[str]:
    """deepmd system paths below `root`, as `dp train` takes them (HDF5 as file#group)."""
    out = []
    for rel in find_systems(str(root)):
        if rel.startswith("#"):
            out.append(f"{root}{rel}")
        elif "#" in rel:
            f, g = rel.split("#", 1)
            out.append(f"{os.path.join(str(root), f)}#{g}")
        else:
            out.append(os.path.normpath(os.path.join(str(root), rel)))
    return out


def _natoms(system: str) -> int:
    if "#" in system:
        with open_system(system, "deepmd/hdf5") as (_, types, _, _):
            return len(types)
    return len(Path(system, "type.raw").read_text().split())


def batch_size_of(spec, natoms: int) -> int:
    """deepmd-kit's rule for "auto" / "auto:N" (frames such that frames * natoms >= N, N = 32), else the int."""
    if isinstance(spec, str) and spec.startswith("auto"):
        target = int(spec.split(":")[1]) if ":" in spec else 32
        return max(1, -(-target // natoms))
    return int(spec)


def _batch_sizes(spec, systems: list[str]) -> list[int]:
    specs = spec if isinstance(spec, list) else [spec]
    specs = specs or ["auto"]
    return [batch_size_of(specs[min(i, len(specs) - 1)], _natoms(s)) for i, s in enumerate(systems)]


def set_training_data(jinput: dict, iter_systems: list[str], init_systems: list[str], sys_batch_size, init_batch_size) -> dict:
    """Point training_data at the given systems; per-system batch sizes as DP-GEN sets them from
    init_batch_size / sys_batch_size ("auto" resolved per system). A mixed batch size is kept."""
    data = jinput["training"].setdefault("training_data", {})
    data["systems"] = list(init_systems) + list(iter_systems)
    if not str(data.get("batch_size", "")).startswith("mixed"):
        data["batch_size"] = _batch_sizes(init_batch_size, init_systems) + _batch_sizes(sys_batch_size, iter_systems)
    return jinput


def train_command(backend: str, init_mode: str, init_model: Optional[Path], skip_neighbor_stat: bool,
                  model_branch: str | None = None) -> list[str]:
    """`dp train` and `dp freeze` in one process (ops/dp_train_freeze.py; PyTorch through ops/pt_train.py)."""
    flag, _, ckpt_name, frozen = BACKENDS[backend]
    cmd = [sys.executable, "-m", "dflow_simplify.ops.dp_train_freeze", flag, frozen, "train", "input.json"]
    if init_mode == "init_model":
        cmd += ["--init-model", str(Path(init_model) / ckpt_name) if Path(init_model).is_dir() else str(init_model)]
    elif init_mode == "init_frz_model":
        cmd += ["--init-frz-model", str(init_model)]
    elif init_mode == "finetune":
        cmd += ["--finetune", str(init_model)]
        if model_branch:
            cmd += ["--model-branch", model_branch]
    elif init_mode != "scratch":
        raise ValueError(f"unknown init mode {init_mode!r}")
    if skip_neighbor_stat:
        cmd.append("--skip-neighbor-stat")
    return cmd


def run_dp_train(workdir: Path, backend: str, init_mode: str, init_model: Optional[Path],
                 skip_neighbor_stat: bool = False, env: Optional[dict] = None,
                 model_branch: str | None = None) -> dict[str, Path]:
    """Train and freeze in `workdir` (holding input.json); returns the produced files."""
    _, keep, _, frozen = BACKENDS[backend]
    run_env = {**SINGLE_THREAD, **os.environ, **(env or {})}  # one thread unless the user says otherwise
    cmd = train_command(backend, init_mode, init_model, skip_neighbor_stat, model_branch)
    with open(workdir / "train.log", "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        ret = subprocess.run(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env=run_env)
    if ret.returncode != 0 or not (workdir / frozen).exists():
        tail = "".join((workdir / "train.log").read_text().splitlines(keepends=True)[-20:])
        # killed by a signal (OOM, a preempted node): worth a retry; an error exit is not
        error = TransientError if ret.returncode < 0 else FatalError
        raise error(f"`{' '.join(cmd)}` failed with exit code {ret.returncode}:\n{tail}")
    ckpt = workdir / "checkpoint_files"
    ckpt.mkdir(exist_ok=True)
    for pattern in keep:
        for f in glob.glob(str(workdir / pattern)):
            shutil.copy2(os.path.realpath(f), ckpt / os.path.basename(f))
    return {"model": workdir / frozen, "checkpoint": ckpt, "lcurve": workdir / "lcurve.out", "log": workdir / "train.log"}


def skip_neighbor_stat_by_default(init_mode: str, jinput: dict) -> bool:
    """Skip deepmd-kit's neighbor statistics when the training starts from a model and every descriptor gives
    its `sel` as numbers: the starting model's sel is kept, so the statistics would only set it again
    (DP-GEN's `dp_train_skip_neighbor_stat`; ~0.15 s a model here, more on large data). `sel: "auto"`
    needs them."""
    if init_mode == "scratch":
        return False
    descriptor = jinput.get("model", {}).get("descriptor", {})
    parts = descriptor.get("list", [descriptor]) if descriptor.get("type") == "hybrid" else [descriptor]
    return all(isinstance(d.get("sel"), (list, int)) for d in parts)


class RunTrain(OP):
    """Train one model of the ensemble with deepmd-kit and freeze it."""

    @classmethod
    def get_input_sign(cls):
        return OPIOSign({
            "task_name": str,
            "task_path": Artifact(Path),
            "init_model": Artifact(Path),
            "iter_data": Artifact(Path),
            "init_data": Artifact(List[Path], optional=True),
            "config": dict,
        })

    @classmethod
    def get_output_sign(cls):
        return OPIOSign({"model": Artifact(Path), "checkpoint": Artifact(Path), "lcurve": Artifact(Path), "log": Artifact(Path)})

    @OP.exec_sign_check
    @fatal_errors
    def execute(self, ip: OPIO) -> OPIO:
        cfg = TrainConfig.from_dict(ip["config"])
        work = Path(ip["task_name"])
        shutil.copytree(ip["task_path"], work, dirs_exist_ok=True)
        jinput = json.loads((work / "input.json").read_text())
        init_systems = [s for p in (ip["init_data"] or []) for s in system_paths(Path(p).resolve())]
        iter_systems = system_paths(Path(ip["iter_data"]).resolve())
        set_training_data(jinput, iter_systems, init_systems, cfg.sys_batch_size, cfg.init_batch_size)
        (work / "input.json").write_text(json.dumps(jinput, indent=2))
        init_model = Path(ip["init_model"]).resolve()
        if init_model.is_dir() and cfg.init_mode in ("init_frz_model", "finetune"):
            files = sorted(p for p in init_model.iterdir() if p.is_file())
            init_model = files[0]
        if cfg.train_style == "exact" or cfg.exact_refit:
            batch = jinput["training"]["training_data"]["batch_size"]  # a list, unless "mixed" (then uniform)
            batch = batch if isinstance(batch, list) else [1] * (len(init_systems) + len(iter_systems))
            systems = systems_with_ids(iter_systems, [Path(p).resolve() for p in ip["init_data"] or []], init_systems,
                                       batch)
        if cfg.train_style == "exact":
            bootstrap = (cfg.seed, int(ip["task_name"])) if cfg.bootstrap else None
            return OPIO(run_exact(work.resolve(), init_model, cfg.init_mode, cfg.backend, systems, cfg.type_map,
                                  jinput, bootstrap, cfg.renamed_types))
        skip = cfg.skip_neighbor_stat
        if skip is None:
            skip = skip_neighbor_stat_by_default(cfg.init_mode, jinput)
        out = run_dp_train(work, cfg.backend, cfg.init_mode, init_model, skip, cfg.envs, cfg.model_branch)
        if cfg.exact_refit:
            refit(work, out["model"].resolve(), systems, cfg.type_map, jinput)
        return OPIO(out)
