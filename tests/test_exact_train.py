"""RunTrain's exact styles on the example's real TensorFlow models and new-level (EMT + D3) labels: two
iterations of the OP, the written models checked with deepmd-kit's own inference, the loss against an
independent optimum, the refit after `dp train`, and the guard against a model that is not linear."""

import json
import os
import shutil
from pathlib import Path

import dpdata
import numpy as np
import pytest
from dflow.python import OPIO
from scipy import linalg

from dflow_simplify.ops.exact_fit import STATE, FitState, frame_rows, system_frame_weight, write_checked
from dflow_simplify.ops.output_layer import FeatureModel
from dflow_simplify.ops.prep_train import PrepTrainParams, make_train_input
from dflow_simplify.ops.run_train import RunTrain, TrainConfig
from tests.test_train import sgd_last_two_layers
from tests.test_transfer_routes import new_level_holdout

pytestmark = pytest.mark.slow
TYPE_MAP = ["Ag", "Au"]


@pytest.fixture(scope="module")
def new_level(example, tmp_path_factory) -> Path:
    """The example's 40 held-out frames at EMT + D3, as two labeled groups of RunFP (with frame ids)."""
    return new_level_holdout(tmp_path_factory.mktemp("new-level"))


def iter_data(new_level: Path, out: Path, per_system: int) -> Path:
    """The first `per_system` frames of each system as the training set PrepTrain gathers."""
    for system in sorted(p for p in new_level.iterdir() if p.is_dir()):
        s = dpdata.LabeledSystem(str(system), fmt="deepmd/npy")
        target = out / "iter-000000" / "group" / system.name
        s[:per_system].to("deepmd/npy", str(target), set_size=10**6)
        (target / "frame_ids.json").write_text(json.dumps([[f"0/{system.name}", i] for i in range(per_system)]))
    return out


def run_train(example, workdir: Path, data: Path, init_model: Path, template: dict, task: str = "0000",
              backend_override: str = "tensorflow", **config) -> dict:
    task_path = workdir / "task"
    task_path.mkdir(parents=True, exist_ok=True)
    jinput = make_train_input(template, int(task), 1, PrepTrainParams(type_map=TYPE_MAP))
    (task_path / "input.json").write_text(json.dumps(jinput))
    mode = "init_model" if init_model.is_dir() else "init_frz_model"
    cfg = TrainConfig(backend=backend_override, init_mode=mode, type_map=TYPE_MAP, **config)
    cwd = Path.cwd()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        os.chdir(workdir)
        out = RunTrain().execute(OPIO({"task_name": task, "task_path": task_path, "init_model": init_model,
                                       "iter_data": data, "init_data": None, "config": cfg.as_dict()}))
    finally:
        os.chdir(cwd)
    return {k: (workdir / v if not Path(v).is_absolute() else Path(v)) for k, v in out.items()}


def deepmd_loss(model_file: Path, data: Path) -> float:
    """deepmd-kit's training loss at the example's limit prefactors (energy / N, forces; no virial), frame
    weights as deepmd-kit samples systems (batch size 1 here), from the model's own predictions."""
    from deepmd.infer import DeepPot

    dp, total, norm = DeepPot(str(model_file)), 0.0, 0.0
    for system in sorted(data.rglob("type.raw")):
        s = dpdata.LabeledSystem(str(system.parent), fmt="deepmd/npy", type_map=TYPE_MAP)
        n, natoms = len(s), s.get_natoms()
        e, f, _ = dp.eval(s["coords"].reshape(n, -1), s["cells"].reshape(n, 9), s["atom_types"])
        w = system_frame_weight(n, 1)
        forces = np.mean((f.reshape(n, -1) - s["forces"].reshape(n, -1)) ** 2, 1)
        total += w * np.sum((e.ravel() - s["energies"]) ** 2 / natoms + forces)
        norm += w * n
    return total / norm


def independent_optimum(start_model: Path, data: Path) -> float:
    """The least loss the output layer admits: scipy's least squares on the explicitly stacked weighted rows."""
    from dflow_simplify.ops.output_layer import load_model_dict

    features = FeatureModel(load_model_dict(start_model))
    stacked, labels = [], []
    for system in sorted(data.rglob("type.raw")):
        s = dpdata.LabeledSystem(str(system.parent), fmt="deepmd/npy", type_map=TYPE_MAP)
        natoms = s.get_natoms()
        rows = features.rows(s["coords"], s["cells"], s["atom_types"], virial=False)
        w = np.sqrt(np.concatenate([[1 / natoms], np.full(3 * natoms, 1 / (3 * natoms))]))
        for i in range(len(s)):
            a, y = frame_rows(rows, i, s, i, False)
            stacked.append(a * w[:, None])
            labels.append(y * w)
    a, y = np.concatenate(stacked), np.concatenate(labels)
    best = linalg.lstsq(a, y, lapack_driver="gelsd")[0]
    return float(np.sum((a @ best - y) ** 2) / len(stacked))  # one frame per entry, each of weight 1


def test_exact_training_continues_its_fit_and_writes_models_deepmd_kit_loads(example, new_level, tmp_path):
    template = json.loads((example / "config.json").read_text())["default_training_param"]
    data1 = iter_data(new_level, tmp_path / "data1", 5)
    first = run_train(example, tmp_path / "it1", data1, example / "models" / "000", template, train_style="exact")
    record = json.loads(first["lcurve"].read_text())
    assert first["model"].name == "graph.pb" and (first["checkpoint"] / STATE / "normal.npz").exists()
    assert record["frames"] == record["frames_computed"] == 10 and record["effective_parameters"] > 1
    # the written model's own loss (deepmd-kit's inference) within 2% of the independent optimum
    loss = deepmd_loss(first["model"], data1)
    assert np.isclose(loss, record["loss"], rtol=1e-6)
    assert loss <= 1.02 * independent_optimum(tmp_path / "it1" / "0000" / "start.pb", data1)
    # iteration 2 from iteration 1's checkpoint: only the 10 new frames get rows; the same fit as from scratch
    data2 = iter_data(new_level, tmp_path / "data2", 10)
    second = run_train(example, tmp_path / "it2", data2, first["checkpoint"], template, train_style="exact")
    record2 = json.loads(second["lcurve"].read_text())
    assert record2["frames"] == 20 and record2["frames_computed"] == 10
    scratch = run_train(example, tmp_path / "it2-scratch", data2, example / "models" / "000", template,
                        train_style="exact")
    a = FitState.load(second["checkpoint"] / STATE).normal
    b = FitState.load(scratch["checkpoint"] / STATE).normal
    assert np.abs(a.gram - b.gram).max() <= 1e-10 * np.abs(b.gram).max()
    assert deepmd_loss(second["model"], data2) <= 1.02 * independent_optimum(tmp_path / "it1" / "0000" / "start.pb", data2)
    # the original model's loss on the new level is far higher
    assert deepmd_loss(second["model"], data2) < 0.2 * deepmd_loss(example / "models" / "000" / "graph.pb", data2)


def test_exact_refit_after_sgd_never_raises_the_loss(example, new_level, tmp_path):
    template = sgd_last_two_layers(json.loads((example / "config.json").read_text())["default_training_param"])
    template["training"].update(numb_steps=60, disp_freq=20, save_freq=60)
    data = iter_data(new_level, tmp_path / "data", 6)
    out = run_train(example, tmp_path / "it1", data, example / "models" / "000", template, exact_refit=True)
    refit = json.loads((tmp_path / "it1" / "0000" / "refit.json").read_text())
    sgd_model = out["model"].with_name("graph.sgd.pb")
    assert sgd_model.exists()
    sgd, exact = deepmd_loss(sgd_model, data), deepmd_loss(out["model"], data)
    assert np.isclose(sgd, refit["sgd_loss"], rtol=1e-5) and np.isclose(exact, refit["loss"], rtol=1e-5)
    assert exact <= sgd
    print(f"60 SGD steps: loss {sgd:.4g}; refit: {exact:.4g} ({sgd / exact:.1f}x lower)")


def test_a_model_that_does_not_predict_what_the_fit_does_is_refused(example, tmp_path):
    from dflow_simplify.ops.output_layer import OutputLayer, load_model_dict

    state = FitState.begin(load_model_dict(example / "models" / "000" / "graph.pb"))
    s = dpdata.LabeledSystem(str(next((example / "data" / "holdout").iterdir())), fmt="deepmd/npy", type_map=TYPE_MAP)
    theta = OutputLayer.of(state.start).params(state.start)
    rows = FeatureModel(state.start).rows(s["coords"][:1], s["cells"][:1], s["atom_types"], virial=False)
    right = (s["coords"][0], s["cells"][0], s["atom_types"], float(rows["energy"][0] @ theta), rows["force"][0] @ theta)
    write_checked(state, theta, tmp_path / "ok.pb", [right])
    wrong = right[:3] + (right[3] + 1e-3, right[4])
    with pytest.raises(ValueError, match="not linear in the output layer"):
        write_checked(state, theta, tmp_path / "bad.pb", [wrong])


def test_pytorch_models_are_fitted_and_written_as_pth(example, new_level, tmp_path):
    import subprocess
    import sys

    from deepmd.infer import DeepPot

    start = tmp_path / "start.pth"
    subprocess.run([sys.executable, "-m", "deepmd", "convert-backend", str(example / "models" / "000" / "graph.pb"),
                    str(start)], check=True, capture_output=True)
    template = json.loads((example / "config.json").read_text())["default_training_param"]
    data = iter_data(new_level, tmp_path / "data", 5)
    task = tmp_path / "it1"
    out = run_train(example, task, data, start, template, train_style="exact", backend_override="pytorch")
    assert out["model"].name == "graph.pth" and DeepPot(str(out["model"])).get_type_map() == TYPE_MAP
    record = json.loads(out["lcurve"].read_text())
    assert record["frames"] == 10 and record["loss_ratio"] < 1.02


def test_models_from_one_file_stay_an_ensemble_that_deviates_where_data_are_missing(example, new_level, tmp_path):
    """Two models from the same starting file, fitted on bootstrap resamples of one composition's frames:
    they differ, and they disagree more on the other composition, which no frame taught them."""
    from deepmd.infer import DeepPot

    template = json.loads((example / "config.json").read_text())["default_training_param"]
    data = iter_data(new_level, tmp_path / "data", 8)
    shutil.rmtree(next(p for p in (data / "iter-000000" / "group").iterdir() if p.name != "Ag24Au8"))
    models = [DeepPot(str(run_train(example, tmp_path / f"m{i}", data, example / "models" / "000", template,
                                    task="%04d" % i, train_style="exact", bootstrap=True, seed=3)["model"]))
              for i in range(2)]
    devi = {}
    for system in sorted(p for p in new_level.iterdir() if p.is_dir()):
        s = dpdata.LabeledSystem(str(system), fmt="deepmd/npy", type_map=TYPE_MAP)[8:]
        n = len(s)
        forces = [m.eval(s["coords"].reshape(n, -1), s["cells"].reshape(n, 9), s["atom_types"])[1] for m in models]
        devi[system.name] = float(np.mean(np.linalg.norm(forces[0] - forces[1], axis=-1)))
    assert devi["Ag24Au8"] > 0
    assert devi["Ag16Au16"] > devi["Ag24Au8"], devi
