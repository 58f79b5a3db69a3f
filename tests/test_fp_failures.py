"""Failed FP tasks: recorded, returned to the pool once, retired the second time; ratio_failed enforced.
The same through the whole loop: tests/test_loop_wiring.py (FlakyEMT, ratio_failed as a FatalError) and, with real
training and CP2K, tests/test_cp2k.py."""

import json
import os

import pytest
from dflow.python import OPIO, FatalError

from dflow_simplify.ops.loop_state import LoopState, check_ratio_failed, return_failed_frames
from tests.conftest import labeled_group, tiny_training_param


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


def _prep_train(tmp_path, state, new_data, failures, ratio_failed=None):
    from dflow_simplify.ops.prep_train import PrepTrain

    tmp_path.mkdir(exist_ok=True)
    state_file = tmp_path / "state-in.json"
    state.dump(state_file)
    failure_file = tmp_path / "failures.json"
    failure_file.write_text(json.dumps(failures))
    work = tmp_path / "work"
    work.mkdir()
    os.chdir(work)
    out = PrepTrain().execute(OPIO({
        "template": tiny_training_param(["Ag"]), "numb_models": 1, "iter_index": 1,
        "options": {"type_map": ["Ag"], "ratio_failed": ratio_failed}, "state": state_file, "iter_data": None,
        "new_data": new_data, "fp_failures": [failure_file], "probe_data": None}))
    return LoopState.load(work / out["state"])


def test_picks_a_failed_slice_left_without_output_go_back_to_the_pool(tmp_path, monkeypatch):
    """continue_on_success_ratio lets a RunFP step pass with a slice that failed whole (on Argo): its frames
    come back with neither labels nor failures.json, and PrepTrain counts them as failed tasks."""
    monkeypatch.chdir(tmp_path)
    state = LoopState(systems={"0/a": 6}, pool={"0/a": [4, 5]}, picked={"0/a": [0, 1, 2, 3]})
    group = labeled_group(tmp_path / "fp", "group.0", [["0/a", 0], ["0/a", 1]])
    after = _prep_train(tmp_path, state, [group], [_fail("0/a", 2)])
    assert after.picked == {"0/a": [0, 1]} and after.pool == {"0/a": [2, 3, 4, 5]}
    assert after.fp_retry == {"0/a": [2, 3]}
    with pytest.raises(FatalError, match=r"2 of 4 FP tasks failed"):
        _prep_train(tmp_path / "again", state, [group], [_fail("0/a", 2)], ratio_failed=0.25)
