"""SelectConfs: DP-GEN's classification of pool frames and a seeded, capped random pick.

Rules (dpgen/simplify/simplify.py, post_model_devi):
  failed    : max_devi_f >= f_trust_hi or devi_e >= e_trust_hi
  candidate : f_trust_lo <= max_devi_f < f_trust_hi or e_trust_lo <= devi_e < e_trust_hi
  accurate  : otherwise (both below their lo)
At most `pick_number` candidates are picked at random; the rest of the candidates and the failed
frames stay in the pool; accurate frames are retired, as in DP-GEN. Unlike DP-GEN the shuffle is
seeded (per iteration) and "no candidate but failed frames left" ends the loop with a warning
instead of an exception, so that the models and data made so far are delivered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import List

import numpy as np
from dflow.python import OP, OPIO, Artifact, OPIOSign, Parameter

from .data import LoopState, extract_frames, flatten, group_ids, pick_data_roots, write_frame_ids
from .model_devi import read_model_devi

FAILED, CANDIDATE, ACCURATE = "failed", "candidate", "accurate"


@dataclass(frozen=True)
class TrustLevels:
    f_lo: float
    f_hi: float
    e_lo: float = float("inf")
    e_hi: float = float("inf")


def classify(max_devi_f: np.ndarray, devi_e: np.ndarray, trust: TrustLevels) -> np.ndarray:
    """One of failed / candidate / accurate per frame."""
    f = np.asarray(max_devi_f, dtype=float)
    e = np.asarray(devi_e, dtype=float)
    failed = (f >= trust.f_hi) | (e >= trust.e_hi)
    candidate = ~failed & (((f >= trust.f_lo) & (f < trust.f_hi)) | ((e >= trust.e_lo) & (e < trust.e_hi)))
    out = np.full(f.shape, ACCURATE, dtype=object)
    out[candidate] = CANDIDATE
    out[failed] = FAILED
    return out


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


def select(state: LoopState, devi: dict | None, trust: TrustLevels | None, rules: dict, seed: int):
    """New state, picked ids and counts.

    `devi` maps (system, frame) to (max_devi_f, devi_e); None in iteration 0, where every pool frame is
    a candidate and only `pick_number` caps the pick.
    """
    pool = flatten(state.pool)
    if devi is None:
        labels = np.full(len(pool), CANDIDATE, dtype=object)
    else:
        missing = [p for p in pool if p not in devi]
        if missing:
            raise ValueError(f"model deviation missing for {len(missing)} pool frames, e.g. {missing[0]}")
        f = np.array([devi[p][0] for p in pool], dtype=float)
        e = np.array([devi[p][1] for p in pool], dtype=float)
        labels = classify(f, e, trust)
    cand = [p for p, lab in zip(pool, labels) if lab == CANDIDATE]
    failed = [p for p, lab in zip(pool, labels) if lab == FAILED]
    accurate = [p for p, lab in zip(pool, labels) if lab == ACCURATE]
    n_pick = pick_cap(len(cand), len(accurate), len(pool), rules) if devi is not None else min(
        int(rules["pick_number"]), len(cand))
    order = np.random.default_rng(seed).permutation(len(cand))
    picked = [cand[j] for j in order[:n_pick]]
    rest = [cand[j] for j in order[n_pick:]] + failed
    new_state = replace(
        state,
        pool=group_ids(rest),
        picked=group_ids(flatten(state.picked) + picked),
        accurate=group_ids(flatten(state.accurate) + accurate),
    )
    counts = {"n_pool": len(pool), "n_candidate": len(cand), "n_accurate": len(accurate),
              "n_failed": len(failed), "n_selected": len(picked)}
    return new_state, group_ids(picked), counts


class SelectConfs(OP):
    """Classify the pool by the ensemble's deviation and pick the frames to relabel."""

    @classmethod
    def get_input_sign(cls):
        return OPIOSign({
            "state": Artifact(Path),
            "model_devi": Artifact(Path, optional=True),
            "pick_data": Artifact(List[Path], optional=True),
            "pick_data_paths": Parameter(List[str], default=[]),
            "select_params": dict,
            "iter_index": int,
        })

    @classmethod
    def get_output_sign(cls):
        return OPIOSign({
            "state": Artifact(Path),
            "picked": Artifact(Path),
            "report": Artifact(Path),
            "n_selected": int,
            "fp_groups": List[dict],
            "fp_inputs": Artifact(List[Path]),
            "go_on": bool,
            "next_iter_index": int,
            "next_iter_name": str,
        })

    @OP.exec_sign_check
    def execute(self, ip: OPIO) -> OPIO:
        p = ip["select_params"]
        it = ip["iter_index"]
        state = LoopState.load(ip["state"])
        devi = read_model_devi(ip["model_devi"]) if ip["model_devi"] is not None else None
        trust = TrustLevels(p["f_trust_lo"], p["f_trust_hi"], p["e_trust_lo"], p["e_trust_hi"])
        rules = dict(p, pick_number=p["init_pick_number"] if devi is None else p["iter_pick_number"])
        new_state, picked, counts = select(state, devi, trust, rules, seed=p["seed"] * 100003 + it)
        new_state.dump("state.json")
        write_frame_ids("picked.json", picked)
        stop_iter = p.get("stop_iter")
        go_on = counts["n_selected"] > 0 and (stop_iter is None or it < stop_iter)
        groups = split_groups(picked, p.get("group_size", 1)) if go_on else []
        # each RunFP task gets its group's frames, not pick_data: per iteration only the picks move
        roots = pick_data_roots(ip["pick_data"], ip["pick_data_paths"])
        fp_inputs = []
        for g, ids in enumerate(groups):
            extract_frames(roots, ids, p["type_map"], p["keep_labels"], Path("fp_inputs", "%06d" % g))
            fp_inputs.append(Path("fp_inputs", "%06d" % g))
        report = dict(iteration=it, **counts, n_pool_left=LoopState.count(new_state.pool), go_on=go_on,
                      fp_groups=len(groups))
        Path("select_report.json").write_text(json.dumps(report))
        return OPIO({
            "state": Path("state.json"),
            "picked": Path("picked.json"),
            "report": Path("select_report.json"),
            "n_selected": counts["n_selected"],
            "fp_groups": groups,
            "fp_inputs": fp_inputs,
            "go_on": go_on,
            "next_iter_index": it + 1,
            "next_iter_name": iter_name(it + 1),
        })


def split_groups(picked: dict[str, list[int]], group_size: int) -> list[dict[str, list[int]]]:
    """Frames to label, in groups of `group_size` (one RunFP task each)."""
    pairs = flatten(picked)
    return [group_ids(pairs[i:i + group_size]) for i in range(0, len(pairs), max(1, int(group_size)))]


def iter_name(index: int) -> str:
    return "iter-%06d" % index


def iter_index_of(step_key: str) -> int:
    """The iteration of a step key such as `iter-000002--run-train-0001` (the inverse of iter_name)."""
    return int(step_key.split("--", 1)[0].split("-")[1])

