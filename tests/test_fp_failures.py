"""Failed FP tasks: recorded, returned to the pool once, retired the second time; ratio_failed enforced.
The same through the whole loop: tests/test_loop_wiring.py (FlakyEMT, ratio_failed as a FatalError) and, with real
training and CP2K, tests/test_cp2k.py."""

import pytest

from dflow_simplify.ops.loop_state import LoopState, check_ratio_failed, return_failed_frames


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
