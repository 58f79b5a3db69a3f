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
from pathlib import Path
from typing import List

from dflow.python import OP, OPIO, Artifact, OPIOSign, Parameter

from .classified import Classified, merge, read_classified
from .data import extract_frames, pick_data_roots, write_frame_ids
from .loop_state import LoopState, flatten, group_ids, select
from .model_devi import read_probe_error
from .params import fatal_errors
from .selection import SelectParams


class SelectConfs(OP):
    """Classify the pool by trust levels, pick the frames to relabel (and the probe), decide whether to go on."""

    @classmethod
    def get_input_sign(cls):
        return OPIOSign({
            "state": Artifact(Path),
            "model_devi": Artifact(List[Path], optional=True),
            "devi_summary": Artifact(List[Path], optional=True),
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
            "n_fp_groups": int,
            "fp_inputs": Artifact(List[Path]),
            "go_on": bool,
            "next_iter_index": int,
            "next_iter_name": str,
        })

    @OP.exec_sign_check
    @fatal_errors
    def execute(self, ip: OPIO) -> OPIO:
        p = SelectParams.from_dict(ip["select_params"])
        it = ip["iter_index"]
        state = LoopState.load(ip["state"])
        classified = read_shards(ip["model_devi"]) if ip["model_devi"] is not None else None
        probe_error = read_probe_error(ip["devi_summary"])
        rules = p.rules(p.init_pick_number if classified is None else p.iter_pick_number)
        new_state, picked, probe, counts = select(
            state, classified, p.trust, rules, seed=p.seed * 100003 + it, probe_error=probe_error,
            last_iteration=p.stop_iter is not None and it >= p.stop_iter)
        new_state.dump("state.json")
        write_frame_ids("picked.json", picked)
        go_on = counts["n_selected"] > 0
        # picks and probe in separate groups: PrepTrain holds the probe's groups out of the next training
        groups = split_groups(picked, p.group_size) + split_groups(probe, p.group_size)
        # each RunFP task gets its group's frames, not pick_data: per iteration only the picks move
        roots = pick_data_roots(ip["pick_data"], ip["pick_data_paths"])
        fp_inputs = []
        for g, ids in enumerate(groups):
            extract_frames(roots, ids, p.type_map, p.keep_labels, Path("fp_inputs", "%06d" % g))
            fp_inputs.append(Path("fp_inputs", "%06d" % g))
        report = dict(iteration=it, **counts, n_pool_left=LoopState.count(new_state.pool), go_on=go_on,
                      fp_groups=len(groups), probe_error=probe_error, select_style=p.select_style,
                      histograms={q: h.tolist() for q, h in classified.hist.items()} if classified else {})
        Path("select_report.json").write_text(json.dumps(report))
        return OPIO({
            "state": Path("state.json"),
            "picked": Path("picked.json"),
            "report": Path("select_report.json"),
            "n_selected": counts["n_selected"],
            "n_fp_groups": len(groups),
            "fp_inputs": fp_inputs,
            "go_on": go_on,
            "next_iter_index": it + 1,
            "next_iter_name": iter_name(it + 1),
        })


def read_shards(paths: list) -> Classified:
    """The ModelDevi slices' files, merged."""
    return merge([read_classified(f) for f in paths if f is not None and Path(f).is_file()])


def split_groups(picked: dict[str, list[int]], group_size: int) -> list[dict[str, list[int]]]:
    """Frames to label, in groups of `group_size` (one RunFP task each)."""
    pairs = flatten(picked)
    return [group_ids(pairs[i:i + group_size]) for i in range(0, len(pairs), max(1, int(group_size)))]


def iter_name(index: int) -> str:
    return "iter-%06d" % index


def iter_index_of(step_key: str) -> int:
    """The iteration of a step key such as `iter-000002--run-train-0001` (the inverse of iter_name)."""
    return int(step_key.split("--", 1)[0].split("-")[1])

