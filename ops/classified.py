"""What a ModelDevi slice hands to SelectConfs: its shard of the pool classified by the trust levels.

Only what selection needs crosses the workflow, so that its size follows the candidates, not the pool: the
candidates (ids, their quantities of selection.QUANTITIES, for the styles of selection.FEATURE_STYLES their
descriptor features), the failed frames' ids (they stay in the pool), how many frames were accurate (they are retired:
SelectConfs knows them as the rest of the pool), and a fixed-size histogram per quantity for the report.
SelectConfs merges the slices' files (`merge`) and picks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .selection import ACCURATE, CANDIDATE, FAILED, TrustLevels, classify

HIST_EDGES = np.geomspace(1e-6, 1e3, 91)  # 10 bins a decade; values beyond either end count in the end bins


def histogram(values: np.ndarray) -> np.ndarray:
    """Counts over HIST_EDGES (int64), NaN left out."""
    v = np.asarray(values, dtype=float)
    v = np.clip(v[~np.isnan(v)], HIST_EDGES[0], HIST_EDGES[-1])
    return np.histogram(v, bins=HIST_EDGES)[0].astype(np.int64)


@dataclass
class Classified:
    """A shard (or the merge of all) of the pool, classified."""

    candidates: list[tuple[str, int]]
    values: dict[str, np.ndarray]  # quantity -> (n candidates,)
    failed: list[tuple[str, int]] = field(default_factory=list)
    n_pool: int = 0
    n_accurate: int = 0
    hist: dict[str, np.ndarray] = field(default_factory=dict)  # quantity -> counts over the shard's pool frames
    features: np.ndarray | None = None  # (n candidates, d) descriptor features, for FEATURE_STYLES


def classify_shard(devi, trust: TrustLevels) -> Classified:
    """`devi` (model_devi.Deviations of the shard's pool frames) classified by `trust` (no features)."""
    q = devi.quantities()
    labels = classify(q, trust) if len(devi.keys) else np.zeros(0, dtype=object)
    cand = np.flatnonzero(labels == CANDIDATE)
    return Classified(
        candidates=[devi.keys[j] for j in cand],
        values={name: np.asarray(v, dtype=float)[cand] for name, v in q.items()},
        failed=[devi.keys[j] for j in np.flatnonzero(labels == FAILED)],
        n_pool=len(devi.keys),
        n_accurate=int(np.sum(labels == ACCURATE)),
        hist={name: histogram(v) for name, v in q.items()},
    )


def merge(parts: list[Classified]) -> Classified:
    """One Classified of the slices' (shards are disjoint); candidates in the order of loop_state.flatten
    (system key, then frame), so that a seeded pick does not depend on how the pool was sharded."""
    keys = [k for p in parts for k in p.candidates]
    order = sorted(range(len(keys)), key=lambda j: keys[j])
    names = sorted({n for p in parts for n in p.values})
    values = {n: np.concatenate([p.values[n] for p in parts])[order] if keys else np.zeros(0) for n in names}
    hist = {n: sum((p.hist[n] for p in parts if n in p.hist), np.zeros(len(HIST_EDGES) - 1, np.int64)) for n in names}
    with_candidates = [p for p in parts if p.candidates]
    features = None
    if with_candidates and all(p.features is not None for p in with_candidates):
        features = np.concatenate([p.features for p in with_candidates])[order]
    return Classified(candidates=[keys[j] for j in order], values=values,
                      failed=sorted(k for p in parts for k in p.failed), n_pool=sum(p.n_pool for p in parts),
                      n_accurate=sum(p.n_accurate for p in parts), hist=hist, features=features)


def _ids(keys: list[tuple[str, int]], systems: list[str]) -> np.ndarray:
    """(n, 2) int64: system index, frame."""
    index = {s: i for i, s in enumerate(systems)}
    return np.array([(index[k], f) for k, f in keys], np.int64).reshape(-1, 2)


def write_classified(path, c: Classified) -> None:
    """npz, few arrays (each costs its headers, and there is a file per shard); quantities as float32 (the
    precision of `dp model-devi`'s text output DP-GEN reads)."""
    systems = sorted({k for k, _ in c.candidates} | {k for k, _ in c.failed}) or [""]
    names = sorted(c.values)
    arrays = {"systems": np.array(systems), "quantities": np.array(names or [""]),
              "candidates": _ids(c.candidates, systems), "failed": _ids(c.failed, systems),
              "counts": np.array([c.n_pool, c.n_accurate], np.int64),
              "values": np.array([c.values[n] for n in names], np.float32).reshape(len(names), -1),
              "hist": np.array([c.hist.get(n, np.zeros(len(HIST_EDGES) - 1)) for n in names], np.int64)}
    if c.features is not None:
        arrays["features"] = np.asarray(c.features, np.float32)
    np.savez_compressed(path, **arrays)  # the histograms are mostly zeros


def read_classified(path) -> Classified:
    z = np.load(path)
    systems = [str(s) for s in z["systems"]]
    names = [str(n) for n in z["quantities"] if str(n)]
    return Classified(
        candidates=[(systems[s], int(f)) for s, f in z["candidates"]],
        values={n: z["values"][i].astype(float) for i, n in enumerate(names)},
        failed=[(systems[s], int(f)) for s, f in z["failed"]],
        n_pool=int(z["counts"][0]), n_accurate=int(z["counts"][1]),
        hist={n: z["hist"][i] for i, n in enumerate(names)},
        features=z["features"] if "features" in z else None,
    )
