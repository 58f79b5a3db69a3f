"""Train by solving: the output layer fitted exactly (RunTrain's `train_style: "exact"`, and `exact_refit`).

The objective is deepmd-kit's own training loss at the limit prefactors of `loss` (energy per frame over
N^norm_exp, force components, virial over N^norm_exp; norm_exp 2 with `intensive_ener_virial`, else 1), each
frame weighted as deepmd-kit samples it: a system is drawn with probability proportional to its number of
batches (`auto_prob` "prob_sys_size", the default; "prob_uniform": equal), so a frame of system s weighs
nbatches_s / nframes_s (or 1 / nframes_s). A Gaussian prior centred on the starting model's output layer
(what init-model means) has its strength chosen by evidence maximisation (ops/posterior.py).

The frozen layers never change, so each frame's contribution to the normal equations is computed once, when
it is first trained on, and kept in the model's checkpoint folder (`exact/`), with the starting model.
Models that would otherwise come out identical (one starting file for all) are each fitted on a Poisson
bootstrap of the frames (online bagging: a frame counts k ~ Poisson(1) times for a model, seeded by the model
and the frame), so the ensemble still deviates where the data leave the output layer uncertain.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .output_layer import FeatureModel, OutputLayer, load_model_dict, save_model_dict
from .posterior import NormalEquations, Posterior, solve

STATE = "exact"  # the folder, inside a checkpoint, that carries the fit from one iteration to the next
CHUNK_FRAMES = 16


@dataclass(frozen=True)
class LossWeights:
    """The weights deepmd-kit's `ener` loss gives a frame's rows at its limit prefactors."""

    pref_e: float
    pref_f: float
    pref_v: float
    norm_exp: int

    @classmethod
    def of(cls, loss: dict) -> "LossWeights":
        if loss.get("type", "ener") != "ener":
            raise ValueError(f"default_training_param.loss.type: {loss.get('type')!r}; the exact fit takes 'ener'")
        for key in ("use_huber", "relative_f", "limit_pref_ae", "limit_pref_pf", "limit_pref_gf", "enable_atom_ener_coeff"):
            if loss.get(key):
                raise ValueError(f"default_training_param.loss.{key} = {loss[key]!r}: not a plain least-squares "
                                 "loss; use train_style \"sgd\"")
        return cls(float(loss.get("limit_pref_e", 1.0)), float(loss.get("limit_pref_f", 1.0)),
                   float(loss.get("limit_pref_v", 0.0)), 2 if loss.get("intensive_ener_virial") else 1)

    def of_frame(self, natoms: int, virial: bool) -> np.ndarray:
        w = [np.full(1, self.pref_e / natoms**self.norm_exp), np.full(3 * natoms, self.pref_f / (3 * natoms))]
        if virial:
            w.append(np.full(9, self.pref_v / (9 * natoms**self.norm_exp)))
        return np.concatenate(w)


def system_frame_weight(nframes: int, batch_size: int, auto_prob: str = "prob_sys_size") -> float:
    """The weight of one frame of a system in deepmd-kit's expected loss (see the module's doc)."""
    if auto_prob == "prob_uniform":
        return 1.0 / nframes
    if auto_prob != "prob_sys_size":
        raise ValueError(f"training_data.auto_prob: {auto_prob!r}; the exact fit takes 'prob_sys_size' (default) "
                         "or 'prob_uniform'")
    return max(1, nframes // batch_size) / nframes


def multiplicity(seed: int, model: int, frame_id: str) -> int:
    """A frame's Poisson(1) count in model `model`'s bootstrap, the same in every iteration."""
    digest = hashlib.sha256(f"{seed}/{model}/{frame_id}".encode()).digest()
    return int(np.random.default_rng(int.from_bytes(digest[:8], "little")).poisson(1.0))


@dataclass(frozen=True)
class TrainingSystem:
    """One system trained on: where it is, the ids of its frames (stable across iterations), its batch size."""

    path: str
    frame_ids: list
    batch_size: int


def read_labeled(path: str, type_map: list[str]):
    import dpdata

    if "#" in path:
        return dpdata.LabeledSystem(path, fmt="deepmd/hdf5", type_map=type_map)
    return dpdata.LabeledSystem(path, fmt="deepmd/npy", type_map=type_map)


@dataclass
class FitState:
    """What carries over between iterations: the starting model, the normal equations, the frames in them."""

    start: dict
    normal: NormalEquations
    frames: dict  # frame id -> multiplicity

    @classmethod
    def begin(cls, start: dict) -> "FitState":
        return cls(start, NormalEquations.empty(OutputLayer.of(start).size), {})

    @classmethod
    def load(cls, folder: Path) -> "FitState":
        return cls(load_model_dict(folder / "start.dp"), NormalEquations.load(folder / "normal.npz"),
                   json.loads((folder / "frames.json").read_text()))

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_model_dict(folder / "start.dp", self.start)
        self.normal.save(folder / "normal.npz")
        (folder / "frames.json").write_text(json.dumps(self.frames))


def add_frames(state: FitState, systems: list[TrainingSystem], type_map: list[str], weights: LossWeights,
               auto_prob: str = "prob_sys_size", bootstrap: tuple[int, int] | None = None,
               features: FeatureModel | None = None) -> int:
    """Add the frames not yet in `state` to its normal equations; `bootstrap` (seed, model index) draws each
    frame's multiplicity. Returns the number of frames whose rows were computed."""
    computed = 0
    for system in systems:
        new = [i for i, fid in enumerate(system.frame_ids) if fid not in state.frames]
        if not new:
            continue
        data = read_labeled(system.path, type_map)
        nframes, natoms = len(data), data.get_natoms()
        frame_weight = system_frame_weight(nframes, system.batch_size, auto_prob)
        counts = {i: (multiplicity(*bootstrap, system.frame_ids[i]) if bootstrap else 1) for i in new}
        todo = [i for i in new if counts[i] > 0]
        virial = weights.pref_v > 0 and "virials" in data.data and not data.nopbc
        row_weights = weights.of_frame(natoms, virial)
        for lo in range(0, len(todo), CHUNK_FRAMES):
            idx = todo[lo:lo + CHUNK_FRAMES]
            if features is None:
                features = FeatureModel(state.start)
            rows = features.rows(data["coords"][idx], None if data.nopbc else data["cells"][idx],
                                 data["atom_types"], virial=virial)
            for j, i in enumerate(idx):
                a, y = frame_rows(rows, j, data, i, virial)
                state.normal.add(a, y, row_weights, frame_weight * counts[i])
            computed += len(idx)
        state.frames.update({system.frame_ids[i]: counts[i] for i in new})
    return computed


def frame_rows(rows: dict, j: int, data, i: int, virial: bool) -> tuple[np.ndarray, np.ndarray]:
    """Frame j of a rows batch and the labels of frame i of `data`, stacked as [E, F (3N), V (9)]."""
    a = [rows["energy"][j][None], rows["force"][j]]
    y = [np.asarray(data["energies"][i]).reshape(1), np.asarray(data["forces"][i]).reshape(-1)]
    if virial:
        a.append(rows["virial"][j])
        y.append(np.asarray(data["virials"][i]).reshape(-1))
    return np.concatenate(a), np.concatenate(y)


def parameter_groups(layer: OutputLayer) -> list[np.ndarray]:
    """Prior groups: the output weights, and the per-type energy constants (an energy shift between levels
    of theory is not of the weights' scale)."""
    return [np.arange(layer.n_weights), np.arange(layer.n_weights, layer.size)]


def fit(state: FitState) -> Posterior:
    layer = OutputLayer.of(state.start)
    return solve(state.normal, layer.params(state.start), parameter_groups(layer))


class _Clock:
    def __init__(self):
        self.t, self.laps = time.perf_counter(), {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.t, 3)
        self.t = now


def fit_record(state: FitState, post: Posterior, computed: int) -> dict:
    """What the report shows of a fit: loss against its optimum, prior and noise levels, sizes, time."""
    optimum = state.normal.optimum()
    loss, best = state.normal.loss(post.mean), state.normal.loss(optimum)
    return {"style": "exact", "frames": len(state.frames), "frames_weighted": sum(state.frames.values()),
            "frames_computed": computed, "parameters": len(post.mean), "rows": state.normal.rows,
            "loss": loss, "optimum_loss": best, "loss_ratio": loss / best if best > 0 else 1.0,
            "prior_precision": post.alpha, "prior_at_floor": post.at_floor, "noise_precision": post.beta,
            "effective_parameters": float(sum(post.gamma)), "evidence_iterations": post.iterations}


def write_checked(state: FitState, theta: np.ndarray, model_path: Path, probe: list[tuple], type_map=None,
                  rtol: float = 1e-6) -> None:
    """Write the model with theta and check that the written file predicts what the solver does on `probe`
    frames ((coords, cells, atom types, predicted energy, predicted forces) each); ValueError names the file."""
    layer = OutputLayer.of(state.start)
    save_model_dict(model_path, layer.with_params(state.start, theta, type_map))
    from deepmd.infer import DeepPot  # deferred: the backend's own inference

    dp = DeepPot(str(model_path))
    for coords, cells, atype, energy, forces in probe:
        e, f, _ = dp.eval(coords.reshape(1, -1), None if cells is None else cells.reshape(1, 9), atype)
        scale_e, scale_f = max(abs(energy), 1.0), max(np.abs(forces).max(), 1.0)
        if abs(e.item() - energy) > rtol * scale_e or np.abs(f.reshape(-1) - forces).max() > rtol * scale_f:
            raise ValueError(f"{model_path}: the written model predicts E = {e.item():.10g} where the exact fit "
                             f"predicts {energy:.10g} (forces off by {np.abs(f.reshape(-1) - forces).max():.3g}): "
                             "its energy is not linear in the output layer; use train_style \"sgd\"")


def probe_frames(state: FitState, systems: list[TrainingSystem], type_map: list[str], theta: np.ndarray,
                 features: FeatureModel | None, n: int = 2) -> list[tuple]:
    """The first `n` training frames with the solver's predictions, for write_checked."""
    out = []
    features = features or FeatureModel(state.start)
    for system in systems:
        data = read_labeled(system.path, type_map)
        take = list(range(min(n - len(out), len(data))))
        rows = features.rows(data["coords"][take], None if data.nopbc else data["cells"][take], data["atom_types"],
                             virial=False)
        for j in take:
            out.append((data["coords"][j], None if data.nopbc else data["cells"][j], data["atom_types"],
                        float(rows["energy"][j] @ theta), rows["force"][j] @ theta))
        if len(out) >= n:
            break
    return out


def exact_train(start: dict | None, previous: Path | None, systems: list[TrainingSystem], type_map: list[str],
                loss: dict, out_dir: Path, model_name: str, auto_prob: str = "prob_sys_size",
                bootstrap: tuple[int, int] | None = None, rename_types: list[str] | None = None) -> dict:
    """One exact training: continue the fit in `previous` (a checkpoint's `exact/` folder) or begin one from
    `start` (a serialized model), add the new frames, solve, write `model_name` and the new state to `out_dir`.
    Returns the fit's record (also written as `out_dir/exact/fit.json`)."""
    clock = _Clock()
    state = FitState.load(previous) if previous is not None else FitState.begin(start)
    features = FeatureModel(state.start)
    clock.lap("load")
    computed = add_frames(state, systems, type_map, LossWeights.of(loss), auto_prob, bootstrap, features)
    clock.lap("rows")
    if state.normal.weight <= 0:
        raise ValueError("no training frame counts for this model (every frame drew zero in its bootstrap)")
    post = fit(state)
    clock.lap("solve")
    record = fit_record(state, post, computed)
    probe = probe_frames(state, systems, type_map, post.mean, features)
    write_checked(state, post.mean, out_dir / model_name, probe, rename_types)
    clock.lap("write_and_check")
    state.save(out_dir / STATE)
    clock.lap("save")
    record["seconds"] = clock.laps
    (out_dir / STATE / "fit.json").write_text(json.dumps(record, indent=1))
    return record
