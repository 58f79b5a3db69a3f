"""The exact output-layer fit on small untrained deepmd-kit models (PyTorch, built in the test, no training):
rows against the model's own outputs, the posterior against its closed form, incremental against from-scratch
normal equations, the loss against an independent solver, the bootstrap, and the config's refusals."""

import json

import numpy as np
import pytest
from scipy import linalg

from dflow_simplify.ops.exact_fit import (
    FitState,
    LossWeights,
    TrainingSystem,
    add_frames,
    fit,
    frame_rows,
    multiplicity,
    system_frame_weight,
)
from dflow_simplify.ops.exact_train import exact_problem, only_output_layer_trainable
from dflow_simplify.ops.output_layer import FeatureModel, OutputLayer
from dflow_simplify.ops.posterior import NormalEquations, solve
from tests.conftest import ROOT, example_config, run_cli

TYPE_MAP = ["Ag", "Au"]
SE_A = {"type": "se_e2_a", "sel": [16, 16], "rcut": 4.0, "rcut_smth": 0.5, "neuron": [4, 8], "axis_neuron": 2,
        "seed": 1}
SE_ATTEN = {"type": "se_atten", "sel": 32, "rcut": 4.0, "rcut_smth": 0.5, "neuron": [4, 8], "axis_neuron": 2,
            "attn_layer": 0, "tebd_dim": 4, "seed": 1}


def untrained_model(descriptor: dict) -> dict:
    """A serialized deepmd-kit energy model with random weights and non-trivial statistics."""
    import torch
    from deepmd.pt.model.model import get_model

    model = get_model({"type_map": TYPE_MAP, "descriptor": dict(descriptor),
                       "fitting_net": {"neuron": [8, 6], "resnet_dt": True, "seed": 2}})
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("stddev"):
                buf.fill_(0.5)
            if name.endswith("bias_atom_e"):
                buf.copy_(torch.tensor([[-1.5], [-2.5]], dtype=buf.dtype))
    return {"model": model.serialize()}


def frames(n: int, seed: int = 0, natoms: int = 8):
    """Rattled 8-atom cubic cells, two types, with made-up labels from a second model (a 'new level')."""
    rng = np.random.default_rng(seed)
    base = np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]] * 2, dtype=float)
    base[4:] += 0.25
    cells = np.stack([np.eye(3) * rng.uniform(3.9, 4.3) for _ in range(n)])
    coords = np.stack([base @ c + rng.normal(0, 0.1, (natoms, 3)) for c in cells])
    return coords, cells, np.array([0, 1] * (natoms // 2))


@pytest.fixture(scope="module")
def se_a():
    return untrained_model(SE_A)


def _model_outputs(data: dict, coords, cells, atype):
    import torch
    from deepmd.pt.model.model import BaseModel

    model = BaseModel.deserialize(data["model"])
    out = model(torch.tensor(coords), torch.tensor(np.tile(atype, (len(coords), 1))), box=torch.tensor(cells))
    return {k: out[k].detach().numpy().reshape(len(coords), -1) for k in ("energy", "force", "virial")}


@pytest.mark.parametrize("descriptor", [SE_A, SE_ATTEN], ids=["se_e2_a", "se_atten"])
def test_rows_times_the_output_layer_are_the_models_energy_forces_and_virial(descriptor):
    data = untrained_model(descriptor)
    layer = OutputLayer.of(data)
    assert layer.mixed == (descriptor is SE_ATTEN)
    coords, cells, atype = frames(3)
    rows = FeatureModel(data).rows(coords, cells, atype)
    theta = layer.params(data)
    want = _model_outputs(data, coords, cells, atype)
    assert np.allclose(rows["energy"] @ theta, want["energy"].ravel(), rtol=1e-10, atol=1e-10)
    assert np.allclose(rows["force"] @ theta, want["force"], atol=1e-10)
    assert np.allclose(rows["virial"] @ theta, want["virial"], atol=1e-10)
    # the embedding nets linearised for the backward passes: the same rows as plain autograd
    plain = FeatureModel(data, linearize=False).rows(coords, cells, atype)
    assert np.allclose(plain["force"], rows["force"], atol=1e-12) and np.allclose(plain["virial"], rows["virial"], atol=1e-12)
    # other parameters written into the model: its outputs follow the same rows
    new = theta + np.random.default_rng(1).normal(0, 0.1, theta.shape)
    moved = layer.with_params(data, new)
    assert np.allclose(layer.params(moved), new)
    want = _model_outputs(moved, coords, cells, atype)
    assert np.allclose(rows["energy"] @ new, want["energy"].ravel(), atol=1e-10)
    assert np.allclose(rows["force"] @ new, want["force"], atol=1e-10)


def test_posterior_is_the_closed_form_at_the_evidence_optimum():
    """A synthetic linear problem with known truth: the mean is (beta G + A)^-1 beta G-moment, and alpha and
    beta satisfy MacKay's fixed point (alpha = gamma / |m - m0|^2, beta = (N - gamma) / SSR)."""
    rng = np.random.default_rng(3)
    n, p, sigma = 400, 6, 0.05
    x = rng.normal(size=(n, p))
    truth = rng.normal(size=p)
    y = x @ truth + rng.normal(0, sigma, n)
    normal = NormalEquations.empty(p)
    for i in range(n):
        normal.add(x[i:i + 1], y[i:i + 1], np.ones(1))
    prior = truth + 0.3 * rng.normal(size=p)
    post = solve(normal, prior, [np.arange(p)])
    alpha, beta = post.alpha[0], post.beta
    a = beta * x.T @ x + alpha * np.eye(p)
    mean = prior + np.linalg.solve(a, beta * x.T @ (y - x @ prior))
    assert np.allclose(post.mean, mean, rtol=1e-9)
    assert np.allclose(post.covariance(), np.linalg.inv(a), rtol=1e-8)
    gamma = p - alpha * np.trace(np.linalg.inv(a))
    assert np.isclose(post.gamma[0], gamma, rtol=1e-6)
    assert np.isclose(alpha, gamma / np.sum((mean - prior) ** 2), rtol=1e-4)
    assert np.isclose(beta, (n - gamma) / np.sum((y - x @ mean) ** 2), rtol=1e-4)
    assert abs(1 / np.sqrt(beta) - sigma) < 0.2 * sigma and np.allclose(post.mean, truth, atol=0.02)
    # few rows (fewer than unknowns): the prior keeps it solvable
    few = NormalEquations.empty(p)
    few.add(x[:3], y[:3], np.ones(3))
    assert np.all(np.isfinite(solve(few, prior, [np.arange(p)]).mean))


def _systems(tmp_path, data, n_per_system=(5, 4), seed=0):
    """deepmd/npy systems labeled by `data`'s model (a different model than the one fitted: a 'new level')."""
    import dpdata

    out = []
    for k, n in enumerate(n_per_system):
        coords, cells, atype = frames(n, seed + k)
        labels = _model_outputs(data, coords, cells, atype)
        system = dpdata.LabeledSystem(data={
            "atom_names": TYPE_MAP, "atom_numbs": [4, 4], "atom_types": atype, "orig": np.zeros(3),
            "cells": cells, "coords": coords, "energies": labels["energy"].ravel() + 0.01 * k,
            "forces": labels["force"].reshape(n, -1, 3), "virials": labels["virial"].reshape(n, 3, 3)})
        path = tmp_path / f"sys{k}"
        system.to("deepmd/npy", str(path))
        out.append(TrainingSystem(str(path), [f"sys{k}@{i}" for i in range(n)], 1 + k))
    return out


def test_incremental_normal_equations_equal_from_scratch(se_a, tmp_path):
    systems = _systems(tmp_path, untrained_model(dict(SE_A, seed=7)))
    weights = LossWeights.of({"limit_pref_e": 1, "limit_pref_f": 1, "limit_pref_v": 0.5})
    features = FeatureModel(se_a)
    once = FitState.begin(se_a)
    assert add_frames(once, systems, TYPE_MAP, weights, features=features) == 9
    twice = FitState.begin(se_a)
    first = [TrainingSystem(s.path, s.frame_ids[:2], s.batch_size) for s in systems]
    assert add_frames(twice, first, TYPE_MAP, weights, features=features) == 4
    assert add_frames(twice, systems, TYPE_MAP, weights, features=features) == 5  # only the new frames
    scale = np.abs(once.normal.gram).max()
    assert np.abs(once.normal.gram - twice.normal.gram).max() <= 1e-10 * scale
    assert np.allclose(once.normal.moment, twice.normal.moment, rtol=1e-10, atol=1e-10 * scale)
    assert once.normal.rows == twice.normal.rows and once.normal.weight == twice.normal.weight
    coords, cells, atype = frames(4, seed=5)
    rows = features.rows(coords, cells, atype)
    assert np.allclose(rows["energy"] @ fit(once).mean, rows["energy"] @ fit(twice).mean, rtol=1e-8)


def test_the_fit_is_within_two_percent_of_an_independent_least_squares_optimum(se_a, tmp_path):
    """The loss of the fitted model, from the model's own predictions with theta written in, against the optimum
    of scipy's least squares on the explicitly stacked, weighted rows; both with deepmd-kit's loss formula."""
    import dpdata

    target = untrained_model(dict(SE_A, seed=7))
    systems = _systems(tmp_path, target, (12, 10))
    loss = {"limit_pref_e": 1, "limit_pref_f": 1, "limit_pref_v": 0.5}
    weights = LossWeights.of(loss)
    state = FitState.begin(se_a)
    features = FeatureModel(se_a)
    add_frames(state, systems, TYPE_MAP, weights, features=features)
    theta = fit(state).mean
    fitted = OutputLayer.of(se_a).with_params(se_a, theta)

    def deepmd_loss(predict) -> float:
        total, norm = 0.0, 0.0
        for s in systems:
            d = dpdata.LabeledSystem(s.path, fmt="deepmd/npy", type_map=TYPE_MAP)
            n, natoms = len(d), d.get_natoms()
            p = predict(d)
            w = system_frame_weight(n, s.batch_size)
            total += w * np.sum((p["energy"].ravel() - d["energies"]) ** 2 / natoms
                                + np.mean((p["force"] - d["forces"].reshape(n, -1)) ** 2, axis=1)
                                + 0.5 * np.mean((p["virial"] - d["virials"].reshape(n, -1)) ** 2, axis=1) / natoms)
            norm += w * n
        return total / norm

    ours = deepmd_loss(lambda d: _model_outputs(fitted, d["coords"], d["cells"], d["atom_types"]))
    assert np.isclose(ours, state.normal.loss(theta), rtol=1e-8)
    stacked, labels = [], []
    for s in systems:
        d = dpdata.LabeledSystem(s.path, fmt="deepmd/npy", type_map=TYPE_MAP)
        rows = features.rows(d["coords"], d["cells"], d["atom_types"])
        w = np.sqrt(weights.of_frame(d.get_natoms(), True) * system_frame_weight(len(d), s.batch_size))
        for i in range(len(d)):
            a, y = frame_rows(rows, i, d, i, True)
            stacked.append(a * w[:, None])
            labels.append(y * w)
    best = linalg.lstsq(np.concatenate(stacked), np.concatenate(labels), lapack_driver="gelsd")[0]
    optimum = deepmd_loss(lambda d: _model_outputs(OutputLayer.of(se_a).with_params(se_a, best), d["coords"], d["cells"],
                                                   d["atom_types"]))
    assert optimum <= ours <= 1.02 * optimum
    original = deepmd_loss(lambda d: _model_outputs(se_a, d["coords"], d["cells"], d["atom_types"]))
    assert ours < 0.5 * original


def test_a_bootstrap_keeps_models_from_one_start_apart(se_a, tmp_path):
    counts = [multiplicity(1, 0, f"s@{i}") for i in range(2000)]
    assert abs(np.mean(counts) - 1) < 0.08 and counts == [multiplicity(1, 0, f"s@{i}") for i in range(2000)]
    assert counts != [multiplicity(1, 1, f"s@{i}") for i in range(2000)]
    systems = _systems(tmp_path, untrained_model(dict(SE_A, seed=7)), (12, 10))
    weights = LossWeights.of({})
    fits = []
    for model in range(3):
        state = FitState.begin(se_a)
        add_frames(state, systems, TYPE_MAP, weights, bootstrap=(1, model))
        fits.append(fit(state).mean)
    plain = FitState.begin(se_a)
    add_frames(plain, systems, TYPE_MAP, weights)
    # identical starts, different resamples: the models differ, by less than they differ from the start
    spread = np.std(fits, axis=0)
    assert spread.max() > 1e-6
    coords, cells, atype = frames(6, seed=11)
    rows = FeatureModel(se_a).rows(coords, cells, atype)
    devi = np.std([rows["force"] @ t for t in fits], axis=0).max(axis=1)
    assert np.all(devi > 0)


def test_only_the_output_layer_trainable_decides_exact():
    template = json.loads((ROOT / "examples/ag-au-emt-d3/config.json")
                          .read_text())["default_training_param"]
    assert only_output_layer_trainable(template) and exact_problem(template, "init_model", None) is None
    two = json.loads(json.dumps(template))
    two["model"]["fitting_net"]["trainable"] = [False, False, True, True]
    assert not only_output_layer_trainable(two) and "trainable" in exact_problem(two, "init_model", None)
    desc = json.loads(json.dumps(template))
    desc["model"]["descriptor"]["trainable"] = True
    assert not only_output_layer_trainable(desc)
    assert "scratch" in exact_problem(template, "scratch", None)
    huber = json.loads(json.dumps(template))
    huber["loss"]["use_huber"] = True
    assert "use_huber" in exact_problem(huber, "init_model", None)
    other = json.loads(json.dumps(template))
    other["model"]["descriptor"]["type"] = "loc_frame"
    assert "loc_frame" in exact_problem(other, "init_model", None)
    dipole = json.loads(json.dumps(template))
    dipole["model"]["fitting_net"]["type"] = "dipole"
    assert "'dipole'" in exact_problem(dipole, "init_model", None)
    assert "multi-task" in exact_problem(template, "finetune", "agau")


@pytest.mark.parametrize("changes, expected", [
    ({"train_style": "exact", "default_training_param": "two"}, "train_style \"exact\": a layer other than"),
    ({"train_style": "fast"}, "train_style: expected one of"),
])
def test_exact_where_it_cannot_run_is_refused_before_anything_runs(example_inputs, tmp_path, changes, expected):
    def edit(j):
        if changes.get("default_training_param") == "two":
            j["default_training_param"]["model"]["fitting_net"]["trainable"] = [False, False, True, True]
        j["train_style"] = changes["train_style"]

    config = example_config(tmp_path, edit=edit)
    proc = run_cli([config, "--check"])
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr


def test_check_says_which_training_runs(example_inputs, tmp_path):
    proc = run_cli([example_config(tmp_path), "--check"])
    assert proc.returncode == 0 and "exact output layer" in proc.stdout, proc.stdout + proc.stderr

    def sgd(j):
        j["default_training_param"]["model"]["fitting_net"]["trainable"] = [False, False, True, True]

    proc = run_cli([example_config(tmp_path, edit=sgd), "--check"])
    assert proc.returncode == 0 and "dp train" in proc.stdout, proc.stdout + proc.stderr
