"""Selection: DP-GEN's classification (its own test cases, true error included) and the selection styles
on constructed inputs."""

import numpy as np
import pytest

from dflow_simplify.ops.classified import classify_shard
from dflow_simplify.ops.loop_state import CONVERGED, NOTHING_SELECTED, STOP_ITER, LoopState, converged, flatten, select
from dflow_simplify.ops.model_devi import COLUMNS, Deviations
from dflow_simplify.ops.selection import (
    ACCURATE,
    CANDIDATE,
    FAILED,
    TrustLevels,
    classify,
    pick,
    pick_cluster_max,
    pick_diverse,
    pick_each,
    pick_max_devi,
    quantity_scores,
    scores,
)
from tests.conftest import labeled_group

INF = float("inf")
# dpgen tests/simplify/test_post_model_devi.py: one frame whose deviation (and true error) row is
# max_devi_v 0.2, min_devi_v 0.1, avg_devi_v 0.15, max_devi_f 0.2, min_devi_f 0.1, avg_devi_f 0.15, devi_e 0.2
DPGEN_ROW = {"f": np.array([0.2]), "e": np.array([0.2]), "f_err": np.array([0.2]), "e_err": np.array([0.2])}


@pytest.mark.parametrize("levels,expected", [
    # (f_lo, f_hi, e_lo, e_hi, true f_lo, true f_hi, true e_lo, true e_hi): DP-GEN's verdict
    ((0.15, 0.25, INF, INF, INF, INF, INF, INF), CANDIDATE),  # test_post_model_devi_f_candidate: picked
    ((INF, INF, 0.15, 0.25, INF, INF, INF, INF), CANDIDATE),  # test_post_model_devi_e_candidate: picked
    ((0.0, 0.0, INF, INF, INF, INF, INF, INF), FAILED),  # test_post_model_devi_f_failed: no candidate, failed
    ((INF, INF, 0.0, 0.0, INF, INF, INF, INF), FAILED),  # test_post_model_devi_e_failed
    ((0.3, 0.4, 0.3, 0.4, INF, INF, INF, INF), ACCURATE),  # test_post_model_devi_accurate
    ((INF, INF, 0.15, 0.25, 0.15, 0.25, INF, INF), CANDIDATE),  # test_post_model_devi_true_error_candidate
])
def test_classification_matches_dpgen_simplify_tests(levels, expected):
    assert list(classify(DPGEN_ROW, TrustLevels(*levels))) == [expected]


def test_true_error_levels_combine_as_in_dpgen():
    """DP-GEN: failed if any quantity >= its hi; candidate if any in [lo, hi); accurate only if all below lo."""
    trust = TrustLevels(f_lo=0.1, f_hi=0.5, f_err_lo=0.05, f_err_hi=0.3)
    values = {"f": np.array([0.01, 0.01, 0.01, 0.2, 0.6, 0.2]),
              "e": np.zeros(6),
              "f_err": np.array([0.01, 0.1, 0.4, 0.01, 0.01, 0.4]),
              "e_err": np.zeros(6)}
    assert list(classify(values, trust)) == [ACCURATE, CANDIDATE, FAILED, CANDIDATE, FAILED, FAILED]
    # without true-error levels the true errors are ignored, as DP-GEN's use_true_error switch does
    assert list(classify(values, TrustLevels(f_lo=0.1, f_hi=0.5))) == [ACCURATE] * 3 + [CANDIDATE, FAILED, CANDIDATE]
    with pytest.raises(ValueError, match="true errors"):
        classify({"f": values["f"], "e": values["e"]}, trust)


def test_score_is_the_distance_above_the_trust_levels():
    trust = TrustLevels(f_lo=0.1, f_hi=1.0, e_lo=0.01, e_hi=1.0)
    s = scores({"f": np.array([0.2, 0.05]), "e": np.array([0.0, 0.03])}, trust)
    assert np.allclose(s, [2.0, 3.0])
    # a level of 0 dominates (every frame is far above it); unset levels do not count
    s0 = scores({"f": np.array([0.2, 0.05]), "e": np.array([0.0, 0.03])}, TrustLevels(f_lo=0.1, f_hi=1.0, e_lo=0.0))
    assert list(np.argsort(-s0)) == [1, 0]


def test_max_devi_picks_the_largest_scores_first():
    score = np.array([0.3, 2.0, 0.1, 5.0, 1.0])
    assert list(pick_max_devi(score, 3)) == [3, 1, 4]
    assert list(pick("max_devi", 10, score, np.random.default_rng(0))) == [3, 1, 4, 0, 2]


def _clusters(rng):
    """90 candidates in one tight cluster (the majority population) and 5 in each of two far clusters."""
    centres = [np.zeros(4), np.full(4, 10.0), np.array([10.0, -10, 0, 0])]
    sizes = [90, 5, 5]
    x = np.concatenate([c + 0.1 * rng.standard_normal((n, 4)) for c, n in zip(centres, sizes)])
    label = np.repeat([0, 1, 2], sizes)
    return x, label


def test_diverse_covers_every_cluster_where_random_mostly_does_not():
    rng = np.random.default_rng(1)
    x, label = _clusters(rng)
    score = np.ones(len(x))
    picked = pick_diverse(x, score, 3)
    assert sorted(label[picked]) == [0, 1, 2]
    # random picks of 3 hit both small clusters in few draws (expected ~0.5%)
    hits = sum(set(label[pick("random", 3, score, np.random.default_rng(s))]) >= {1, 2} for s in range(200))
    assert hits < 10


def test_diverse_never_picks_near_duplicates_while_far_points_remain():
    x = np.array([[0.0, 0], [0.001, 0], [5, 5], [5.001, 5], [-5, 5]])
    picked = pick_diverse(x, np.array([1.0, 0.9, 0.5, 0.5, 0.5]), 3)
    assert picked[0] == 0 and set(picked) in ({0, 2, 4}, {0, 3, 4})


def test_diverse_with_a_deviation_weight_prefers_uncertain_frames_at_equal_spread():
    x = np.array([[0.0], [10.0], [10.1], [-10.0]])
    score = np.array([5.0, 1.0, 8.0, 1.0])
    assert list(pick_diverse(x, score, 2)) == [2, 3]  # farthest from the start at the largest score
    assert list(pick_diverse(x, score, 2, weight=2.0)) == [2, 0]  # 10 * 5**2 beats 20.1 * 1


def test_max_devi_each_takes_the_largest_of_each_quantity_in_turn():
    # frames 0-3 far above the force level (hot cells), 4-7 above the energy level, force scale runs higher
    values = {"f": np.array([9.0, 8, 7, 6, 1.2, 1.1, 1.0, 0.5]), "e": np.array([0.1, 0.1, 0.1, 0.1, 3, 4, 2, 5])}
    trust = TrustLevels(f_lo=1.0, f_hi=100.0, e_lo=1.0, e_hi=100.0)
    per_quantity = quantity_scores(values, trust)
    assert per_quantity.shape == (2, 8)
    assert list(scores(values, trust)) == list(per_quantity.max(axis=0))
    assert set(pick("max_devi", 4, scores(values, trust), np.random.default_rng(0))) == {0, 1, 2, 3}
    assert list(pick_each(per_quantity, 4)) == [0, 7, 1, 5]
    assert list(pick("max_devi_each", 4, scores(values, trust), np.random.default_rng(0),
                     per_quantity=per_quantity)) == [0, 7, 1, 5]
    # a frame first in both rankings is taken once
    assert list(pick_each(np.array([[3.0, 2, 1], [3.0, 1, 2]]), 3)) == [0, 2, 1]
    # one quantity set: max_devi's order
    assert list(pick_each(np.array([[0.3, 2.0, 0.1, 5.0]]), 3)) == [3, 1, 0]


def test_select_max_devi_each_reads_both_deviations():
    state = _pool()
    keys = flatten(state.pool)
    values = np.zeros((40, len(COLUMNS)))
    values[:, COLUMNS.index("max_devi_f")] = np.r_[np.full(20, 0.5), np.full(20, 0.2)]
    values[:, COLUMNS.index("devi_e")] = np.r_[np.full(20, 0.0), np.linspace(0.1, 0.3, 20)]
    trust = TrustLevels(f_lo=0.1, f_hi=1.0, e_lo=0.1, e_hi=1.0)
    classified = classify_shard(Deviations(keys, values), trust)
    _, picked, _, _ = select(state, classified, trust, dict(RULES, select_style="max_devi_each"), seed=0)
    assert len(picked.get("0/a", [])) == 2 and picked["0/b"] == [18, 19]  # two by force, the top two by energy


def test_cluster_max_takes_the_largest_score_of_each_cluster():
    rng = np.random.default_rng(2)
    x, label = _clusters(rng)
    score = rng.uniform(1, 2, len(x))
    picked = pick_cluster_max(x, score, 3, np.random.default_rng(0))
    assert sorted(label[picked]) == [0, 1, 2]
    for p in picked:  # each pick is its cluster's worst-predicted frame
        assert score[p] == score[label == label[p]].max()
    assert list(score[picked]) == sorted(score[picked], reverse=True)
    # max_devi spends every pick on the big cluster when its scores are highest
    score[label == 0] += 5
    assert set(label[pick_max_devi(score, 3)]) == {0}
    assert sorted(label[pick_cluster_max(x, score, 3, np.random.default_rng(0))]) == [0, 1, 2]


def test_cluster_max_is_seeded_and_handles_small_pools():
    rng = np.random.default_rng(5)
    x, score = rng.standard_normal((50, 3)), rng.uniform(1, 2, 50)
    a = pick_cluster_max(x, score, 7, np.random.default_rng(11))
    assert list(a) == list(pick_cluster_max(x, score, 7, np.random.default_rng(11)))
    assert len(set(a)) == 7
    assert sorted(pick_cluster_max(x[:4], score[:4], 9, np.random.default_rng(0))) == [0, 1, 2, 3]
    # duplicates: k-means leaves clusters empty, the picks still come to n distinct frames
    dup = np.zeros((10, 2))
    assert len(set(pick_cluster_max(dup, np.arange(10.0), 4, np.random.default_rng(0)))) == 4


def test_pick_refuses_an_unknown_style_and_diverse_without_features():
    with pytest.raises(ValueError, match="select_style"):
        pick("clever", 2, np.ones(3), np.random.default_rng(0))
    with pytest.raises(ValueError, match="features"):
        pick("diverse", 2, np.ones(3), np.random.default_rng(0))
    with pytest.raises(ValueError, match="cluster_max needs descriptor features"):
        pick("cluster_max", 2, np.ones(3), np.random.default_rng(0))


# ---- select(): styles, the probe, the stopping rule ---------------------------------------------------------

def _pool(n=40):
    return LoopState.initial({"0/a": n // 2, "0/b": n // 2})


def _devi(state, f, features=None):
    """The pool with force deviations `f`, classified by TRUST as a ModelDevi slice hands it over (with the
    candidates' rows of `features`)."""
    keys = flatten(state.pool)
    values = np.zeros((len(keys), len(COLUMNS)))
    values[:, COLUMNS.index("max_devi_f")] = f
    classified = classify_shard(Deviations(keys, values), TRUST)
    if features is not None:
        classified.features = np.array([features[keys.index(k)] for k in classified.candidates])
    return classified


TRUST = TrustLevels(f_lo=0.1, f_hi=1.0)
RULES = {"pick_number": 4, "select_style": "random"}


def test_select_by_max_devi_takes_the_largest_deviations():
    state = _pool()
    f = np.linspace(0.0, 0.9, 40)  # frames 0..4 of "0/a" accurate, the rest candidates
    new, picked, probe, counts = select(state, _devi(state, f), TRUST, dict(RULES, select_style="max_devi"), seed=0)
    assert picked == {"0/b": [16, 17, 18, 19]} and probe == {}
    assert counts["n_selected"] == 4 and counts["n_accurate"] == 5 and counts["stopped_by"] is None


def test_select_diverse_uses_the_candidates_features():
    state = _pool()
    rng = np.random.default_rng(3)
    x = 0.1 * rng.standard_normal((40, 4))  # 30 frames near the origin, 5 near +10, 5 near -10
    x[30:35] += 10.0
    x[35:40] -= 10.0
    label = np.repeat([0, 1, 2], [30, 5, 5])
    _, picked, _, _ = select(state, _devi(state, np.full(40, 0.5), x), TRUST,
                             dict(RULES, pick_number=3, select_style="diverse"), seed=0)
    keys = flatten(state.pool)
    assert sorted(label[keys.index(p)] for p in flatten(picked)) == [0, 1, 2]
    with pytest.raises(ValueError, match="features"):
        select(state, _devi(state, np.full(40, 0.5)), TRUST, dict(RULES, select_style="diverse"), seed=0)


def test_the_probe_is_random_over_unlabeled_frames_held_apart_from_the_picks():
    state = _pool()
    f = np.r_[np.full(20, 0.01), np.full(20, 0.5)]  # "0/a" accurate, "0/b" candidates
    rules = dict(RULES, probe_number=6)
    new, picked, probe, counts = select(state, _devi(state, f), TRUST, rules, seed=5)
    p, q = set(flatten(picked)), set(flatten(probe))
    assert len(p) == 4 and len(q) == 6 and not p & q and counts["n_probe"] == 6
    assert q <= set(flatten(state.pool)) and not q & set(flatten(new.pool)) and not q & set(flatten(new.accurate))
    assert p | q == set(flatten(new.picked)) and new.probe == probe
    # drawn from the accurate frames too (the pool is not only candidates): over seeds both systems appear
    systems = {k for s in range(10) for k in select(state, _devi(state, f), TRUST, rules, seed=s)[2]}
    assert systems == {"0/a", "0/b"}
    assert select(state, _devi(state, f), TRUST, rules, seed=5)[2] == probe  # seeded


def test_no_probe_when_nothing_is_picked():
    state = _pool()
    new, picked, probe, counts = select(state, _devi(state, np.zeros(40)), TRUST, dict(RULES, probe_number=6), seed=0)
    assert picked == {} and probe == {} and counts["stopped_by"] == NOTHING_SELECTED
    assert LoopState.count(new.accurate) == 40


def test_measured_error_at_or_below_the_levels_stops_the_loop():
    state = _pool()
    f = np.full(40, 0.5)
    rules = dict(RULES, probe_number=5, conv_e_rmse=0.01, conv_f_rmse=0.1)
    good = {"rmse_e_per_atom": 0.01, "rmse_f": 0.05, "n_frames": 5}
    new, picked, probe, counts = select(state, _devi(state, f), TRUST, rules, seed=0, probe_error=good)
    assert picked == {} and probe == {} and counts["stopped_by"] == CONVERGED and counts["n_candidate"] == 40
    bad_f = dict(good, rmse_f=0.2)  # both levels must hold
    assert select(state, _devi(state, f), TRUST, rules, seed=0, probe_error=bad_f)[3]["n_selected"] == 4
    assert converged(good, {"conv_f_rmse": 0.05}) and not converged(good, {})
    assert not converged(dict(good, n_frames=0), {"conv_e_rmse": 1.0})
    # a converged round picks nothing whatever the style (diverse then needs no features)
    stop = select(state, _devi(state, f), TRUST, dict(rules, select_style="diverse"), seed=0, probe_error=good)
    assert stop[1] == {} and stop[3]["stopped_by"] == CONVERGED


def test_stop_iter_classifies_but_picks_nothing():
    state = _pool()
    _, picked, probe, counts = select(state, _devi(state, np.full(40, 0.5)), TRUST, RULES, seed=0, last_iteration=True)
    assert picked == {} and probe == {} and counts["stopped_by"] == STOP_ITER and counts["n_candidate"] == 40


def test_prep_train_holds_the_probe_out_for_one_iteration(tmp_path):
    from dflow_simplify.ops.prep_train import gather_iter_data

    picks = labeled_group(tmp_path / "fp", "group.a", [["0/a", 1], ["0/a", 2]])
    probe = labeled_group(tmp_path / "fp", "group.b", [["0/a", 7]])
    n = gather_iter_data(None, [picks, probe], tmp_path / "it1", 1, probe={("0/a", 7)}, probe_out=tmp_path / "probe1")
    assert n == 1 and (tmp_path / "it1" / "iter-000000" / "group.a").is_dir()
    assert (tmp_path / "probe1" / "iter-000000" / "group.b").is_dir()
    assert not (tmp_path / "it1" / "iter-000000" / "group.b").exists()
    # one iteration later the probe joins the training set
    gather_iter_data(tmp_path / "it1", [], tmp_path / "it2", 2, previous_probe=tmp_path / "probe1", probe_out=tmp_path / "probe2")
    assert (tmp_path / "it2" / "iter-000000" / "group.b").is_dir() and not any((tmp_path / "probe2").iterdir())
    mixed = labeled_group(tmp_path / "fp", "group.c", [["0/a", 3], ["0/a", 8]])
    with pytest.raises(ValueError, match="mixes"):
        gather_iter_data(None, [mixed], tmp_path / "it3", 1, probe={("0/a", 8)}, probe_out=tmp_path / "probe3")
