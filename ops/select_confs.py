"""SelectConfs: classify the pool by trust levels, pick candidates by the configured style, draw the probe,
and decide whether the loop goes on.

Classification and styles: ops/selection.py (DP-GEN's rules, true error included). At most `pick_number`
candidates are picked; the rest of the candidates and the failed frames stay in the pool; accurate frames
are retired, as in DP-GEN. Unlike DP-GEN the pick is seeded (per iteration), and "no candidate but failed
frames left" ends the loop with a warning instead of an exception, so that the models and data made so far
are delivered.

The stopping rule on measured error: with `probe_number` > 0, every round that relabels picks also relabels
`probe_number` frames drawn at random from all frames not relabeled yet (pool and retired-accurate); they are
held out of the next training and ModelDevi measures the next models on them. The loop stops when that
measured error is at or below `conv_e_rmse` / `conv_f_rmse` (each one set), when nothing is selected, or at
`stop_iter`, whichever comes first (`stopped_by`).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import List

import numpy as np
from dflow.python import OP, OPIO, Artifact, OPIOSign, Parameter

from .data import LoopState, extract_frames, flatten, group_ids, pick_data_roots, write_frame_ids
from .model_devi import Deviations, read_model_devi, read_probe_error
from .selection import ACCURATE, CANDIDATE, FAILED, TrustLevels, classify, pick, pick_cap, scores, trust_from_params

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


def select(state: LoopState, devi: Deviations | None, trust: TrustLevels | None, rules: dict, seed: int,
           probe_error: dict | None = None, last_iteration: bool = False):
    """(new state, picked ids, probe ids, counts).

    `devi` None is iteration 0: every pool frame is a candidate, picked at random, capped by `pick_number`.
    `last_iteration` (stop_iter reached): classify and count, but pick nothing.
    """
    rng = np.random.default_rng(seed)
    pool = flatten(state.pool)
    features = None
    if devi is None:
        labels = np.full(len(pool), CANDIDATE, dtype=object)
        score = np.zeros(len(pool))
    else:
        table = devi.as_dict()
        missing = [p for p in pool if p not in table]
        if missing:
            raise ValueError(f"model deviation missing for {len(missing)} pool frames, e.g. {missing[0]}")
        values = {q: np.array([table[p][q] for p in pool]) for q in devi.quantities()}
        labels = classify(values, trust)
        score = scores(values, trust)
    cand = [j for j, lab in enumerate(labels) if lab == CANDIDATE]
    failed = [pool[j] for j, lab in enumerate(labels) if lab == FAILED]
    accurate = [pool[j] for j, lab in enumerate(labels) if lab == ACCURATE]
    stopped_by = None
    if devi is None:
        n_pick, style = min(int(rules["pick_number"]), len(cand)), "random"
    else:
        n_pick, style = pick_cap(len(cand), len(accurate), len(pool), rules), rules.get("select_style", "random")
    if converged(probe_error, rules):
        n_pick, stopped_by = 0, CONVERGED
    elif n_pick == 0:
        stopped_by = NOTHING_SELECTED
    elif last_iteration:
        n_pick, stopped_by = 0, STOP_ITER
    if style == "diverse" and n_pick:
        missing = [pool[j] for j in cand if pool[j] not in devi.features]
        if missing:
            raise ValueError(f"select_style diverse: no descriptor features for {len(missing)} candidates, "
                             f"e.g. {missing[0]}")
        features = np.array([devi.features[pool[j]] for j in cand])
    order = pick(style, n_pick, score[cand], rng, features, float(rules.get("select_devi_weight") or 0.0))
    chosen = set(int(o) for o in order)
    picked = [pool[cand[o]] for o in order]
    rest = [pool[cand[o]] for o in range(len(cand)) if o not in chosen] + failed
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


class SelectConfs(OP):
    """Classify the pool by trust levels, pick the frames to relabel (and the probe), decide whether to go on."""

    @classmethod
    def get_input_sign(cls):
        return OPIOSign({
            "state": Artifact(Path),
            "model_devi": Artifact(Path, optional=True),
            "devi_summary": Artifact(Path, optional=True),
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
        probe_error = read_probe_error(ip["devi_summary"])
        rules = dict(p, pick_number=p["init_pick_number"] if devi is None else p["iter_pick_number"])
        stop_iter = p.get("stop_iter")
        new_state, picked, probe, counts = select(
            state, devi, trust_from_params(p), rules, seed=p["seed"] * 100003 + it, probe_error=probe_error,
            last_iteration=stop_iter is not None and it >= stop_iter)
        new_state.dump("state.json")
        write_frame_ids("picked.json", picked)
        go_on = counts["n_selected"] > 0
        # picks and probe in separate groups: PrepTrain holds the probe's groups out of the next training
        groups = split_groups(picked, p.get("group_size", 1)) + split_groups(probe, p.get("group_size", 1))
        # each RunFP task gets its group's frames, not pick_data: per iteration only the picks move
        roots = pick_data_roots(ip["pick_data"], ip["pick_data_paths"])
        fp_inputs = []
        for g, ids in enumerate(groups):
            extract_frames(roots, ids, p["type_map"], p["keep_labels"], Path("fp_inputs", "%06d" % g))
            fp_inputs.append(Path("fp_inputs", "%06d" % g))
        report = dict(iteration=it, **counts, n_pool_left=LoopState.count(new_state.pool), go_on=go_on,
                      fp_groups=len(groups), probe_error=probe_error, select_style=rules.get("select_style", "random"))
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

