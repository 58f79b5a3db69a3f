"""Bad input and unsafe use, each refused before anything runs (exit 2, the key or path named, nothing
written) or made safe: one run per output folder, no output folder inside pick_data, no NaN trust level,
numbers in range, data checked from its headers, frames counted once, workflow names, status of a stopped run,
the run's fingerprint, deepmd-kit's save_freq quirk."""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from dflow_simplify.ops.data import find_systems
from dflow_simplify.ops.prep_train import PrepTrainParams, last_step_saved, make_train_input
from dflow_simplify.workflows.config import load_config
from dflow_simplify.workflows.output import LOCK, output_lock
from tests.conftest import ROOT, run_cli, run_main, tiny_training_param

TYPE_MAP = ["Ag", "Au"]
NATOMS = 4


def write_system(folder: Path, frames: int = 5, types=(0, 0, 1, 1)) -> Path:
    """A labeled deepmd/npy system of random 4-atom frames."""
    rng = np.random.default_rng(frames)
    s = folder / "set.000"
    s.mkdir(parents=True)
    (folder / "type.raw").write_text("\n".join(map(str, types)) + "\n")
    (folder / "type_map.raw").write_text("\n".join(TYPE_MAP) + "\n")
    np.save(s / "box.npy", np.tile(np.eye(3).ravel() * 4.1, (frames, 1)))
    np.save(s / "coord.npy", rng.random((frames, 3 * len(types))) * 4.1)
    np.save(s / "energy.npy", rng.random(frames))
    np.save(s / "force.npy", rng.random((frames, 3 * len(types))))
    return folder


def base_config(**overrides) -> dict:
    cfg = {
        "type_map": TYPE_MAP, "pick_data": "pick", "labeled": True, "numb_models": 2,
        "init_pick_number": 2, "iter_pick_number": 2, "model_devi_f_trust_lo": 0.05, "model_devi_f_trust_hi": 10.0,
        "default_training_param": tiny_training_param(TYPE_MAP),
    }
    cfg.update(overrides)
    return cfg


@pytest.fixture
def case(tmp_path) -> Path:
    """A folder with pick/ (two systems of 5 frames) for configs written next to it."""
    write_system(tmp_path / "pick" / "a")
    write_system(tmp_path / "pick" / "b")
    return tmp_path


def check(case: Path, capsys, name: str = "config.json", **overrides):
    path = case / name
    path.write_text(json.dumps(base_config(**overrides), allow_nan=True))
    return run_main([path, "--check"], capsys)


def test_the_base_case_passes(case, capsys):
    proc = check(case, capsys)
    assert proc.returncode == 0 and "10 frames in pick_data" in proc.stdout, proc.stderr


# -- 1. one live run per output folder ---------------------------------------------------------------------

HOLDER = """
import sys, time
from pathlib import Path
from dflow_simplify.workflows.output import output_lock
with output_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_run_on_a_live_output_folder_is_refused_naming_the_process(case, capsys):
    (case / "config.json").write_text(json.dumps(base_config()))
    out = case / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = sorted(p.name for p in out.iterdir())
        proc = run_main([case / "config.json", "-o", out], capsys)
        assert proc.returncode == 2
        assert f"is in use by the live process {holder.pid}" in proc.stderr, proc.stderr
        assert sorted(p.name for p in out.iterdir()) == before == [LOCK]  # nothing written by the refused run
    finally:
        holder.kill()
        holder.wait()
    with output_lock(out):  # the holder died: its lock is stale, a resume takes it
        assert (out / LOCK).read_text().strip() == str(os.getpid())


# -- 2. and 6. output folders inside pick_data, links and folders counted twice -------------------------

def test_an_output_folder_inside_pick_data_is_refused_before_anything_is_written(case, capsys):
    (case / "config.json").write_text(json.dumps(base_config(pick_data=".")))
    proc = run_main([case / "config.json", "-o", case / "simplify-run"], capsys)
    assert proc.returncode == 2 and "is inside pick_data's" in proc.stderr, proc.stderr
    assert not (case / "simplify-run").exists()
    proc = run_main([case / "config.json", "-o", case.parent], capsys)  # pick_data inside the output folder
    assert proc.returncode == 2 and "is around pick_data's" in proc.stderr


def test_a_symlink_loop_in_pick_data_is_walked_once(case, capsys):
    (case / "pick" / "a" / "loop").symlink_to(case / "pick")  # pick/a/loop -> pick
    (case / "pick" / "again").symlink_to(case / "pick" / "b")  # a second path to the same system
    assert find_systems(str(case / "pick")) == ["a", "b"]
    proc = check(case, capsys)
    assert proc.returncode == 0 and "10 frames in pick_data" in proc.stdout


def test_a_folder_listed_with_its_own_subfolder_is_refused(case, capsys):
    proc = check(case, capsys, pick_data=["pick", "pick/a"])
    assert proc.returncode == 2 and "is inside" in proc.stderr and "counted twice" in proc.stderr, proc.stderr


# -- 3. and 4. numbers ---------------------------------------------------------------------------------------

BAD_NUMBERS = [
    ("NaN trust hi", {"model_devi_f_trust_hi": math.nan}, "model_devi_f_trust_hi: NaN"),
    ("NaN deep in training", {"default_training_param": {**base_config()["default_training_param"],
                                                         "learning_rate": {"start_lr": math.nan}}},
     "default_training_param.learning_rate.start_lr: NaN"),
    ("infinite trust lo", {"model_devi_f_trust_lo": math.inf}, "model_devi_f_trust_lo: expected a finite"),
    ("infinite ratio", {"ratio_failed": math.inf}, "ratio_failed: expected a finite"),
    ("negative fp_task_max", {"fp_task_max": -1}, "fp_task_max: expected a positive integer"),
    ("negative ratio_failed", {"ratio_failed": -0.1}, "ratio_failed: expected a share between 0 and 1"),
    ("negative pick_seed", {"pick_seed": -3}, "pick_seed: expected an integer >= 0"),
    ("stop_iter 0", {"stop_iter": 0}, "stop_iter: expected a positive integer"),
    ("huge batch", {"sys_batch_size": "huge"}, "sys_batch_size: expected a positive integer, 'auto'"),
    ("unknown damping", {"labeled": False, "fp_style": "dftd3", "fp_params": {"damping": "d3xx"}},
     "damping: expected one of"),
    ("unknown D3 functional", {"labeled": False, "fp_style": "dftd3", "fp_params": {"method": "notafunctional"}},
     "method: simple-dftd3 has no d3bj parameters for 'notafunctional'"),
    ("unknown dflow_config key", {"dflow_config": {"hots": "http://x"}}, "dflow_config: unknown key(s) ['hots']"),
    ("unknown descriptor", {"default_training_param": {**base_config()["default_training_param"], "model": {
        "type_map": TYPE_MAP, "descriptor": {"type": "se_e9"}, "fitting_net": {}}}},
     "default_training_param (checked by deepmd-kit): at model.descriptor: get invalid choice `se_e9`"),
    ("unknown nested key", {"default_training_param": {**base_config()["default_training_param"],
                                                       "training": {"numb_steps": 1, "numb_stepz": 2}}},
     "undefined key `numb_stepz`"),
]


@pytest.mark.parametrize("what,changes,message", BAD_NUMBERS, ids=[b[0] for b in BAD_NUMBERS])
def test_bad_numbers_and_settings_are_refused_by_check(case, capsys, what, changes, message):
    proc = check(case, capsys, **changes)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_unset_trust_levels_may_be_infinite(case, capsys):
    proc = check(case, capsys, model_devi_f_trust_hi=math.inf, model_devi_e_trust_lo=math.inf,
                 model_devi_e_trust_hi=math.inf)
    assert proc.returncode == 0, proc.stderr


# -- 5. bad data -------------------------------------------------------------------------------------------

def _truncate(p: Path):
    p.write_bytes(p.read_bytes()[:-20])


BAD_DATA = [
    ("truncated npy", lambda c: _truncate(c / "pick/a/set.000/coord.npy"), "pick/a/set.000/coord.npy: truncated"),
    ("garbage npy", lambda c: (c / "pick/a/set.000/force.npy").write_bytes(b"\x00garbage" * 10),
     "pick/a/set.000/force.npy: not a readable .npy file"),
    ("frame counts disagree", lambda c: np.save(c / "pick/a/set.000/energy.npy", np.zeros(4)),
     "energy.npy has 4 frames but"),
    ("atom count", lambda c: (c / "pick/a/type.raw").write_text("0 0 1\n"),
     "coord.npy has shape (5, 12); expected (frames, 9) for 3 atoms"),
    ("type beyond type_map.raw", lambda c: (c / "pick/a/type.raw").write_text("0 0 1 2\n"),
     "uses type 2 but"),
    ("empty type.raw", lambda c: (c / "pick/a/type.raw").write_text(""), "pick/a/type.raw is empty"),
    ("no frame at all", lambda c: [np.save(c / f"pick/{s}/set.000/{n}.npy", np.zeros((0, k)))
                                   for s in "ab" for n, k in (("box", 9), ("coord", 12), ("force", 12))]
     + [np.save(c / f"pick/{s}/set.000/energy.npy", np.zeros(0)) for s in "ab"], "hold no frame"),
]


@pytest.mark.parametrize("what,damage,message", BAD_DATA, ids=[b[0] for b in BAD_DATA])
def test_bad_data_is_named_by_check(case, capsys, what, damage, message):
    damage(case)
    proc = check(case, capsys)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def _model_folders(case: Path, type_map=TYPE_MAP, checkpoint: bytes | None = None) -> None:
    for i in range(2):
        d = case / "models" / str(i)
        d.mkdir(parents=True)
        (d / "model.ckpt.index").write_text("")
        (d / "input.json").write_text(json.dumps({"model": {"type_map": type_map}}))
        (d / "checkpoint").write_bytes(checkpoint or b'model_checkpoint_path: "model.ckpt"\n')


@pytest.mark.parametrize("type_map,checkpoint,message", [
    (["Au", "Ag"], None, "differs from the type map ['Au', 'Ag'] the model in"),
    (["Ag", "Au", "Cu"], None, "differs from the type map ['Ag', 'Au', 'Cu']"),
    (TYPE_MAP, b"\xff\xfe\x00garbage", "is not TensorFlow's checkpoint text file"),
    (TYPE_MAP, b'model_checkpoint_path: "model.ckpt-99"\n', "names no saved checkpoint"),
], ids=["swapped type map", "extended type map", "garbage checkpoint", "missing step"])
def test_the_starting_models_are_checked(case, capsys, type_map, checkpoint, message):
    _model_folders(case, type_map, checkpoint)
    proc = check(case, capsys, training_init_model=True, training_iter0_model_path="models/*")
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    _model_folders(case / "ok")
    (case / "ok" / "pick").symlink_to(case / "pick")
    assert check(case / "ok", capsys, training_init_model=True, training_iter0_model_path="models/*").returncode == 0


def test_a_garbage_pytorch_model_file_is_named(case, capsys):
    (case / "m.pt").write_bytes(b"not a zip")
    proc = check(case, capsys, train_backend="pytorch", training_finetune_model=["m.pt", "m.pt"])
    assert proc.returncode == 2 and "m.pt is no PyTorch model file" in proc.stderr, proc.stderr


# -- 9. smaller ones ---------------------------------------------------------------------------------------

def test_a_non_ascii_config_name_gives_a_valid_workflow_name(case, capsys):
    from dflow_simplify.workflows.submit import workflow_name

    assert check(case, capsys, name="模拟-Ärger.json").returncode == 0
    name = workflow_name(case / "模拟-Ärger.json")
    assert name.isascii() and name.startswith("simplify-") and name == "simplify-rger"


def test_an_output_that_is_a_file_is_refused_in_one_line(case, capsys):
    (case / "config.json").write_text(json.dumps(base_config()))
    (case / "out").write_text("a file")
    proc = run_main([case / "config.json", "-o", case / "out"], capsys)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "is a file; expected a folder" in proc.stderr


def test_an_unreachable_s3_endpoint_is_one_line(case):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = base_config(dflow_s3_config={"endpoint": f"127.0.0.1:{port}", "bucket_name": "b", "secure": False})
    (case / "config.json").write_text(json.dumps(cfg))
    proc = run_cli([case / "config.json", "-o", case / "out"], env={**os.environ, "DFLOW_DEBUG_S3": "true"},
                   timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"error: uploading the inputs failed: S3 at 127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_status_of_a_stopped_run_lists_no_running_step(tmp_path, capsys):
    from dflow_simplify.workflows.record import RunRecord
    from dflow_simplify.workflows.runs import Run, status

    wf_dir = tmp_path / "work" / "simplify-x-abcde"
    wf_dir.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (wf_dir / "pid").write_text(str(dead.pid))
    step = SimpleNamespace(key="iter-000001--run-train-0000", displayName="t", phase="Running", type="Pod")
    wf = SimpleNamespace(query_status=lambda: "Running", query_step=lambda: [step])
    assert status(Run(RunRecord("simplify-x-abcde", "d"), tmp_path, None, wf)) == 1
    out = capsys.readouterr().out
    assert ": Stopped" in out and "running:" not in out


def test_the_fingerprint_changes_with_pick_data_contents(case):
    from dflow_simplify.workflows.submit import config_digest

    (case / "config.json").write_text(json.dumps(base_config()))
    before = config_digest(load_config(case / "config.json"))
    assert config_digest(load_config(case / "config.json")) == before
    time.sleep(0.01)
    energy = case / "pick" / "b" / "set.000" / "energy.npy"
    np.save(energy, np.load(energy) + 1.0)  # same shape, new labels
    assert config_digest(load_config(case / "config.json")) != before


# -- 10. deepmd-kit 3.2.0 saves no checkpoint of the last step for some save_freq/disp_freq ------------------

@pytest.mark.parametrize("steps,save,disp,saved", [(500, 500, 200, 501), (600, 300, 200, 300), (500, 1000, 100, 1000),
                                                   (400, 200, 100, 200), (300, 100, 70, 101)])
def test_the_last_step_is_always_saved(steps, save, disp, saved):
    training = {"numb_steps": steps, "save_freq": save, "disp_freq": disp}
    assert last_step_saved(training) == saved
    new = last_step_saved(training)
    # deepmd-kit saves step `steps` in the loop (a displayed multiple of save_freq) or after it (no multiple)
    assert (steps % new == 0 and steps % disp == 0) or steps % new != 0


def test_training_reuse_steps_get_a_save_freq_that_saves_the_last_step():
    template = {"model": {}, "training": {"numb_steps": 1000, "save_freq": 500, "disp_freq": 1000}}
    params = PrepTrainParams(type_map=TYPE_MAP, reuse_iter=2, reuse={"numb_steps": 500})
    assert make_train_input(template, 0, 1, params)["training"]["save_freq"] == 500  # 1000 is displayed
    later = make_train_input(template, 0, 2, params)["training"]
    assert later["numb_steps"] == 500 and 500 % later["save_freq"] != 0


def test_check_runs_without_dflow_for_a_local_config(case):
    """--check of a local config imports no dflow (fast), even with the new checks."""
    (case / "config.json").write_text(json.dumps(base_config()))
    code = ("import sys; from dflow_simplify.workflows.cli import main; rc = main([sys.argv[1], '--check']); "
            "assert 'dflow' not in sys.modules, 'dflow imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(case / "config.json")], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
