"""The loop's state and its policy: which frames are in the pool, picked, retired; how a round of selection
(`select`), the probe (`draw_probe`), the stopping rules (`converged`, `NOTHING_SELECTED`, `STOP_ITER`) and a
round of labeling (`return_failed_frames`, `check_ratio_failed`) change it. Plain functions, no dflow step:
SelectConfs and PrepTrain call them.

Frames are `(system key, frame index)`; a system key is a :class:`SystemKey` rendered as a string.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .selection import FEATURE_STYLES, TrustLevels, best_scores, pick, pick_cap, quantity_scores, reduce_features

if TYPE_CHECKING:
    from .classified import Classified


@dataclass(frozen=True)
class SystemKey:
    """A system of pick_data: `<root index>/<path in root>`, `#<group>` appended for an HDF5 group
    (`group` "" is the file's root group; None for a deepmd/npy folder)."""

    root: int
    path: str
    group: str | None = None

    @classmethod
    def parse(cls, key: str) -> "SystemKey":
        idx, rel = key.split("/", 1)
        if "#" in rel:
            path, group = rel.split("#", 1)
            return cls(int(idx), path, group)
        return cls(int(idx), rel)

    def __str__(self) -> str:
        return f"{self.root}/{self.path}" + ("" if self.group is None else f"#{self.group}")


@dataclass
class LoopState:
    """Which frames of which system are in the pool, picked (relabeled or being so), retired as accurate,
    or could not be labeled."""

    systems: dict[str, int]  # system key -> number of frames
    pool: dict[str, list[int]] = field(default_factory=dict)
    picked: dict[str, list[int]] = field(default_factory=dict)
    accurate: dict[str, list[int]] = field(default_factory=dict)
    fp_retry: dict[str, list[int]] = field(default_factory=dict)  # labeling failed once: back in the pool
    fp_failed: dict[str, list[int]] = field(default_factory=dict)  # labeling failed twice: retired, recorded
    skipped: dict[str, list[int]] = field(default_factory=dict)  # fp_skip_bad_box: never labeled, recorded
    probe: dict[str, list[int]] = field(default_factory=dict)  # picked as the probe: held out of the next training

    @classmethod
    def initial(cls, systems: dict[str, int]) -> "LoopState":
        return cls(systems=dict(systems), pool={k: list(range(n)) for k, n in systems.items()})

    @staticmethod
    def count(ids: dict[str, list[int]]) -> int:
        return sum(len(v) for v in ids.values())

    def dump(self, path: str | os.PathLike) -> None:
        """JSON, each id list in its shortest form: as is, as runs (`{"runs": [[first, last], ...]}`) or as the
        runs of the frames of its system it leaves out (`{"except": [...]}`). A pool of millions of frames is a
        few numbers, and so are the frames retired as accurate, scattered as they are, while the pool left
        is small: this file moves through every step, its size follows the picks, not pick_data."""
        data = {k: v if k == "systems" else {key: _encode_ids(ids, self.systems.get(key, 0)) for key, ids in v.items()}
                for k, v in self.__dict__.items()}
        Path(path).write_text(json.dumps(data))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LoopState":
        data = json.loads(Path(path).read_text())
        systems = data["systems"]
        return cls(**{k: v if k == "systems" else {key: _decode_ids(ids, systems.get(key, 0)) for key, ids in v.items()}
                      for k, v in data.items()})


def _runs(ids) -> list[list[int]]:
    """[[first, last], ...] of increasing ids."""
    runs = []
    for i in ids:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return runs


def _encode_ids(ids: list[int], n_frames: int):
    if len(ids) < 2 or any(b <= a for a, b in zip(ids, ids[1:])):
        return list(ids)  # short, or in an order that matters (picks): as is
    runs = _runs(ids)
    left_out = _runs(sorted(set(range(n_frames)) - set(ids))) if ids[-1] < n_frames and len(ids) > n_frames // 2 else None
    forms = [(len(ids), list(ids)), (2 * len(runs), {"runs": runs})]
    if left_out is not None:
        forms.append((2 * len(left_out) + 1, {"except": left_out}))
    return min(forms, key=lambda f: f[0])[1]


def _decode_ids(value, n_frames: int) -> list[int]:
    if isinstance(value, dict) and "except" in value:
        out = set(range(n_frames)).difference(i for first, last in value["except"] for i in range(first, last + 1))
        return sorted(out)
    if isinstance(value, dict):
        return [i for first, last in value["runs"] for i in range(first, last + 1)]
    return list(value)


def return_failed_frames(state: LoopState, failures: list[dict]) -> LoopState:
    """Frames whose labeling failed leave `picked`: back to the pool the first time, retired the second;
    frames skipped for a bad box are retired at once."""
    bad_box = {(f["system"], int(f["frame"])) for f in failures if f.get("kind") == "bad_box"}
    failed = {(f["system"], int(f["frame"])) for f in failures} - bad_box
    retry_before = set(flatten(state.fp_retry))
    again = failed & retry_before
    first = failed - retry_before
    return replace(
        state,
        picked=group_ids([p for p in flatten(state.picked) if p not in failed | bad_box]),
        pool=group_ids(flatten(state.pool) + sorted(first)),
        fp_retry=group_ids(sorted((retry_before - again) | first)),
        fp_failed=group_ids(flatten(state.fp_failed) + sorted(again)),
        skipped=group_ids(flatten(state.skipped) + sorted(bad_box)),
        probe=group_ids([p for p in flatten(state.probe) if p not in failed | bad_box]),
    )


def flatten(ids: dict[str, list[int]]) -> list[tuple[str, int]]:
    return [(k, int(i)) for k in sorted(ids) for i in ids[k]]


def group_ids(pairs: list[tuple[str, int]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for k, i in pairs:
        out.setdefault(k, []).append(int(i))
    return {k: sorted(v) for k, v in sorted(out.items())}


def check_ratio_failed(n_labeled: int, failures: list[dict], ratio_failed: float | None) -> None:
    """DP-GEN's `ratio_failed`: stop when too large a share of the round's FP tasks failed
    (frames skipped for a bad box were never tasks)."""
    failures = [f for f in failures if f.get("kind") != "bad_box"]
    n = n_labeled + len(failures)
    if ratio_failed is None or n == 0 or len(failures) / n <= ratio_failed:
        return
    first = failures[0]
    raise ValueError(
        f"{len(failures)} of {n} FP tasks failed ({len(failures) / n:.0%}), more than ratio_failed = {ratio_failed}. "
        f"First: system {first['system']} frame {first['frame']} ({first['engine']}): {first['reason']}. "
        "Every failure is listed in the RunFP steps' failures.json.")


CONVERGED, NOTHING_SELECTED, STOP_ITER = "converged", "no frame selected", "stop_iter"


def converged(probe_error: dict | None, rules: dict) -> bool:
    """The measured (probe) error meets every convergence level that is set; False without either."""
    levels = {"rmse_e_per_atom": rules.get("conv_e_rmse"), "rmse_f": rules.get("conv_f_rmse")}
    levels = {k: v for k, v in levels.items() if v is not None}
    if not levels or not probe_error or not probe_error.get("n_frames"):
        return False
    return all(probe_error[k] <= v for k, v in levels.items())


def draw_probe(state: LoopState, n: int, rng: np.random.Generator) -> list[tuple[str, int]]:
    """n frames at random from every frame not relabeled yet (pool and retired-accurate)."""
    unlabeled = flatten(state.pool) + flatten(state.accurate)
    order = rng.permutation(len(unlabeled))[: max(0, int(n))]
    return sorted(unlabeled[j] for j in order)


def select(state: LoopState, classified: Classified | None, trust: TrustLevels | None, rules: dict, seed: int,
           probe_error: dict | None = None, last_iteration: bool = False):
    """(new state, picked ids, probe ids, counts).

    `classified` (the pool classified by ModelDevi, its shards merged) None is iteration 0: every pool frame
    is a candidate, picked at random, capped by `pick_number`. `last_iteration` (stop_iter reached): classify
    and count, but pick nothing.
    """
    rng = np.random.default_rng(seed)
    pool = flatten(state.pool)
    features = None
    if classified is None:
        cand, failed, accurate, score = pool, [], [], np.zeros(len(pool))
        per_quantity = score[None]
    else:
        cand, failed = classified.candidates, classified.failed
        if classified.n_pool != len(pool):
            raise ValueError(f"model deviation of {classified.n_pool} frames for a pool of {len(pool)}: "
                             "a ModelDevi shard is missing or stale")
        known = set(pool)
        strangers = [k for k in cand + failed if k not in known]
        if strangers:
            raise ValueError(f"model deviation of {len(strangers)} frames not in the pool, e.g. {strangers[0]}")
        classified_ids = set(cand) | set(failed)
        accurate = [p for p in pool if p not in classified_ids]
        per_quantity = quantity_scores(classified.values, trust)
        score = best_scores(per_quantity)
    stopped_by = None
    if classified is None:
        n_pick, style = min(int(rules["pick_number"]), len(cand)), "random"
    else:
        n_pick, style = pick_cap(len(cand), len(accurate), len(pool), rules), rules.get("select_style", "random")
    if converged(probe_error, rules):
        n_pick, stopped_by = 0, CONVERGED
    elif n_pick == 0:
        stopped_by = NOTHING_SELECTED
    elif last_iteration:
        n_pick, stopped_by = 0, STOP_ITER
    if style in FEATURE_STYLES and n_pick:
        if classified.features is None or len(classified.features) != len(cand):
            raise ValueError(f"select_style {style}: no descriptor features for the {len(cand)} candidates")
        features = reduce_features(classified.features)
    order = pick(style, n_pick, score, rng, features, float(rules.get("select_devi_weight") or 0.0), per_quantity)
    chosen = set(int(o) for o in order)
    picked = [cand[o] for o in order]
    rest = [cand[o] for o in range(len(cand)) if o not in chosen] + failed
    new_state = replace(
        state,
        pool=group_ids(rest),
        picked=group_ids(flatten(state.picked) + picked),
        accurate=group_ids(flatten(state.accurate) + accurate),
        probe={},
    )
    probe = draw_probe(new_state, rules.get("probe_number") or 0, rng) if picked else []
    if probe:
        taken = set(probe)
        new_state = replace(
            new_state,
            pool=group_ids([p for p in flatten(new_state.pool) if p not in taken]),
            accurate=group_ids([p for p in flatten(new_state.accurate) if p not in taken]),
            picked=group_ids(flatten(new_state.picked) + probe),
            probe=group_ids(probe),
        )
    counts = {"n_pool": len(pool), "n_candidate": len(cand), "n_accurate": len(accurate),
              "n_failed": len(failed), "n_selected": len(picked), "n_probe": len(probe), "stopped_by": stopped_by}
    return new_state, group_ids(picked), group_ids(probe), counts
