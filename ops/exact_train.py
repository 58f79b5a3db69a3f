"""RunTrain's exact styles: where the fit starts, which frames it trains on, and the refit after `dp train`.

`train_style: "exact"` solves the output layer (ops/exact_fit.py) instead of running `dp train`; the fit
state travels in the checkpoint folder (`exact/`), so iteration i only computes the rows of the frames
relabeled since iteration i-1. `exact_refit` re-solves the output layer of a model `dp train` has just
trained, its other layers fixed at their trained values, with the prior centred on the trained output layer:
the refit's loss is never above SGD's.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .exact_fit import (
    STATE,
    FitState,
    LossWeights,
    TrainingSystem,
    add_frames,
    exact_train,
    fit,
    fit_record,
    probe_frames,
    read_labeled,
    system_frame_weight,
    write_checked,
)
from .output_layer import SUPPORTED_DESCRIPTORS, FeatureModel, OutputLayer, check_linear_model, load_model_dict


def only_output_layer_trainable(jinput: dict) -> bool:
    """True when the deepmd-kit input freezes everything but the fitting net's output layer: the descriptor
    (every part of a hybrid one, and a type embedding) and each hidden fitting layer (`trainable` a list)."""
    model = jinput.get("model", {})
    descriptor = model.get("descriptor", {})
    parts = descriptor.get("list", []) if descriptor.get("type") == "hybrid" else [descriptor]
    if any(p.get("trainable", True) is not False for p in parts):
        return False
    if model.get("type_embedding", {}).get("trainable", False) is not False:
        return False
    fitting = model.get("fitting_net", {})
    trainable = fitting.get("trainable", True)
    if not isinstance(trainable, list):
        return False
    return len(trainable) == len(fitting.get("neuron", [120, 120, 120])) + 1 and not any(trainable[:-1]) \
        and bool(trainable[-1])


def exact_problem(jinput: dict, init_mode: str, model_branch: str | None) -> str | None:
    """Why the exact fit cannot train this set-up (a sentence naming the key), or None when it can."""
    model = jinput.get("model", {})
    if not only_output_layer_trainable(jinput):
        return ("a layer other than the fitting net's output layer is trainable (exact needs "
                "model.descriptor.trainable false, model.fitting_net.trainable [false, ..., false, true])")
    if init_mode == "scratch":
        return "the training starts from scratch: there are no trained layers to keep (give starting models)"
    if model_branch:
        return "model_branch: a multi-task branch is fine-tuned by dp train only"
    descriptor = model.get("descriptor", {}).get("type")
    if descriptor not in SUPPORTED_DESCRIPTORS:
        return f"model.descriptor.type {descriptor!r} is not one of {list(SUPPORTED_DESCRIPTORS)}"
    fitting = model.get("fitting_net", {})
    if fitting.get("type", "ener") != "ener":
        return f"model.fitting_net.type {fitting.get('type')!r}: the exact fit takes energy models ('ener')"
    for key in ("numb_fparam", "numb_aparam", "atom_ener"):
        if fitting.get(key):
            return f"model.fitting_net.{key} is set: the exact fit takes models without it"
    try:
        LossWeights.of(jinput.get("loss", {}))
        auto_prob = jinput.get("training", {}).get("training_data", {}).get("auto_prob", "prob_sys_size")
        system_frame_weight(1, 1, auto_prob)
    except ValueError as e:
        return str(e)
    return None


def systems_with_ids(iter_systems: list[str], init_roots: list[Path], init_systems: list[str],
                     batch_sizes: list[int]) -> list[TrainingSystem]:
    """The training systems with stable frame ids: relabeled frames by their pick_data id (RunFP's
    frame_ids.json), init_data frames by their place under their root; `batch_sizes` in the order
    init systems, then relabeled systems (as set_training_data orders them)."""
    out = []
    for path, batch in zip(init_systems, batch_sizes):
        root = next(r for r in init_roots if path.startswith(str(r)))
        rel = os.path.relpath(path.split("#")[0], root) + ("#" + path.split("#", 1)[1] if "#" in path else "")
        n = _nframes(path)
        out.append(TrainingSystem(path, [f"init:{root.name}/{rel}@{i}" for i in range(n)], batch))
    for path, batch in zip(iter_systems, batch_sizes[len(init_systems):]):
        ids = json.loads(Path(path, "frame_ids.json").read_text())
        out.append(TrainingSystem(path, [f"{key}@{int(i)}" for key, i in ids], batch))
    return out


def _nframes(path: str) -> int:
    return len(read_labeled(path, None))


def start_model(init_model: Path, init_mode: str, backend: str, work: Path) -> tuple[dict | None, Path | None]:
    """(serialized starting model, None) for a first exact fit, or (None, previous fit state) to continue."""
    if (init_model / STATE).is_dir():
        return None, init_model / STATE
    if init_mode == "scratch":
        raise ValueError("train_style \"exact\" needs a starting model (training_iter0_model_path, "
                         "training_init_frozen_model or training_finetune_model): from scratch there are no "
                         "trained layers to keep")
    if init_model.is_dir() and init_mode == "init_model":
        if backend == "pytorch":
            return load_model_dict(_latest_pt_checkpoint(init_model)), None
        frozen = work / "start.pb"  # a TensorFlow checkpoint folder: freeze it once, in this process (which
        from deepmd.tf.entrypoints.freeze import freeze  # imports TensorFlow anyway, to write the fitted model)

        try:
            freeze(checkpoint_folder=str(init_model), output=str(frozen))
        except Exception as e:
            raise ValueError(f"freezing the checkpoint in {init_model} failed: {e}") from e
        return load_model_dict(frozen), None
    return load_model_dict(init_model), None


def _latest_pt_checkpoint(folder: Path) -> Path:
    named = folder / "model.ckpt.pt"
    if named.exists():
        return named
    found = sorted(folder.glob("model.ckpt*.pt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ValueError(f"{folder}: no PyTorch checkpoint (model.ckpt*.pt)")
    return found[-1]


def check_type_map(start: dict, type_map: list[str], substitution_ok: bool) -> None:
    """The fit reads the data's types by index: the starting model must list the same types in the same order
    (under other names only for a similar material, which ConfigError already checked)."""
    model_types = list(start["model"].get("type_map", []))
    if len(model_types) != len(type_map) or (model_types != list(type_map) and not substitution_ok):
        raise ValueError(f"the starting model's type_map {model_types} differs from type_map {list(type_map)}; "
                         "the exact fit reads types by index (train_style \"sgd\" lets deepmd-kit map them)")


def _one_thread() -> None:
    """One torch thread per process, as `dp train` runs (OMP_NUM_THREADS in the step's envs overrides)."""
    import torch  # deferred: seconds to import

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))


def run_exact(work: Path, init_model: Path, init_mode: str, backend: str, systems: list[TrainingSystem],
              type_map: list[str], jinput: dict, bootstrap: tuple[int, int] | None, renamed: bool) -> dict[str, Path]:
    """One exact training in `work`; the files RunTrain returns."""
    _one_thread()
    frozen = "graph.pb" if backend == "tensorflow" else "graph.pth"
    start, previous = start_model(init_model, init_mode, backend, work)
    if start is not None:
        check_linear_model(start, str(init_model))
        check_type_map(start, type_map, renamed)
    ckpt = work / "checkpoint_files"
    ckpt.mkdir(exist_ok=True)
    auto_prob = jinput["training"].get("training_data", {}).get("auto_prob", "prob_sys_size")
    record = exact_train(start, previous, systems, type_map, jinput.get("loss", {}), ckpt, frozen, auto_prob,
                         bootstrap, rename_types=type_map)
    shutil.copy2(ckpt / frozen, work / frozen)
    # outputs are separate files: two outputs naming one file become hard links, which dpdispatcher's download
    # of a batch job's outputs (SSH) refuses
    shutil.copy2(ckpt / STATE / "fit.json", work / "fit.json")
    with open(work / "train.log", "a") as log:
        log.write("exact output-layer fit: " + json.dumps(record) + "\n")
    return {"model": work / frozen, "checkpoint": ckpt, "lcurve": work / "fit.json", "log": work / "train.log"}


def refit(work: Path, model_file: Path, systems: list[TrainingSystem], type_map: list[str], jinput: dict) -> dict:
    """Re-solve the output layer of the model `dp train` wrote; the SGD model is kept as `<name>.sgd<suffix>`."""
    _one_thread()
    start = load_model_dict(model_file)
    check_linear_model(start, str(model_file))
    state = FitState.begin(start)
    features = FeatureModel(start)
    auto_prob = jinput["training"].get("training_data", {}).get("auto_prob", "prob_sys_size")
    computed = add_frames(state, systems, type_map, LossWeights.of(jinput.get("loss", {})), auto_prob,
                          features=features)
    post = fit(state)
    record = fit_record(state, post, computed)
    record["style"] = "sgd+exact_refit"
    record["sgd_loss"] = state.normal.loss(OutputLayer.of(start).params(start))
    shutil.copy2(model_file, model_file.with_name(model_file.stem + ".sgd" + model_file.suffix))
    write_checked(state, post.mean, model_file, probe_frames(state, systems, type_map, post.mean, features))
    (work / "refit.json").write_text(json.dumps(record, indent=1))
    return record

