"""The models' errors on the relabeled frames, for the report: the original models, each iteration's ensemble
and the final one, as the ensemble's mean prediction against the new labels.

Evaluating a model imports its backend (TensorFlow prints start-up notices no setting silences), so the report
runs `python -m dflow_simplify.workflows.model_errors REQUEST RESULT` in a process of its own, its output kept
in a log file (`evaluate_in_subprocess`); the report's own process never imports TensorFlow. The rest are
plain functions of the result.

REQUEST (JSON): {"type_map", "dataset": the consolidated dataset (a frame_ids.json per system), "sets": [{"name",
"models": files or checkpoint folders, "substitution", "head", "frames": [[system key, frame], ...] or null for
every frame, "parity": keep the predictions themselves}]}.
RESULT (JSON): {"frames": [[system key, frame], ...], "natoms", "e_ref" (eV/atom), "sets": {name: {"e_err"
(eV/atom, null where not evaluated), "f_sq" (sum of squared force-component errors), "f_n" (components), and
with parity "parity": {"e_ref", "e_pred", "f_ref", "f_pred"}}}, "skipped": {name: why}}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

MAX_PARITY_FORCES = 20000  # force components kept for a parity plot (a fixed random sample beyond that)


# -- the evaluating side (its own process) -----------------------------------------------------------------

def frozen_model(path: str, frozen: Path) -> str:
    """A file DeepPot loads: the path itself, the PyTorch checkpoint in a training folder, or a TensorFlow
    training folder's checkpoint frozen into `frozen` (`dp --tf freeze`)."""
    p = Path(path)
    if p.is_file():
        return str(p)
    if (p / "model.ckpt.pt").exists():
        return str(p / "model.ckpt.pt")
    from deepmd.main import main as dp

    dp(["--tf", "freeze", "-c", str(p), "-o", str(frozen)])
    return str(frozen)


def _labeled_systems(dataset: str, type_map: list[str]):
    import dpdata

    from dflow_simplify.ops.data import find_systems

    for rel in find_systems(dataset):
        sys_dir = Path(dataset, rel)
        system = dpdata.LabeledSystem(str(sys_dir), fmt="deepmd/npy", type_map=type_map)
        ids_file = sys_dir / "frame_ids.json"
        ids = json.loads(ids_file.read_text()) if ids_file.exists() else [None] * len(system)
        yield [tuple(i) if i else (rel, j) for j, i in enumerate(ids)], system


def evaluate(request: dict, workdir: Path) -> dict:
    from deepmd.infer import DeepPot

    from dflow_simplify.ops.model_devi import model_types

    type_map = request["type_map"]
    systems = list(_labeled_systems(request["dataset"], type_map))
    keys = [k for ids, _ in systems for k in ids]
    natoms = [s.get_natoms() for ids, s in systems for _ in ids]
    e_ref = np.concatenate([s["energies"] / s.get_natoms() for _, s in systems]) if systems else np.zeros(0)
    result = {"frames": [list(k) for k in keys], "natoms": natoms, "e_ref": e_ref.tolist(), "sets": {}, "skipped": {}}
    for n_set, spec in enumerate(request["sets"]):
        wanted = None if spec.get("frames") is None else {tuple(k) for k in spec["frames"]}
        try:
            head = {"head": spec["head"]} if spec.get("head") else {}
            models = [DeepPot(frozen_model(m, workdir / f"{n_set}-{i}.pb"), **head)
                      for i, m in enumerate(spec["models"])]
            types = model_types(models, type_map, spec.get("substitution") or {})
        except Exception as e:  # a model this process cannot load: the page says so, the rest goes on
            result["skipped"][spec["name"]] = f"{type(e).__name__}: {e}"
            continue
        out = {"e_err": [None] * len(keys), "f_sq": [None] * len(keys), "f_n": [None] * len(keys)}
        parity = {"e_ref": [], "e_pred": [], "f_ref": [], "f_pred": []}
        offset = 0
        for ids, s in systems:
            rows = [j for j, k in enumerate(ids) if wanted is None or k in wanted]
            if rows:
                n, na = len(rows), s.get_natoms()
                cells = None if s.nopbc else s["cells"][rows].reshape(n, -1)
                preds = [m.eval(s["coords"][rows].reshape(n, -1), cells, types[s["atom_types"]]) for m in models]
                e_pred = np.mean([p[0].reshape(n) for p in preds], axis=0) / na
                f_pred = np.mean([p[1].reshape(n, -1) for p in preds], axis=0)
                f_ref = s["forces"][rows].reshape(n, -1)
                e_err = e_pred - s["energies"][rows] / na
                for r, j in enumerate(rows):
                    out["e_err"][offset + j] = float(e_err[r])
                    out["f_sq"][offset + j] = float(np.sum((f_pred[r] - f_ref[r]) ** 2))
                    out["f_n"][offset + j] = int(f_ref.shape[1])
                if spec.get("parity"):
                    parity["e_ref"] += (s["energies"][rows] / na).tolist()
                    parity["e_pred"] += e_pred.tolist()
                    parity["f_ref"].append(f_ref.ravel())
                    parity["f_pred"].append(f_pred.ravel())
            offset += len(ids)
        if spec.get("parity"):
            parity["f_ref"], parity["f_pred"] = _sampled_forces(parity["f_ref"], parity["f_pred"])
            out["parity"] = parity
        result["sets"][spec["name"]] = out
    return result


def _sampled_forces(refs: list, preds: list) -> tuple[list, list]:
    ref = np.concatenate(refs) if refs else np.zeros(0)
    pred = np.concatenate(preds) if preds else np.zeros(0)
    if len(ref) > MAX_PARITY_FORCES:
        keep = np.sort(np.random.default_rng(0).choice(len(ref), MAX_PARITY_FORCES, replace=False))
        ref, pred = ref[keep], pred[keep]
    return ref.round(5).tolist(), pred.round(5).tolist()


def main(argv: list[str]) -> None:
    request_path, result_path = argv
    request = json.loads(Path(request_path).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        result = evaluate(request, Path(tmp))
    Path(result_path).write_text(json.dumps(result))


# -- the report's side --------------------------------------------------------------------------------------

def evaluate_in_subprocess(request: dict, log_path: Path, timeout: float = 1800) -> dict:
    """Run the evaluation in a process of its own, its output appended to `log_path`; the result, or
    {"error": why} when the process failed."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        req, res = Path(tmp, "request.json"), Path(tmp, "result.json")
        req.write_text(json.dumps(request))
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
        with open(log_path, "a") as log:
            try:
                proc = subprocess.run([sys.executable, "-m", "dflow_simplify.workflows.model_errors", str(req), str(res)],
                                      stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout)
            except subprocess.TimeoutExpired:
                return {"error": f"the evaluation took more than {timeout:.0f} s (log: {log_path})"}
        if proc.returncode != 0 or not res.exists():
            return {"error": f"the evaluation exited with code {proc.returncode} (log: {log_path})"}
        return json.loads(res.read_text())


def frame_mask(result: dict, frames=None) -> np.ndarray:
    """Which of the result's frames are in `frames` (all when None)."""
    if frames is None:
        return np.ones(len(result["frames"]), bool)
    wanted = {tuple(k) for k in frames}
    return np.array([tuple(k) in wanted for k in result["frames"]], bool)


def set_rmse(result: dict, name: str, mask: np.ndarray | None = None) -> dict | None:
    """{"rmse_e_per_atom", "rmse_f", "n_frames"} of set `name` on the frames of `mask` it was evaluated on, or None."""
    s = result.get("sets", {}).get(name)
    if s is None:
        return None
    mask = np.ones(len(result["frames"]), bool) if mask is None else mask
    rows = [j for j in np.flatnonzero(mask) if s["e_err"][j] is not None]
    if not rows:
        return None
    e = np.array([s["e_err"][j] for j in rows])
    f_sq, f_n = sum(s["f_sq"][j] for j in rows), sum(s["f_n"][j] for j in rows)
    return {"rmse_e_per_atom": float(np.sqrt(np.mean(e ** 2))), "rmse_f": float(np.sqrt(f_sq / f_n)) if f_n else None,
            "n_frames": len(rows)}


def model_set(iteration: int, last: int) -> str:
    """The name of the models that picked iteration `iteration`'s frames: the originals pick iteration 0's (at
    random, unseen by them), iteration i's models (trained on the frames of iterations < i) iteration i's."""
    return "originals" if iteration == 0 else "final" if iteration == last else f"iteration {iteration}"


def learning_curve(result: dict, picks: dict[int, list], relabeled_before: dict[int, int], last: int) -> list[dict]:
    """One point per iteration whose picks were evaluated: the error of the models that picked them (frames they
    had not seen) and the originals' on the same frames, against the frames relabeled before those models."""
    points = []
    for it, frames in sorted(picks.items()):
        mask = frame_mask(result, frames)
        models = set_rmse(result, model_set(it, last), mask) if mask.any() else None
        if models:
            points.append({"iteration": it, "relabeled_before": relabeled_before.get(it, 0), "models": models,
                           "originals": set_rmse(result, "originals", mask)})
    return points


def per_system(result: dict, systems) -> dict[str, dict]:
    """Per pick_data system with relabeled frames: the originals' and the final models' errors on them."""
    keys = [k[0] for k in result["frames"]]
    out = {}
    for system in systems:
        mask = np.array([k == system for k in keys], bool)
        if mask.any():
            out[system] = {name: set_rmse(result, name, mask) for name in ("originals", "final")}
    return out


if __name__ == "__main__":
    from dflow_simplify.ops.dp_train_freeze import end_now, skip_keras

    skip_keras()
    main(sys.argv[1:])
    end_now()
