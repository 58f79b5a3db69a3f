"""Shards of pick_data: which frames each ModelDevi slice evaluates.

A shard is a fixed range of frames, `shard_size` at most, cut from the systems in key order (small systems
share a shard, a large one spans several). Shards depend only on the systems' frame counts, never on the
pool, so shard i holds the same frames in every iteration: a resumed run reuses every finished slice by its
key, and a slice evaluates only the frames of its shard still in the pool.
"""

from __future__ import annotations

import bisect

DEFAULT_SHARD_SIZE = 50_000  # frames per ModelDevi slice: ~4 min for 32-atom frames on one CPU core


def n_shards(systems: dict[str, int], shard_size: int) -> int:
    total = sum(systems.values())
    return max(1, -(-total // int(shard_size)))


def shard_ranges(systems: dict[str, int], shard_size: int, index: int) -> list[tuple[str, int, int]]:
    """[(system key, first frame, end frame), ...] of shard `index`: frames [index * shard_size,
    (index + 1) * shard_size) of the systems laid end to end in key order."""
    if shard_size < 1:
        raise ValueError(f"shard_size: expected a positive integer, got {shard_size}")
    if not 0 <= index < n_shards(systems, shard_size):
        raise ValueError(f"shard {index}: expected 0 <= shard < {n_shards(systems, shard_size)}")
    lo, hi = index * shard_size, (index + 1) * shard_size
    out, offset = [], 0
    for key in sorted(systems):
        n = systems[key]
        start, end = max(lo, offset), min(hi, offset + n)
        if start < end:
            out.append((key, start - offset, end - offset))
        offset += n
        if offset >= hi:
            break
    return out


def in_shard(ids: dict[str, list[int]], ranges: list[tuple[str, int, int]]) -> dict[str, list[int]]:
    """The ids (system -> increasing frames) that fall in the shard's ranges."""
    out: dict[str, list[int]] = {}
    for key, start, end in ranges:
        frames = ids.get(key, [])  # increasing (loop_state.group_ids): the range is a slice of it
        frames = frames[bisect.bisect_left(frames, start):bisect.bisect_left(frames, end)]
        if frames:
            out.setdefault(key, []).extend(frames)
    return out
