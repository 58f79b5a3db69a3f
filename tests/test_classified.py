"""What ModelDevi slices hand to SelectConfs (ops/classified.py) and the shards they cover (ops/shards.py)."""

import numpy as np
import pytest

from dflow_simplify.ops.classified import classify_shard, merge, read_classified, write_classified
from dflow_simplify.ops.loop_state import LoopState, flatten, select
from dflow_simplify.ops.model_devi import COLUMNS, Deviations
from dflow_simplify.ops.selection import TrustLevels
from dflow_simplify.ops.shards import in_shard, n_shards, shard_ranges

SYSTEMS = {"0/a": 7, "0/b": 2, "0/c": 12}
TRUST = TrustLevels(f_lo=0.1, f_hi=0.8)


def test_shards_cover_every_frame_once_in_fixed_ranges():
    assert n_shards(SYSTEMS, 5) == 5 and n_shards(SYSTEMS, 100) == 1
    frames = [(k, i) for s in range(5) for k, a, b in shard_ranges(SYSTEMS, 5, s) for i in range(a, b)]
    assert sorted(frames) == sorted((k, i) for k, n in SYSTEMS.items() for i in range(n)) and len(set(frames)) == 21
    assert shard_ranges(SYSTEMS, 5, 1) == [("0/a", 5, 7), ("0/b", 0, 2), ("0/c", 0, 1)]  # small systems share
    assert shard_ranges(SYSTEMS, 5, 4) == [("0/c", 11, 12)]
    # the pool frames of a shard, whatever is left of the pool
    assert in_shard({"0/a": [1, 6], "0/c": [0, 5]}, shard_ranges(SYSTEMS, 5, 1)) == {"0/a": [6], "0/c": [0]}
    with pytest.raises(ValueError, match="shard 5"):
        shard_ranges(SYSTEMS, 5, 5)


def _devi(ids: dict[str, list[int]]) -> Deviations:
    keys = flatten(ids)
    values = np.zeros((len(keys), len(COLUMNS)))
    values[:, COLUMNS.index("max_devi_f")] = [(7 * i + len(k)) % 10 / 10 for k, i in keys]  # 0 ... 0.9
    return Deviations(keys, values)


@pytest.mark.parametrize("shard_size", [1, 4, 9, 21])
def test_shards_merged_select_what_one_pass_over_the_pool_selects(shard_size, tmp_path):
    state = LoopState(systems=SYSTEMS, pool={"0/a": [0, 2, 3, 4, 6], "0/b": [0, 1], "0/c": list(range(1, 12))},
                      picked={"0/a": [1, 5], "0/c": [0]})
    rules = {"pick_number": 3, "select_style": "random"}
    whole = select(state, classify_shard(_devi(state.pool), TRUST), TRUST, rules, seed=4)
    files = []
    for s in range(n_shards(SYSTEMS, shard_size)):  # each slice classifies its part and writes it
        files.append(tmp_path / f"{s}.npz")
        write_classified(files[-1], classify_shard(_devi(in_shard(state.pool, shard_ranges(SYSTEMS, shard_size, s))),
                                                   TRUST))
    merged = merge([read_classified(f) for f in files])
    assert sum(merged.hist["f"]) == merged.n_pool == LoopState.count(state.pool)
    sharded = select(state, merged, TRUST, rules, seed=4)
    assert sharded[1:] == whole[1:] and sharded[0] == whole[0]
    assert whole[3]["n_failed"] == 2 and whole[3]["n_selected"] == 3  # 0.8 and 0.9 are failed


def test_a_missing_shard_is_refused():
    state = LoopState.initial(SYSTEMS)
    part = classify_shard(_devi(in_shard(state.pool, shard_ranges(SYSTEMS, 10, 0))), TRUST)
    with pytest.raises(ValueError, match="shard is missing"):
        select(state, merge([part]), TRUST, {"pick_number": 3}, seed=0)


def test_the_hand_over_file_round_trips_with_features(tmp_path):
    c = classify_shard(_devi({"0/a": list(range(7))}), TRUST)
    c.features = np.arange(3 * len(c.candidates), dtype=np.float32).reshape(-1, 3)
    write_classified(tmp_path / "x.npz", c)
    back = read_classified(tmp_path / "x.npz")
    assert back.candidates == c.candidates and back.failed == c.failed
    assert (back.n_pool, back.n_accurate) == (7, c.n_accurate) and np.array_equal(back.features, c.features)
    assert np.allclose(back.values["f"], c.values["f"]) and np.array_equal(back.hist["f"], c.hist["f"])
