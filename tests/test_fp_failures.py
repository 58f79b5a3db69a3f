"""Failed FP tasks: recorded, returned to the pool once, retired the second time; ratio_failed enforced."""

import json
import os

import pytest

from dflow_simplify.ops.loop_state import LoopState, check_ratio_failed, return_failed_frames
from tests.conftest import ROOT, run_cli


def _fail(system, frame):
    return {"system": system, "frame": frame, "engine": "x", "reason": "boom"}


def test_failed_frames_go_back_once_then_retire():
    state = LoopState(systems={"0/a": 5}, pool={"0/a": [0, 1]}, picked={"0/a": [2, 3, 4]})
    once = return_failed_frames(state, [_fail("0/a", 3)])
    assert once.picked == {"0/a": [2, 4]} and once.pool == {"0/a": [0, 1, 3]} and once.fp_retry == {"0/a": [3]}
    picked_again = LoopState(**{**once.__dict__, "pool": {"0/a": [0, 1]}, "picked": {"0/a": [2, 3, 4]}})
    twice = return_failed_frames(picked_again, [_fail("0/a", 3)])
    assert twice.fp_failed == {"0/a": [3]} and twice.fp_retry == {} and 3 not in twice.pool["0/a"]
    assert return_failed_frames(state, []) == state


def test_ratio_failed():
    check_ratio_failed(19, [_fail("0/a", 1)], 0.05)  # 1 of 20: at the limit, goes on
    with pytest.raises(ValueError, match=r"2 of 20 FP tasks failed \(10%\), more than ratio_failed = 0.05.*frame 1"):
        check_ratio_failed(18, [_fail("0/a", 1), _fail("0/a", 2)], 0.05)
    check_ratio_failed(0, [], 0.05)


@pytest.mark.slow
def test_injected_failures_are_recorded_and_the_run_goes_on(example, tmp_path):
    """A real workflow whose FP engine fails on ~1 frame in 5 (FlakyEMT): recorded, run continues."""
    cfg = json.loads((example / "config.json").read_text())
    cfg.update(fp_style="ase", fp_params={"calculator": "tests.failing_calculator:FlakyEMT"}, labeled=False,
               ratio_failed=0.6, stop_iter=2, pick_data=str(example / "data" / "pick"),
               training_iter0_model_path=[str(example / "models" / "00*")])
    cfg["default_training_param"]["training"]["numb_steps"] = 100
    path = tmp_path / "flaky.json"
    path.write_text(json.dumps(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = run_cli([path, "-o", tmp_path / "out"], env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["n_fp_failed"] > 0
    assert report["n_in_dataset"] == report["n_relabeled"]
    failures = [f for p in (tmp_path / "out" / "work").rglob("failures.json") if "outputs" in str(p)
                for f in json.loads(p.read_text())]
    assert failures and all("injected failure" in f["reason"] and f["engine"] == "ase" for f in failures)

    cfg["ratio_failed"] = 0.0
    path.write_text(json.dumps(cfg))
    strict = run_cli([path, "-o", tmp_path / "strict"], env=env)
    assert strict.returncode == 1
    assert "iter-000001--prep-train: FatalError:" in strict.stderr and "more than ratio_failed = 0.0" in strict.stderr
