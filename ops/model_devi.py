"""ModelDevi: the ensemble on the frames still in the pool, in one pass with the models loaded once.

Per pool frame, deepmd-kit's own definitions (`deepmd.infer.model_devi`): max over atoms of the norm of the
per-component standard deviation of forces across models (with DPGEN2's `relative_f_epsilon`, deepmd-kit's
relative deviation: each atom's divided by its mean force's norm plus epsilon), the standard deviation of the
energy per atom, and so on (COLUMNS). In labeled mode with DP-GEN's `true_error_*` levels, the same pass also
gives the models' error against pick_data's labels, defined as `dp model-devi --real_error` (DP-GEN's true
error): the same columns with the deviation from the mean replaced by the RMS over models of the error.

Each ModelDevi is one slice of the pool (ops/shards.py: a fixed range of frames), classifies its frames by
the trust levels and hands over only what selection needs (ops/classified.py): the candidates, the failed
frames, counts and histograms. Two extras, from the same loaded models:
- the descriptor features the `diverse` and `cluster_max` styles need, for the candidates only (per frame and
  element the mean of the first model's descriptor over its atoms, at most FEATURE_TRANSFER_DIM numbers);
- on shard 0, the error of the ensemble's mean prediction on the probe frames (relabeled, held out of
  training): the measured new-level error the stopping rule reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List

import numpy as np
from dflow.python import OP, OPIO, Artifact, OPIOSign, Parameter

from .classified import classify_shard, write_classified
from .data import find_systems, iter_frames, pick_data_roots
from .loop_state import LoopState, group_ids
from .params import fatal_errors
from .selection import FEATURE_STYLES, SelectParams
from .shards import DEFAULT_SHARD_SIZE, in_shard, shard_ranges
from .start_models import models_type_map

COLUMNS = ("max_devi_v", "min_devi_v", "avg_devi_v", "max_devi_f", "min_devi_f", "avg_devi_f", "devi_e")
FEATURE_TRANSFER_DIM = 64  # descriptor features per candidate handed to SelectConfs, at most
# frames per evaluation call when step_configs.model_devi.batch_size is not set; within a call deepmd-kit's
# AutoBatchSize splits the frames into device batches (on a GPU it grows them until memory runs out)
FRAMES_PER_CALL = {"cpu": 256, "gpu": 4096}


def load_models(model_paths):
    from deepmd.infer import DeepPot

    return [DeepPot(str(m)) for m in model_paths]


def frames_per_call(models, batch_size: int | None = None) -> int:
    """`batch_size` when given, else FRAMES_PER_CALL of the device the models run on."""
    if batch_size:
        return int(batch_size)
    auto = getattr(getattr(models[0], "deep_eval", None), "auto_batch_size", None) if models else None
    return FRAMES_PER_CALL["gpu" if auto is not None and auto.is_gpu_available() else "cpu"]


def model_types(models, type_map: list[str], substitution: dict[str, str] | None = None) -> np.ndarray:
    """Index map from our type_map to the models' (they must agree with each other). An element the models
    do not know is looked up as the element it takes the place of (`element_substitution`: the starting
    models of a similar material; the models trained here carry the new names)."""
    tmaps = {tuple(m.get_type_map()) for m in models}
    if len(tmaps) != 1:
        raise ValueError(f"the models disagree on their type maps: {sorted(tmaps)}")
    tm = list(tmaps.pop())
    names = [t if t in tm else old for t, old in zip(type_map, models_type_map(type_map, substitution or {}))]
    missing = [t for t, n in zip(type_map, names) if n not in tm]
    if missing:
        raise ValueError(f"element(s) {missing} of type_map are unknown to the models (their type_map: {tm}); "
                         "for a similar material give element_substitution")
    return np.array([tm.index(n) for n in names])


def deviation_columns(es, fs, vs, natoms: int, real=None, relative_f: float | None = None) -> np.ndarray:
    """(n, 7) COLUMNS from every model's energies (m, n), forces (m, n, natoms, 3), virials (m, n, 9);
    with `real` = (energies, forces, virials) of the labels: deepmd-kit's RMS real error instead.
    `relative_f` (eV/A): deepmd-kit's relative force deviation, each atom's deviation divided by the norm of
    the models' mean force on it plus `relative_f` (for the deviation only; the real error stays absolute)."""
    from deepmd.infer.model_devi import calc_model_devi_e, calc_model_devi_f, calc_model_devi_v

    real_e, real_f, real_v = real if real is not None else (None, None, None)
    f = calc_model_devi_f(fs, real_f, relative=relative_f if real is None else None)[:3]
    e = np.ravel(calc_model_devi_e(es[..., None], None if real_e is None else np.reshape(real_e, (-1, 1))))
    if real is not None and real_v is None:  # labels without virials: no virial error
        v = [np.full(len(e), np.nan)] * 3
    else:
        v = calc_model_devi_v(vs, real_v)
    return np.column_stack([v[0] / natoms, v[1] / natoms, v[2] / natoms, f[0], f[1], f[2], e / natoms])


@dataclass
class Deviations:
    """Per frame of a shard's pool, the deviation (and true error) columns."""

    keys: list[tuple[str, int]]
    values: np.ndarray  # (n, 7) COLUMNS
    true_error: np.ndarray | None = None  # (n, 7) COLUMNS as real error, or None

    def quantities(self) -> dict[str, np.ndarray]:
        """The classification quantities of selection.QUANTITIES, by frame order."""
        f, e = COLUMNS.index("max_devi_f"), COLUMNS.index("devi_e")
        out = {"f": self.values[:, f], "e": self.values[:, e]}
        if self.true_error is not None:
            out.update(f_err=self.true_error[:, f], e_err=self.true_error[:, e])
        return out


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield slice(start, start + batch_size)


def compute_model_devi(models, roots, ids: dict[str, list[int]], type_map, batch_size: int = 256,
                       true_error: bool = False, substitution: dict[str, str] | None = None,
                       relative_f: float | None = None) -> Deviations:
    """The deviation columns (and, with `true_error`, the real-error columns against pick_data's labels) of
    every frame in `ids`, each model evaluated once per batch (`substitution`: as in model_types;
    `relative_f`: as in deviation_columns)."""
    keys, rows, err_rows = [], [], []
    if not any(ids.values()):
        return Deviations([], np.zeros((0, len(COLUMNS))), np.zeros((0, len(COLUMNS))) if true_error else None)
    type_index = model_types(models, type_map, substitution)
    for key, frame_ids, system in iter_frames(roots, ids, type_map, labeled=true_error, frames_only=True):
        n, natoms = len(frame_ids), system.get_natoms()
        atype = type_index[system["atom_types"]]
        coords = system["coords"].reshape(n, -1)
        cells = None if system.nopbc else system["cells"].reshape(n, -1)
        for sl in _batches(n, batch_size):
            outs = [m.eval(coords[sl], None if cells is None else cells[sl], atype) for m in models]
            m_ = len(models)
            es = np.array([o[0] for o in outs]).reshape(m_, -1)
            fs = np.array([o[1] for o in outs]).reshape(m_, -1, natoms, 3)
            vs = np.array([o[2] for o in outs]).reshape(m_, -1, 9)
            rows.append(deviation_columns(es, fs, vs, natoms, relative_f=relative_f))
            if true_error:
                real_v = system["virials"][sl].reshape(-1, 9) if "virials" in system.data else None
                real = (system["energies"][sl], system["forces"][sl], real_v)
                err_rows.append(deviation_columns(es, fs, vs, natoms, real))
        keys += [(key, int(i)) for i in frame_ids]
    return Deviations(keys, np.concatenate(rows), np.concatenate(err_rows) if true_error else None)


def descriptor_features(model, roots, ids: dict[str, list[int]], type_map, batch_size: int = 256,
                        dim: int = FEATURE_TRANSFER_DIM) -> dict[tuple[str, int], np.ndarray]:
    """Per frame of `ids`: for each element of type_map the mean of the model's descriptor over the frame's
    atoms of that element (zeros where it has none), concatenated; longer than `dim`, projected on `dim`
    fixed random directions (the same in every shard and iteration; distances are kept up to a few per cent).
    float32. SelectConfs reduces the candidates' features further (selection.reduce_features)."""
    if not any(ids.values()):
        return {}
    type_index = model_types([model], type_map)
    keys, rows = [], []
    for key, frame_ids, system in iter_frames(roots, ids, type_map, labeled=False, frames_only=True):
        n = len(frame_ids)
        types = system["atom_types"]
        coords = system["coords"].reshape(n, -1)
        cells = None if system.nopbc else system["cells"].reshape(n, -1)
        for sl in _batches(n, batch_size):
            d = np.asarray(model.eval_descriptor(coords[sl], None if cells is None else cells[sl], type_index[types]))
            d = d.reshape(d.shape[0], len(types), -1)
            per_type = [d[:, types == t].mean(axis=1) if np.any(types == t) else np.zeros((d.shape[0], d.shape[2]))
                        for t in range(len(type_map))]
            rows.append(np.concatenate(per_type, axis=1))
        keys += [(key, int(i)) for i in frame_ids]
    x = np.concatenate(rows)
    if x.shape[1] > dim:
        x = x @ (np.random.default_rng(0).standard_normal((x.shape[1], dim)) / np.sqrt(dim))
    return {k: x[i].astype(np.float32) for i, k in enumerate(keys)}


def ensemble_errors(models, dataset_dir, type_map: list[str], substitution: dict[str, str] | None = None) -> dict:
    """The ensemble's mean prediction against every labeled frame under `dataset_dir`: per-frame arrays
    and RMSEs (energy per atom, force components); {} when there is no frame."""
    import dpdata

    e_ref, e_pred, f_ref, f_pred = [], [], [], []
    type_index = model_types(models, type_map, substitution) if models else None
    for rel in find_systems(str(dataset_dir)):
        s = dpdata.LabeledSystem(str(Path(dataset_dir, rel)), fmt="deepmd/npy", type_map=type_map)
        n, natoms = len(s), s.get_natoms()
        cells = None if s.nopbc else s["cells"].reshape(n, -1)
        preds = [m.eval(s["coords"].reshape(n, -1), cells, type_index[s["atom_types"]]) for m in models]
        e_pred.append(np.mean([p[0].reshape(n) for p in preds], axis=0) / natoms)
        f_pred.append(np.mean([p[1].reshape(n, -1) for p in preds], axis=0).ravel())
        e_ref.append(s["energies"] / natoms)
        f_ref.append(s["forces"].reshape(n, -1).ravel())
    if not e_ref:
        return {}
    e_ref, e_pred, f_ref, f_pred = (np.concatenate(a) for a in (e_ref, e_pred, f_ref, f_pred))
    return {"e_ref": e_ref, "e_pred": e_pred, "f_ref": f_ref, "f_pred": f_pred,
            "rmse_e_per_atom": float(np.sqrt(np.mean((e_pred - e_ref) ** 2))),
            "rmse_f": float(np.sqrt(np.mean((f_pred - f_ref) ** 2))), "n_frames": int(len(e_ref))}


def write_shard_outputs(shard_index: int, classified, summary: dict) -> dict[str, Path]:
    """ModelDevi's outputs (the hand-over file and the summary) in a folder named by the shard: the slices'
    outputs are gathered into one artifact."""
    out = Path("shard.%06d" % shard_index)
    out.mkdir(exist_ok=True)
    write_classified(out / "model_devi.npz", classified)
    (out / "model_devi_summary.json").write_text(json.dumps(summary))
    return {"model_devi": out / "model_devi.npz", "summary": out / "model_devi_summary.json"}


class ModelDevi(OP):
    """Evaluate the trained ensemble on the frames of one shard still in the pool, classify them, and (shard 0)
    measure the held-out probe."""

    @classmethod
    def get_input_sign(cls):
        return OPIOSign({
            "models": Artifact(List[Path]),
            "pick_data": Artifact(List[Path], optional=True),
            "pick_data_paths": Parameter(List[str], default=[]),
            "state": Artifact(Path),
            "probe_data": Artifact(Path, optional=True),
            "type_map": List[str],
            "batch_size": Parameter(int, default=0),  # frames per evaluation call; 0: frames_per_call's
            "select_params": dict,
            "shard_index": Parameter(int, default=0),
            "shard_size": Parameter(int, default=DEFAULT_SHARD_SIZE),
        })

    @classmethod
    def get_output_sign(cls):
        return OPIOSign({"model_devi": Artifact(Path), "summary": Artifact(Path)})

    @OP.exec_sign_check
    @fatal_errors
    def execute(self, ip: OPIO) -> OPIO:
        p = SelectParams.from_dict(ip["select_params"])
        state = LoopState.load(ip["state"])
        shard = in_shard(state.pool, shard_ranges(state.systems, ip["shard_size"], ip["shard_index"]))
        need_models = any(shard.values()) or (ip["shard_index"] == 0 and ip["probe_data"] is not None)
        models = load_models(sorted(ip["models"], key=lambda m: Path(m).name)) if need_models else []
        roots = pick_data_roots(ip["pick_data"], ip["pick_data_paths"])
        batch_size = frames_per_call(models, ip["batch_size"])
        devi = compute_model_devi(models, roots, shard, ip["type_map"], batch_size,
                                  true_error=p.trust.uses_true_error, relative_f=p.relative_f_epsilon)
        classified = classify_shard(devi, p.trust)
        if p.select_style in FEATURE_STYLES and classified.candidates:
            feats = descriptor_features(models[0], roots, group_ids(classified.candidates), ip["type_map"],
                                        batch_size)
            classified.features = np.array([feats[k] for k in classified.candidates], np.float32)
        summary = {"shard": ip["shard_index"], "n_frames": len(devi.keys)}
        if ip["shard_index"] == 0 and ip["probe_data"] is not None:
            err = ensemble_errors(models, ip["probe_data"], ip["type_map"])
            if err:
                summary["probe"] = {"rmse_e_per_atom": err["rmse_e_per_atom"], "rmse_f": err["rmse_f"],
                                    "n_frames": err["n_frames"]}
        return OPIO(write_shard_outputs(ip["shard_index"], classified, summary))


def read_probe_error(summary_paths) -> dict | None:
    """The probe's measured error from the ModelDevi slices' summaries (shard 0 measures it), or None."""
    for path in summary_paths or []:
        if Path(path).is_file():
            probe = json.loads(Path(path).read_text()).get("probe")
            if probe:
                return probe
    return None
