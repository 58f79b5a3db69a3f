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
        assert (out / LOCK).read_text().split()[0] == str(os.getpid())


# -- 2. and 6. output folders inside pick_data, links and folders counted twice -------------------------

def test_an_output_folder_inside_pick_data_is_refused_before_anything_is_written(case, capsys):
    (case / "config.json").write_text(json.dumps(base_config(pick_data=".")))
    proc = run_main([case / "config.json", "-o", case / "simplify-run"], capsys)
    assert proc.returncode == 2 and "is inside pick_data " in proc.stderr, proc.stderr
    assert not (case / "simplify-run").exists()
    proc = run_main([case / "config.json", "-o", case.parent], capsys)  # pick_data inside the output folder
    assert proc.returncode == 2 and "is around pick_data " in proc.stderr


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


# -- issue 31: values that contradict themselves or the rest, refused naming the key as written ----------------

def _models(case: Path, n: int = 2) -> None:
    for i in range(n):
        d = case / "models" / str(i)
        d.mkdir(parents=True)
        (d / "model.ckpt.index").write_text("")


CONTRADICTIONS = [
    ("bad_box ratio 1", {"fp_skip_bad_box": "length_ratio:1"}, "fp_skip_bad_box: 'length_ratio:1': expected a finite ratio > 1"),
    ("bad_box ratio NaN", {"fp_skip_bad_box": "length_ratio:5;height_ratio:nan"},
     "fp_skip_bad_box: 'height_ratio:nan': expected a finite ratio > 1"),
    ("fp_task_min above max", {"fp_task_min": 5, "fp_task_max": 3}, "fp_task_min (5) is above fp_task_max (3)"),
    ("empty force band", {"model_devi_f_trust_lo": 0.3, "model_devi_f_trust_hi": 0.3},
     "model_devi_f_trust_lo and model_devi_f_trust_hi are both 0.3: the band [lo, hi) is empty"),
    ("empty true-error band", {"true_error_e_trust_lo": 0.1, "true_error_e_trust_hi": 0.1},
     "true_error_e_trust_lo and true_error_e_trust_hi are both 0.1"),
    ("a number as a boolean", {"numb_models": True}, "numb_models: expected an integer, got true (a boolean)"),
    ("a trust level as a boolean", {"model_devi_f_trust_hi": False},
     "model_devi_f_trust_hi: expected a number, got false (a boolean)"),
    ("a boolean as a number", {"training_init_model": 1}, "key `training_init_model` gets wrong value type"),
    ("a nested number as a boolean", {"step_configs": {"run_fp": {"group_size": True}}},
     "step_configs.run_fp.group_size: expected an integer, got true"),
    ("a training number as a boolean", {"default_training_param": {**base_config()["default_training_param"],
                                                                   "training": {"numb_steps": True}}},
     "default_training_param.training.numb_steps: expected an integer, got true"),
    ("mass_map of the wrong length", {"mass_map": [107.9]}, "mass_map: 1 masses for the 2 elements of type_map"),
    ("a seed beyond 64 bits", {"pick_seed": 10**19 - 1}, "pick_seed: 9999999999999999999 does not fit in 64 bits"),
    # only the hi level was written: the error names it, not the lo level's default
    ("e_trust_hi without lo", {"model_devi_e_trust_hi": 0.5},
     "model_devi_e_trust_hi (0.5) is set but model_devi_e_trust_lo is not"),
    # legacy names: the error names the key as written
    ("legacy name in an error", {"model_devi_f_trust_lo": None, "f_trust_lo": 0.5, "model_devi_f_trust_hi": None,
                                 "f_trust_hi": 0.3}, "error: f_trust_lo (0.5) must be <= f_trust_hi (0.3)"),
    ("legacy and new name both", {"f_trust_lo": 0.1},
     "model_devi_f_trust_lo and f_trust_lo: the same key under 2 names (a legacy one and its new one); keep one"),
    ("legacy name wrongly typed", {"model_devi_e_trust_lo": None, "e_trust_lo": "high"}, "key `e_trust_lo`"),
    ("S3 secure as text", {"dflow_s3_config": {"secure": "false"}}, "dflow_s3_config.secure: expected true or false, "
                                                                     "got 'false'"),
    ("S3 endpoint as a number", {"dflow_s3_config": {"endpoint": 9000}}, "dflow_s3_config.endpoint: expected a string"),
    ("keys in the S3 endpoint", {"dflow_s3_config": {"endpoint": "http://AKIA:s3cr3t@minio.example.org:9000"}},
     "dflow_s3_config.endpoint: holds a user name and password (user:password@)"),
    ("a token in the Argo URL", {"dflow_config": {"host": "https://admin:pw@argo.example.org:2746"}},
     "dflow_config.host: holds a user name and password"),
]


@pytest.mark.parametrize("what,changes,message", CONTRADICTIONS, ids=[c[0] for c in CONTRADICTIONS])
def test_contradictions_are_refused_naming_the_key_as_written(case, capsys, what, changes, message):
    cfg = base_config(**changes)
    for key in [k for k, v in changes.items() if v is None]:
        cfg.pop(key)
    (case / "config.json").write_text(json.dumps(cfg))
    proc = run_main([case / "config.json", "--check"], capsys)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    if "@" in json.dumps(changes):
        assert "s3cr3t" not in proc.stderr + proc.stdout and ":pw@" not in proc.stderr + proc.stdout


def test_the_same_starting_model_twice_is_refused(case, capsys):
    _models(case)
    proc = check(case, capsys, training_init_model=True, training_iter0_model_path=["models/0", "models/*"],
                 numb_models=3)
    assert proc.returncode == 2, proc.stderr
    assert f"training_iter0_model_path: the model in {case / 'models' / '0'} is given more than once" in proc.stderr


def test_labeled_with_an_fp_style_says_labeled_wins(case, capsys):
    proc = check(case, capsys, fp_style="dftd3")  # DP-GEN accepts both: warned, not refused
    assert proc.returncode == 0, proc.stderr
    assert "warning: fp_style 'dftd3' is not used: labeled: true wins" in proc.stdout and "fp_style none" in proc.stdout


# -- issue 31: config files that are no JSON object, and comments ----------------------------------------------

def _check_text(case: Path, capsys, text: str | bytes, name: str = "config.json"):
    path = case / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return run_main([path, "--check"], capsys)


BAD_FILES = [
    ("latin-1", lambda t: t.replace('"Au"', '"Au\xe9"').encode("latin-1"), "not UTF-8 text (byte 0xe9 at line 1 column"),
    ("duplicate key", lambda t: t.replace('"numb_models": 2', '"numb_models": 2,\n "numb_models": 3'),
     "key 'numb_models' is given twice in one object (lines 1, 2); JSON would keep the last one silently"),
    ("deeply nested", lambda t: t[:-1] + ', "x": ' + "[" * 50000 + "]" * 50000 + "}", "nested too deeply"),
    ("nested past the limit", lambda t: t[:-1] + ', "x": ' + "[" * 70 + "]" * 70 + "}", "nested more than 64 levels"),
    ("a 5000-digit seed", lambda t: t[:-1] + ', "pick_seed": ' + "7" * 5000 + "}",
     "pick_seed: an integer of 5000 digits; expected at most 19 digits"),
    ("a comment after a value", lambda t: t.replace('"numb_models": 2,', '"numb_models": 2,  # two\n'),
     "is not valid JSON: Expecting property name enclosed in double quotes: line 1 column"),
]


@pytest.mark.parametrize("what,damage,message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_unreadable_config_files_are_one_line(case, capsys, what, damage, message):
    proc = _check_text(case, capsys, damage(json.dumps(base_config())))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_a_config_path_that_is_a_folder_is_one_line(case, capsys):
    (case / "folder.json").mkdir()
    proc = run_main([case / "folder.json", "--check"], capsys)
    expected = f"error: config file {case / 'folder.json'} is a folder; expected a JSON file\n"
    assert proc.returncode == 2 and proc.stderr == expected


def test_full_line_comments_are_accepted_and_errors_keep_their_line(case, capsys):
    """DP-GEN's example configs explain each key on a `#` line above it: such lines (and `//` ones) are
    blanked before parsing, so a JSON error's line and column are the file's own."""
    lines = json.dumps(base_config(), indent=1).splitlines()
    commented = [lines[0], "  # the elements, in the models' order", "    // another comment"] + lines[1:]
    assert _check_text(case, capsys, "\n".join(commented)).returncode == 0
    broken = commented[:5] + ["  oops,"] + commented[5:]
    proc = _check_text(case, capsys, "\n".join(broken))
    assert proc.returncode == 2 and "is not valid JSON: Expecting value: line 6 column 3" in proc.stderr, proc.stderr
    with_hash_in_text = base_config(fp_skip_bad_box="length_ratio:5")
    with_hash_in_text["type_map"] = TYPE_MAP
    assert _check_text(case, capsys, "# top\n" + json.dumps(with_hash_in_text, indent=1)).returncode == 0


# -- issue 31: NaN or infinity in pick_data, found by --check -------------------------------------------------

def _poison(case: Path, system: str, array: str, frame: int, value=math.nan):
    path = case / "pick" / system / "set.000" / f"{array}.npy"
    a = np.load(path)
    a[frame, 0] = value
    np.save(path, a)


@pytest.mark.parametrize("array,value,labeled", [("coord", math.nan, False), ("box", math.inf, False),
                                                 ("energy", math.nan, True), ("force", -math.inf, True)])
def test_non_finite_values_in_pick_data_are_named_with_system_and_frame(case, capsys, array, value, labeled):
    if array == "energy":
        path = case / "pick" / "b" / "set.000" / "energy.npy"
        e = np.load(path)
        e[3] = value
        np.save(path, e)
    else:
        _poison(case, "b", array, 3, value)
    changes = {} if labeled else {"labeled": False, "fp_style": "ase", "fp_params": {"calculator": "emt"}}
    proc = check(case, capsys, **changes)
    assert proc.returncode == 2, proc.stderr
    assert (f"pick_data: system {case / 'pick' / 'b'}, frame 3: set.000/{array}.npy holds NaN or infinity"
            in proc.stderr), proc.stderr


def test_labels_are_not_read_where_they_are_not_used(case, capsys):
    _poison(case, "a", "force", 1)  # the ase engine labels anew: pick_data's old forces do not matter
    proc = check(case, capsys, labeled=False, fp_style="ase", fp_params={"calculator": "emt"})
    assert proc.returncode == 0, proc.stderr


# -- issue 31: every command that writes refuses a place inside what the run reads --------------------------

def test_check_checks_the_output_folder_as_the_run_does(case, capsys):
    (case / "config.json").write_text(json.dumps(base_config()))
    for out, message in [(case / "pick" / "a" / "out", "the output folder is inside pick_data"),
                         (Path("/proc/simplify-out"), "-o /proc/simplify-out: cannot write in /proc"),
                         (case / "config.json", "is a file; expected a folder")]:
        proc = run_main([case / "config.json", "--check", "-o", out], capsys)
        assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert run_main([case / "config.json", "--check", "-o", case / "new"], capsys).returncode == 0
    assert not (case / "new").exists() and not list(case.glob(".simplify-probe-*"))  # the check writes nothing


def test_the_output_may_not_hold_or_sit_in_the_starting_models_or_init_data(case, capsys):
    _models(case)
    write_system(case / "init" / "s")
    cfg = base_config(training_init_model=True, training_iter0_model_path="models/*", init_data_sys=["init/s"])
    (case / "config.json").write_text(json.dumps(cfg))
    for out, what in [(case / "models" / "0" / "out", "inside the starting models"),
                      (case / "init", "around init data (init_data_sys)")]:
        proc = run_main([case / "config.json", "--check", "-o", out], capsys)
        assert proc.returncode == 2 and what in proc.stderr, proc.stderr


def test_substitute_refuses_to_write_into_the_old_frames(case, capsys):
    proc = run_main(["substitute", case / "pick", case / "pick" / "new", "--substitute", "Cu=Ag"], capsys)
    assert proc.returncode == 2 and "OUT " in proc.stderr and "inside the old frames" in proc.stderr, proc.stderr
    assert not (case / "pick" / "new").exists()
