import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "ag-au-emt-d3"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="session")
def example() -> Path:
    """The Ag-Au example with its data and four original models (trained once, ~2 min)."""
    subprocess.run([sys.executable, str(EXAMPLE / "make_example.py")], check=True)
    return EXAMPLE


@pytest.fixture(scope="session")
def example_inputs(tmp_path_factory) -> Path:
    """The Ag-Au example's config and data with stand-ins for its models (an empty checkpoint file per
    model folder), for tests that only validate, render or submit the config: seconds, no training."""
    subprocess.run([sys.executable, str(EXAMPLE / "make_example.py"), "--data-only"], check=True,
                   capture_output=True)
    folder = tmp_path_factory.mktemp("example-inputs")
    shutil.copy(EXAMPLE / "config.json", folder / "config.json")
    (folder / "data").symlink_to(EXAMPLE / "data")
    for i in range(4):
        model = folder / "models" / ("%03d" % i)
        model.mkdir(parents=True)
        (model / "model.ckpt.index").write_text("")
    return folder


def tiny_training_param(type_map: list[str]) -> dict:
    """A deepmd-kit input small enough for wiring tests (deepmd-kit's argument check passes it)."""
    return {
        "model": {"type_map": list(type_map), "descriptor": {"type": "se_e2_a", "sel": [8, 8], "rcut": 4.0,
                                                             "rcut_smth": 0.5, "neuron": [4]},
                  "fitting_net": {"neuron": [4]}},
        "learning_rate": {"start_lr": 0.001}, "loss": {},
        "training": {"numb_steps": 1, "training_data": {"batch_size": "auto"}},
    }


# the example cut short for the tests that run the loop another way than example_run: two of its four original
# models, two training rounds (iterations 0-2); a run of it takes ~1.5 min here instead of ~5
TWO_MODELS = {"numb_models": 2, "training_iter0_model_path": ["models/00[01]"]}
SHORT = {**TWO_MODELS, "stop_iter": 2}


def example_config(folder: Path, base: str = "config.json", edit=None, **changes) -> Path:
    """`folder`/config.json: the example's `base` config (its data and models linked beside it) updated with
    `changes`, then edited in place by `edit(j)` when given."""
    import json

    j = json.loads((EXAMPLE / base).read_text())
    j.update(changes)
    if edit:
        edit(j)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("data", "models"):
        if not (folder / name).exists():
            (folder / name).symlink_to(EXAMPLE / name)
    (folder / "config.json").write_text(json.dumps(j))
    return folder / "config.json"


def labeled_group(root: Path, name: str, frames: list) -> Path:
    """A labeled group as RunFP writes it: a system folder with type.raw and frame_ids.json."""
    import json

    d = root / name / "Ag1"
    d.mkdir(parents=True)
    (d / "type.raw").write_text("0\n")
    (d / "frame_ids.json").write_text(json.dumps(frames))
    return root / name


def dataset_frame_ids(run: Path) -> list[tuple]:
    """The (system key, frame) ids of a run's consolidated dataset, sorted."""
    import json

    return sorted(tuple(x) for d in (run / "dataset").iterdir() for x in json.loads((d / "frame_ids.json").read_text()))


def run_main(args, capsys) -> subprocess.CompletedProcess:
    """The CLI in this process, for refusals that end before any workflow is built (no dflow mode set):
    what run_cli gives, without a process start."""
    from dflow_simplify.workflows.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, out.out, out.err)


def run_cli(args, **kw):
    return subprocess.run([sys.executable, str(ROOT / "submit_simplify.py"), *map(str, args)],
                          capture_output=True, text=True, **kw)


@pytest.fixture(scope="session")
def example_run(example, tmp_path_factory) -> Path:
    """The example run end to end in local mode, once for the session."""
    out = tmp_path_factory.mktemp("example-run")
    proc = run_cli([example / "config.json", "-o", out])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (out / "cli-stdout.txt").write_text(proc.stdout)
    (out / "cli-stderr.txt").write_text(proc.stderr)
    return out


@pytest.fixture(scope="session")
def short_run(example, tmp_path_factory) -> Path:
    """The example cut short (SHORT) run end to end in local mode, once for the session: the reference of the
    tests that run the same config stopped and resumed, through Slurm or over SSH."""
    folder = tmp_path_factory.mktemp("short-run")
    proc = run_cli([example_config(folder / "inputs", **SHORT), "-o", folder / "run"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return folder / "run"
