"""PrepTrain: one task per model (its input.json) and the training set of this iteration.

The training set is every frame relabeled so far: the previous iteration's set plus the new
labeled groups, gathered into one `iter_data` directory (only relabeled frames move, never pick_data).
Frames relabeled as the probe (SelectConfs' `probe_number`) are held out: they go to `probe_data`, on which
ModelDevi measures this iteration's models, and join the training set one iteration later.
PrepTrain also settles the previous FP round in the loop state: frames that failed to label go back to
the pool (once), and the round stops the run when more than `ratio_failed` of its tasks failed. A picked
frame that came back with neither labels nor a failure record (its RunFP slice failed whole, which
`continue_on_success_ratio` lets pass on Argo) counts as failed, `kind: no_output`.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

from dflow.python import OP, OPIO, Artifact, OPIOSign

from .data import find_systems
from .loop_state import LoopState, check_ratio_failed, flatten, return_failed_frames
from .params import OPParams, fatal_errors

TASK_PATTERN = "%04d"


@dataclass(frozen=True)
class PrepTrainParams(OPParams):
    """PrepTrain's parameters: how each model's input is made from the template (DP-GEN's keys
    `pick_seed`, `model_devi_activation_func`, `training_reuse_*`) and the previous FP round's
    `ratio_failed` limit, which PrepTrain checks as it settles that round."""

    type_map: list
    seed: int = 0
    activation_func: list | None = None  # one [descriptor, fitting] pair per model
    reuse_iter: int | None = None  # from this iteration on, the `reuse` overrides apply
    reuse: dict = field(default_factory=dict)  # numb_steps, start_lr, start_pref_e, start_pref_f (None: keep)
    ratio_failed: float | None = None


def make_train_input(template: dict, index: int, iter_index: int, options: PrepTrainParams) -> dict:
    """The deepmd-kit input of model `index`: own seeds, DP-GEN's per-model activation functions and,
    from iteration `training_reuse_iter` on, DP-GEN's `training_reuse_*` overrides."""
    jinput = copy.deepcopy(template)
    model = jinput.setdefault("model", {})
    if options.type_map:
        model["type_map"] = list(options.type_map)
    seed = int(options.seed) * 1000 + 100 * iter_index + index
    for part in ("descriptor", "fitting_net"):
        if part in model:
            model[part]["seed"] = seed + (0 if part == "descriptor" else 7)
    training = jinput.setdefault("training", {})
    training["seed"] = seed + 13
    training.pop("validation_data", None)
    acts = options.activation_func
    if acts:
        model["descriptor"]["activation_function"] = acts[index][0]
        model["fitting_net"]["activation_function"] = acts[index][1]
    if options.reuse_iter is not None and iter_index >= options.reuse_iter:  # DP-GEN's training_reuse_iter
        reuse = options.reuse
        if reuse.get("numb_steps") is not None:
            training.pop("stop_batch", None)
            training["numb_steps"] = reuse["numb_steps"]
        if reuse.get("start_lr") is not None:
            jinput.setdefault("learning_rate", {})["start_lr"] = reuse["start_lr"]
        for pref in ("start_pref_e", "start_pref_f"):
            if reuse.get(pref) is not None:
                jinput.setdefault("loss", {})[pref] = reuse[pref]
    training["save_freq"] = last_step_saved(training)
    return jinput


def last_step_saved(training: dict) -> int:
    """A save_freq with which deepmd-kit's TensorFlow trainer (3.2.0) saves the last step. It saves inside the
    loop only on steps that are also displayed (disp_freq), and after the loop only when numb_steps is no
    multiple of save_freq: with numb_steps 500, save_freq 500, disp_freq 200 no checkpoint of step 500 is
    written and `dp freeze` fails (or freezes an older one). The smallest larger save_freq that does not
    divide numb_steps makes the last save the final step's."""
    steps = training.get("numb_steps", training.get("stop_batch", 0))
    save, disp = training.get("save_freq", 1000), training.get("disp_freq", 1000)
    if save <= 0 or steps <= 0:
        return save
    displayed = training.get("disp_training", True) and steps % disp == 0
    while steps % save == 0 and not displayed:
        save += 1
    return save


def group_frames(group: Path) -> set[tuple[str, int]]:
    """The pick_data frames (system, frame) of one labeled group (RunFP's frame_ids.json files)."""
    return {(k, int(i)) for f in Path(group).rglob("frame_ids.json") for k, i in json.loads(f.read_text())}


def gather_iter_data(previous: Path | None, new_groups: list[Path], out: Path, iter_index: int,
                     probe: set[tuple[str, int]] = frozenset(), previous_probe: Path | None = None,
                     probe_out: Path | None = None) -> int:
    """Copy the previous training set, the previous probe (now joining training) and this round's labeled
    groups into `out`; groups whose frames are all probe frames go to `probe_out` instead, held out of this
    training. Returns the number of training systems."""
    out.mkdir(parents=True, exist_ok=True)
    if probe_out is not None:
        probe_out.mkdir(parents=True, exist_ok=True)
    for earlier in (previous, previous_probe):
        if earlier is not None and Path(earlier).is_dir():
            shutil.copytree(earlier, out, dirs_exist_ok=True)
    for group in new_groups or []:
        if group is None or not Path(group).is_dir() or not find_systems(str(group)):
            continue
        frames = group_frames(group)
        held_out = probe_out is not None and bool(frames) and frames <= probe
        if frames & probe and not held_out:
            raise ValueError(f"labeled group {Path(group).name} mixes probe and picked frames")
        # RunFP names a group folder after its frames: the training set does not depend on slice order
        target = probe_out if held_out else out
        shutil.copytree(group, target / ("iter-%06d" % (iter_index - 1)) / Path(group).name, dirs_exist_ok=True)
    return len(find_systems(str(out)))


def fp_round_outcome(new_groups: list[Path], failure_files: list[Path]) -> tuple[int, list[dict]]:
    """Frames labeled and failures of the previous RunFP round."""
    labeled = sum(len(json.loads(f.read_text())) for g in new_groups or [] if g is not None
                  for f in Path(g).rglob("frame_ids.json"))
    failures = [f for p in failure_files or [] if p is not None and Path(p).is_file()
                for f in json.loads(Path(p).read_text())]
    return labeled, failures


def picks_without_output(state: LoopState, failures: list[dict], labeled_dirs: list[Path | None]) -> list[dict]:
    """Failure records for the picked frames that are neither labeled (in `labeled_dirs`: the training set so
    far, the previous probe, this round's groups) nor recorded as failed: frames of a RunFP slice that ended
    without output, which `continue_on_success_ratio` lets the loop pass on Argo."""
    labeled = set().union(*(group_frames(d) for d in labeled_dirs if d is not None and Path(d).is_dir()))
    recorded = {(f["system"], int(f["frame"])) for f in failures}
    return [{"system": k, "frame": i, "engine": "unknown", "kind": "no_output", "log_tail": [],
             "reason": "its RunFP slice ended without output (step_configs.run_fp.continue_on_success_ratio)"}
            for k, i in flatten(state.picked) if (k, i) not in labeled and (k, i) not in recorded]


class PrepTrain(OP):
    """Write one training task per model and gather all frames relabeled so far."""

    @classmethod
    def get_input_sign(cls):
        return OPIOSign({
            "template": dict,
            "numb_models": int,
            "iter_index": int,
            "options": dict,
            "state": Artifact(Path),
            "iter_data": Artifact(Path, optional=True),
            "new_data": Artifact(List[Path], optional=True),
            "fp_failures": Artifact(List[Path], optional=True),
            "probe_data": Artifact(Path, optional=True),
        })

    @classmethod
    def get_output_sign(cls):
        return OPIOSign({"task_names": List[str], "task_paths": Artifact(List[Path]), "iter_data": Artifact(Path),
                         "probe_data": Artifact(Path), "state": Artifact(Path)})

    @OP.exec_sign_check
    @fatal_errors
    def execute(self, ip: OPIO) -> OPIO:
        options = PrepTrainParams.from_dict(ip["options"])
        n_labeled, failures = fp_round_outcome(ip["new_data"], ip["fp_failures"])
        state = LoopState.load(ip["state"])
        lost = picks_without_output(state, failures, [ip["iter_data"], ip["probe_data"], *(ip["new_data"] or [])])
        if lost:
            print(f"warning: {len(lost)} picked frames came back from RunFP with neither labels nor a failure "
                  "record (a slice without output); they count as failed tasks", file=sys.stderr)
        check_ratio_failed(n_labeled, failures + lost, options.ratio_failed)
        state = return_failed_frames(state, failures + lost)
        state.dump("state.json")
        n = gather_iter_data(ip["iter_data"], ip["new_data"], Path("iter_data"), ip["iter_index"],
                             probe=set(flatten(state.probe)), previous_probe=ip["probe_data"],
                             probe_out=Path("probe_data"))
        if n == 0:
            raise ValueError("no relabeled frame to train on: every frame of iteration 0 failed to label")
        names, paths = [], []
        for i in range(ip["numb_models"]):
            task = Path("task." + TASK_PATTERN % i)
            task.mkdir(exist_ok=True)
            jinput = make_train_input(ip["template"], i, ip["iter_index"], options)
            (task / "input.json").write_text(json.dumps(jinput, indent=2))
            names.append(TASK_PATTERN % i)
            paths.append(task)
        return OPIO({"task_names": names, "task_paths": paths, "iter_data": Path("iter_data"),
                     "probe_data": Path("probe_data"), "state": Path("state.json")})
