"""Which candidates to relabel: DP-GEN's classification by trust levels and the selection styles.

Classification (dpgen/simplify/simplify.py, post_model_devi), per frame, with `d` the ensemble's deviation
and, when DP-GEN's `true_error_*` levels are set (labeled mode), `t` the models' error against pick_data's
labels (deepmd-kit's `dp model-devi --real_error`):
  failed    : any quantity at or above its hi level
  candidate : otherwise, any quantity in [lo, hi)
  accurate  : otherwise (every quantity below its lo level)

Styles pick at most n of the candidates (`select_style`):
  random    seeded shuffle (DP-GEN's rule, the default)
  max_devi  the largest score first (DPGEN2's `fixed-levels-max-select`)
  max_devi_each  the largest value / lo of each set quantity in turn (force deviation, energy deviation, true
            errors): with both deviation levels set, half the batch follows each
  diverse   farthest-point sampling on the candidates' descriptor features, started at the largest score;
            `weight` > 0 multiplies each distance by score**weight (deviation-weighted diversity)
  cluster_max  k-means of the candidates' descriptor features into n clusters, then from each cluster the
            candidate with the largest score: the batch covers the candidates' populations in proportion to
            their spread, not their count, and within each it takes the worst-predicted frame
The score of a frame is how far it sits above its trust levels: max over the set quantities of value / lo.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .params import OPParams

FAILED, CANDIDATE, ACCURATE = "failed", "candidate", "accurate"
NO_LIMIT = 1e10  # DP-GEN's "no limit" for trust levels; anything at or above it is unset
QUANTITIES = ("f", "e", "f_err", "e_err")  # max force deviation, energy deviation per atom, their true errors
STYLES = ("random", "max_devi", "max_devi_each", "diverse", "cluster_max")
FEATURE_STYLES = ("diverse", "cluster_max")  # the styles that need the candidates' descriptor features
LEVEL_FLOOR = 1e-12  # a trust level of 0, for scores
FEATURE_DIM = 16  # principal components of the candidates' descriptor features that `diverse` compares


@dataclass(frozen=True)
class TrustLevels:
    """lo/hi per quantity; a level at or above NO_LIMIT (or inf) is unset."""

    f_lo: float
    f_hi: float
    e_lo: float = float("inf")
    e_hi: float = float("inf")
    f_err_lo: float = float("inf")
    f_err_hi: float = float("inf")
    e_err_lo: float = float("inf")
    e_err_hi: float = float("inf")

    @property
    def uses_true_error(self) -> bool:
        """DP-GEN's switch: a true-error lo level below infinity."""
        return self.f_err_lo < NO_LIMIT or self.e_err_lo < NO_LIMIT

    def levels(self, q: str) -> tuple[float, float]:
        return getattr(self, f"{q}_lo"), getattr(self, f"{q}_hi")


def classify(values: dict[str, np.ndarray], trust: TrustLevels) -> np.ndarray:
    """failed / candidate / accurate per frame; `values` maps each quantity of QUANTITIES that is given
    to an array over frames (true errors are needed only when trust.uses_true_error)."""
    quantities = [q for q in QUANTITIES if q in ("f", "e") or trust.uses_true_error]
    missing = [q for q in quantities if q not in values]
    if missing:
        raise ValueError(f"classify: no values for {missing} (true-error levels need the true errors)")
    n = len(np.asarray(values["f"]))
    failed = np.zeros(n, bool)
    inside = np.zeros(n, bool)
    for q in quantities:
        v = np.asarray(values[q], dtype=float)
        lo, hi = trust.levels(q)
        failed |= v >= hi
        inside |= (v >= lo) & (v < hi)
    out = np.full(n, ACCURATE, dtype=object)
    out[inside & ~failed] = CANDIDATE
    out[failed] = FAILED
    return out


def quantity_scores(values: dict[str, np.ndarray], trust: TrustLevels) -> np.ndarray:
    """(set quantities, frames): each set quantity's value / lo (a lo of 0 counts as LEVEL_FLOOR, so that
    quantity dominates: every frame is far above it); zeros when no level is set."""
    n = len(np.asarray(values["f"]))
    rows = [np.asarray(values[q], dtype=float) / max(trust.levels(q)[0], LEVEL_FLOOR)
            for q in QUANTITIES if q in values and trust.levels(q)[0] < NO_LIMIT]
    return np.array(rows) if rows else np.zeros((1, n))


def best_scores(per_quantity: np.ndarray) -> np.ndarray:
    """Each frame's largest quantity score (a column of quantity_scores), at least 0."""
    return np.maximum(np.asarray(per_quantity).max(axis=0), 0.0)


def scores(values: dict[str, np.ndarray], trust: TrustLevels) -> np.ndarray:
    """How far each frame sits above its trust levels: the largest of its quantity_scores."""
    return best_scores(quantity_scores(values, trust))


def pick_random(n_candidates: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """DP-GEN's shuffle, seeded: the first n of a permutation."""
    return rng.permutation(n_candidates)[:n]


def pick_max_devi(score: np.ndarray, n: int) -> np.ndarray:
    """The n largest scores, largest first (ties by position: stable)."""
    return np.argsort(-np.asarray(score, dtype=float), kind="stable")[:n]


def pick_each(per_quantity: np.ndarray, n: int) -> np.ndarray:
    """The largest score of each quantity in turn (force deviation, energy deviation, ... as set), skipping
    frames already picked: one quantity whose scale runs higher cannot take the whole batch."""
    per_quantity = np.atleast_2d(np.asarray(per_quantity, dtype=float))
    m = per_quantity.shape[1]
    n = min(n, m)
    orders = [iter(np.argsort(-row, kind="stable")) for row in per_quantity]
    picked, seen = [], set()
    while len(picked) < n:
        for order in orders:
            j = next((int(i) for i in order if int(i) not in seen), None)
            if j is not None and len(picked) < n:
                picked.append(j)
                seen.add(j)
    return np.array(picked, dtype=int)


def _feature_inputs(features, score, n: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The feature styles' inputs as float arrays, and n capped at the number of candidates."""
    x = np.asarray(features, dtype=float)
    return x, np.asarray(score, dtype=float), min(n, len(x))


def pick_diverse(features: np.ndarray, score: np.ndarray, n: int, weight: float = 0.0) -> np.ndarray:
    """Farthest-point sampling: start at the largest score, then repeatedly the candidate farthest (Euclidean,
    in feature space as given) from everything picked so far, its distance multiplied by score**weight.
    Picks no near-duplicates while far-apart candidates remain. The features are not scaled per column:
    on principal components that would blow the directions of mere noise up to the weight of the real spread."""
    x, score, n = _feature_inputs(features, score, n)
    if n <= 0:
        return np.zeros(0, int)
    m = len(x)
    w = np.power(np.maximum(score, 1e-12), weight) if weight else np.ones(m)
    picked = [int(np.argmax(score))]
    dist = np.linalg.norm(x - x[picked[0]], axis=1)
    for _ in range(n - 1):
        gain = dist * w
        gain[picked] = -1.0
        j = int(np.argmax(gain))
        picked.append(j)
        dist = np.minimum(dist, np.linalg.norm(x - x[j], axis=1))
    return np.array(picked)


def pick_cluster_max(features: np.ndarray, score: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """k-means (k-means++ start, seeded by rng) of the candidates into n clusters; from each non-empty cluster
    the candidate with the largest score (ties: the first), the clusters in order of that score, largest
    first. A cluster k-means leaves empty (or fewer distinct points than n) gives its pick to the largest
    remaining score."""
    from scipy.cluster.vq import kmeans2

    x, score, n = _feature_inputs(features, score, n)
    if n <= 0:
        return np.zeros(0, int)
    m = len(x)
    if n == m:
        return pick_max_devi(score, n)
    k = min(n, len(np.unique(x, axis=0)))  # k-means++ cannot seed more clusters than distinct points
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "One of the clusters is empty")  # handled below
        _, label = kmeans2(x, k, minit="++", seed=rng)
    best = [int(np.flatnonzero(label == c)[np.argmax(score[label == c])]) for c in np.unique(label)]
    best.sort(key=lambda i: (-score[i], i))
    chosen = set(best)
    rest = [int(i) for i in pick_max_devi(score, m) if i not in chosen]
    return np.array(best + rest[: n - len(best)], dtype=int)


def reduce_features(features: np.ndarray, dim: int = FEATURE_DIM) -> np.ndarray:
    """The candidates' descriptor features on their first `dim` principal components (centred): distances
    stay meaningful, the farthest-point search stays cheap."""
    x = np.asarray(features, dtype=float)
    x = x - x.mean(axis=0)
    if len(x) > 1:
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        x = x @ vt[:dim].T
    return x


def pick(style: str, n: int, score: np.ndarray, rng: np.random.Generator, features: np.ndarray | None = None,
         weight: float = 0.0, per_quantity: np.ndarray | None = None) -> np.ndarray:
    """Positions (into the candidate list) of the n candidates that `style` picks, in pick order."""
    m = len(score)
    n = min(int(n), m)
    if style not in STYLES:
        raise ValueError(f"select_style: unknown style {style!r}; expected one of {STYLES}")
    if n <= 0:
        return np.zeros(0, int)
    if style == "random":
        return pick_random(m, n, rng)
    if style == "max_devi":
        return pick_max_devi(score, n)
    if style == "max_devi_each":
        return pick_each(score if per_quantity is None else per_quantity, n)
    if features is None or len(features) != m:
        raise ValueError(f"select_style {style} needs descriptor features for all {m} candidates, "
                         f"got {None if features is None else len(features)}")
    if style == "cluster_max":
        return pick_cluster_max(features, score, n, rng)
    return pick_diverse(features, score, n, weight)


def pick_cap(n_candidate: int, n_accurate: int, n_total: int, rules: dict) -> int:
    """How many candidates to label this iteration (DP-GEN's fp_task_max/min and accurate thresholds)."""
    cap = int(rules["pick_number"])
    if rules.get("fp_task_max") is not None:
        cap = min(cap, int(rules["fp_task_max"]))
    acc_ratio = n_accurate / n_total if n_total else 1.0
    hard = rules.get("fp_accurate_threshold")
    soft = rules.get("fp_accurate_soft_threshold")
    if hard is not None and acc_ratio >= hard:
        cap = 0
    elif hard is not None and soft is not None and soft < hard and acc_ratio >= soft:
        cap = int(cap * (hard - acc_ratio) / (hard - soft))
    if rules.get("fp_task_min") is not None and min(cap, n_candidate) < int(rules["fp_task_min"]):
        cap = 0
    return min(cap, n_candidate)


@dataclass(frozen=True)
class SelectParams(OPParams):
    """The parameters of SelectConfs (all) and ModelDevi (trust levels, style); build.select_parameters makes
    them from the config's keys of the same names (the trust levels from DP-GEN's model_devi_* and true_error_*)."""

    trust: TrustLevels
    init_pick_number: int
    iter_pick_number: int
    type_map: list
    fp_task_max: int | None = None
    fp_task_min: int | None = None
    fp_accurate_threshold: float | None = None
    fp_accurate_soft_threshold: float | None = None
    select_style: str = "random"
    select_devi_weight: float = 0.0
    relative_f_epsilon: float | None = None  # ModelDevi: the force deviation relative to |force| + this (eV/A)
    probe_number: int = 0
    conv_e_rmse: float | None = None
    conv_f_rmse: float | None = None
    seed: int = 0
    stop_iter: int | None = None
    group_size: int = 10  # frames per RunFP task
    keep_labels: bool = False  # extract pick_data's labels with the frames (fp_style none)

    @classmethod
    def from_dict(cls, data: dict) -> "SelectParams":
        data = dict(data)
        if isinstance(data.get("trust"), dict):
            try:
                data["trust"] = TrustLevels(**data["trust"])
            except TypeError as e:
                raise ValueError(f"SelectParams.trust: {e}") from None
        return super().from_dict(data)

    def rules(self, pick_number: int) -> dict:
        """The selection rules of one round (loop_state.select): these parameters and its pick number."""
        return dict(self.as_dict(), pick_number=pick_number)
