"""SelectConfs' plain functions: DP-GEN's classification, the capped seeded pick, the new pool."""

import json

import numpy as np
import pytest

from dflow_simplify.ops.classified import classify_shard
from dflow_simplify.ops.loop_state import LoopState, select
from dflow_simplify.ops.model_devi import COLUMNS, Deviations
from dflow_simplify.ops.select_confs import split_groups
from dflow_simplify.ops.selection import CANDIDATE, TrustLevels, classify, pick_cap

TRUST = TrustLevels(f_lo=0.1, f_hi=0.3, e_lo=0.01, e_hi=0.05)


def test_classify_boundaries_follow_dpgen():
    f = np.array([0.05, 0.1, 0.29, 0.3, 0.05, 0.05, 0.05])
    e = np.array([0.001, 0.001, 0.001, 0.001, 0.01, 0.05, 0.049])
    assert list(classify({"f": f, "e": e}, TRUST)) == ["accurate", "candidate", "candidate", "failed", "candidate", "failed",
                                           "candidate"]


def _state():
    return LoopState.initial({"0/a": 6, "0/b": 4})


def _devi(values):
    keys = [("0/a", i) for i in range(6)] + [("0/b", i) for i in range(4)]
    rows = np.zeros((len(keys), len(COLUMNS)))
    rows[:, COLUMNS.index("max_devi_f")] = [f for f, _ in values]
    rows[:, COLUMNS.index("devi_e")] = [e for _, e in values]
    return classify_shard(Deviations(keys, rows), TRUST)


def test_select_moves_picked_and_retires_accurate():
    devi = _devi([(0.2, 0), (0.05, 0), (0.5, 0), (0.15, 0), (0.12, 0), (0.01, 0),
                  (0.2, 0), (0.25, 0), (0.05, 0), (0.11, 0)])
    rules = {"pick_number": 3}
    new, picked, _, counts = select(_state(), devi, TRUST, rules, seed=7)
    assert counts == {"n_pool": 10, "n_candidate": 6, "n_accurate": 3, "n_failed": 1, "n_selected": 3, "n_probe": 0,
                      "stopped_by": None}
    assert LoopState.count(picked) == 3
    assert new.accurate == {"0/a": [1, 5], "0/b": [2]}
    pool = {(k, i) for k, v in new.pool.items() for i in v}
    assert ("0/a", 2) in pool and len(pool) == 4  # 3 candidates left + the failed frame
    assert not pool & {(k, i) for k, v in picked.items() for i in v}
    # seeded: same seed, same pick; another seed, (here) another pick
    assert select(_state(), devi, TRUST, rules, seed=7)[1] == picked
    assert any(select(_state(), devi, TRUST, rules, seed=s)[1] != picked for s in range(1, 6))


def test_iteration_zero_picks_at_random_from_everything():
    new, picked, _, counts = select(_state(), None, None, {"pick_number": 4}, seed=0)
    assert counts["n_selected"] == 4 and counts["n_candidate"] == 10
    assert LoopState.count(new.pool) == 6 and new.picked == picked


@pytest.mark.parametrize("rules,n_cand,n_acc,expected", [
    ({"pick_number": 10}, 4, 0, 4),
    ({"pick_number": 10, "fp_task_max": 3}, 8, 0, 3),
    ({"pick_number": 10, "fp_task_min": 5}, 4, 0, 0),
    ({"pick_number": 10, "fp_accurate_threshold": 0.9}, 5, 95, 0),
    ({"pick_number": 10, "fp_accurate_threshold": 0.9, "fp_accurate_soft_threshold": 0.5}, 30, 70, 5),
])
def test_pick_cap_follows_dpgen_fp_rules(rules, n_cand, n_acc, expected):
    assert pick_cap(n_cand, n_acc, 100, rules) == expected


def test_split_groups_keeps_every_frame_once():
    groups = split_groups({"0/a": [1, 2, 3], "0/b": [0, 5]}, 2)
    assert len(groups) == 3
    assert sorted((k, i) for g in groups for k, v in g.items() for i in v) == [
        ("0/a", 1), ("0/a", 2), ("0/a", 3), ("0/b", 0), ("0/b", 5)]
    assert CANDIDATE == "candidate"


def test_loop_state_file_stays_small_for_a_large_pool_and_round_trips(tmp_path):
    """The state moves through every step: a million-frame pool is a few runs, picks keep their order."""
    state = LoopState.initial({"0/big": 1_000_000, "0/small": 3})
    state.pool["0/big"] = [i for i in state.pool["0/big"] if i not in (10, 500_000)]
    state.picked = {"0/big": [500_000, 10]}
    state.accurate = {"0/small": [0, 2]}
    state.dump(tmp_path / "state.json")
    assert (tmp_path / "state.json").stat().st_size < 500
    assert LoopState.load(tmp_path / "state.json") == state
    old_style = tmp_path / "old.json"  # files written before the runs encoding still load
    old_style.write_text(json.dumps({"systems": {"0/a": 3}, "pool": {"0/a": [0, 2]}}))
    assert LoopState.load(old_style).pool == {"0/a": [0, 2]}
