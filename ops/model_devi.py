"""ModelDevi: the ensemble's deviation on the frames still in the pool.

Definitions are deepmd-kit's own (`deepmd.infer.model_devi.calc_model_devi`): max over atoms of the
norm of the per-component standard deviation of forces across models, and the standard deviation of
the energy per atom. Each model is loaded once; frames are evaluated per system in batches.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

import numpy as np
from dflow.python import OP, OPIO, Artifact, OPIOSign, Parameter

from .data import LoopState, iter_frames, pick_data_roots

COLUMNS = ("max_devi_v", "min_devi_v", "avg_devi_v", "max_devi_f", "min_devi_f", "avg_devi_f", "devi_e")


def load_models(model_paths):
    from deepmd.infer import DeepPot

    return [DeepPot(str(m)) for m in model_paths]


def _model_types(models, type_map: list[str]) -> np.ndarray:
    """Index map from our type_map to the models' (they must agree with each other)."""
    tmaps = {tuple(m.get_type_map()) for m in models}
    if len(tmaps) != 1:
        raise ValueError(f"the models disagree on their type maps: {sorted(tmaps)}")
    tm = list(tmaps.pop())
    missing = [t for t in type_map if t not in tm]
    if missing:
        raise ValueError(f"element(s) {missing} of type_map are unknown to the models (their type_map: {tm})")
    return np.array([tm.index(t) for t in type_map])


def compute_model_devi(models, roots, ids: dict[str, list[int]], type_map, batch_size: int = 256):
    """Per system: frame ids and an (n, 7) array of deepmd-kit's deviation columns (COLUMNS)."""
    from deepmd.infer.model_devi import calc_model_devi

    out: dict[str, tuple[list[int], np.ndarray]] = {}
    if not any(ids.values()):
        return out
    type_index = _model_types(models, type_map)
    for key, frame_ids, system in iter_frames(roots, ids, type_map, labeled=False):
        atype = type_index[system["atom_types"]]
        coords = system["coords"].reshape(len(frame_ids), -1)
        cells = None if system.nopbc else system["cells"].reshape(len(frame_ids), -1)
        rows = []
        for start in range(0, len(frame_ids), batch_size):
            sl = slice(start, start + batch_size)
            devi = calc_model_devi(coords[sl], None if cells is None else cells[sl], atype, models)
            rows.append(devi[:, 1:])
        out[key] = (frame_ids, np.concatenate(rows))
    return out


def write_model_devi(path, devi: dict[str, tuple[list[int], np.ndarray]]) -> None:
    """One row per pool frame, float32 (the precision of `dp model-devi`'s text output DP-GEN reads): this
    file goes from ModelDevi to SelectConfs every iteration, so it is kept lean."""
    keys = sorted(devi)
    arrays = {"columns": np.array(COLUMNS)}
    arrays["system"] = (np.concatenate([np.full(len(devi[k][0]), i, np.int32) for i, k in enumerate(keys)])
                        if keys else np.zeros(0, np.int32))
    arrays["frame"] = np.concatenate([np.asarray(devi[k][0], np.int32) for k in keys]) if keys else np.zeros(0, np.int32)
    arrays["values"] = (np.concatenate([devi[k][1] for k in keys]).astype(np.float32) if keys
                        else np.zeros((0, len(COLUMNS)), np.float32))
    arrays["systems"] = np.array(keys if keys else [""])
    np.savez(path, **arrays)


def read_model_devi(path) -> dict[tuple[str, int], tuple[float, float]]:
    """(system, frame) -> (max_devi_f, devi_e)."""
    z = np.load(path)
    cols = list(z["columns"])
    f_col, e_col = cols.index("max_devi_f"), cols.index("devi_e")
    systems = list(z["systems"])
    return {(systems[s], int(fr)): (float(v[f_col]), float(v[e_col]))
            for s, fr, v in zip(z["system"], z["frame"], z["values"])}


class ModelDevi(OP):
    """Evaluate the trained ensemble on every frame still in the pool."""

    @classmethod
    def get_input_sign(cls):
        return OPIOSign({
            "models": Artifact(List[Path]),
            "pick_data": Artifact(List[Path], optional=True),
            "pick_data_paths": Parameter(List[str], default=[]),
            "state": Artifact(Path),
            "type_map": List[str],
            "batch_size": int,
        })

    @classmethod
    def get_output_sign(cls):
        return OPIOSign({"model_devi": Artifact(Path), "summary": Artifact(Path)})

    @OP.exec_sign_check
    def execute(self, ip: OPIO) -> OPIO:
        state = LoopState.load(ip["state"])
        models = load_models(sorted(ip["models"], key=lambda p: Path(p).name))
        roots = pick_data_roots(ip["pick_data"], ip["pick_data_paths"])
        devi = compute_model_devi(models, roots, state.pool, ip["type_map"], ip["batch_size"])
        write_model_devi("model_devi.npz", devi)
        vals = np.concatenate([v for _, v in devi.values()]) if devi else np.zeros((0, len(COLUMNS)))
        summary = {c: {"min": float(vals[:, j].min()), "median": float(np.median(vals[:, j])), "max": float(vals[:, j].max())}
                   for j, c in enumerate(COLUMNS) if len(vals)}
        summary["n_frames"] = int(len(vals))
        Path("model_devi_summary.json").write_text(json.dumps(summary))
        return OPIO({"model_devi": Path("model_devi.npz"), "summary": Path("model_devi_summary.json")})
