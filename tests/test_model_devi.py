"""ModelDevi's functions on the example's real models (slow): deepmd-kit's definitions, batching-invariant; DP-GEN's
true error as deepmd-kit's `--real_error` computes it; descriptor features for the candidates. And (fast) how
many frames an evaluation call takes."""

from types import SimpleNamespace

import numpy as np
import pytest

from dflow_simplify.ops.classified import classify_shard, read_classified, write_classified
from dflow_simplify.ops.data import find_systems, load_system
from dflow_simplify.ops.loop_state import LoopState
from dflow_simplify.ops.model_devi import (
    COLUMNS,
    FEATURE_TRANSFER_DIM,
    FRAMES_PER_CALL,
    compute_model_devi,
    descriptor_features,
    frames_per_call,
    load_models,
)
from dflow_simplify.ops.selection import TrustLevels

TYPE_MAP = ["Ag", "Au"]


def _setup(example):
    models = load_models(sorted((example / "models").glob("*/graph.pb")))
    roots = [str(example / "data" / "pick")]
    systems = sorted(f"0/{s}" for s in find_systems(roots[0]))
    return models, roots, {k: [0, 3, 5, 7, 11, 42] for k in systems}


@pytest.mark.slow  # evaluates real models
def test_model_devi_matches_a_direct_computation(example, tmp_path):
    models, roots, ids = _setup(example)
    devi = compute_model_devi(models, roots, ids, TYPE_MAP, batch_size=4)
    key = sorted(ids)[0]
    rows = [i for i, (k, _) in enumerate(devi.keys) if k == key]
    values = devi.values[rows]
    assert [f for k, f in devi.keys if k == key] == ids[key] and values.shape == (6, len(COLUMNS))
    assert devi.true_error is None  # not asked for
    # independent: every model's forces and energies, deviation by hand
    sys = load_system(roots, key, TYPE_MAP, labeled=False).sub_system(ids[key])
    outs = [m.eval(sys["coords"].reshape(6, -1), sys["cells"].reshape(6, -1), sys["atom_types"]) for m in models]
    forces = np.array([o[1].reshape(6, -1, 3) for o in outs])
    energies = np.array([o[0].reshape(6) for o in outs]) / sys.get_natoms()
    f_dev = np.sqrt(((forces - forces.mean(0)) ** 2).mean(0).sum(-1)).max(-1)
    assert np.allclose(values[:, COLUMNS.index("max_devi_f")], f_dev, rtol=1e-6)
    assert np.allclose(values[:, COLUMNS.index("devi_e")], energies.std(0), rtol=1e-6)
    # batching does not change anything
    again = compute_model_devi(models, roots, ids, TYPE_MAP, batch_size=256)
    assert again.keys == devi.keys and np.allclose(again.values, devi.values)
    # what SelectConfs gets of it: every frame a candidate here, its deviation kept (to float32)
    write_classified(tmp_path / "d.npz", classify_shard(devi, TrustLevels(f_lo=0.0, f_hi=1e9)))
    back = read_classified(tmp_path / "d.npz")
    assert back.n_pool == len(back.candidates) == 12 and back.n_accurate == 0 and not back.failed
    assert np.isclose(back.values["f"][back.candidates.index((key, 5))], f_dev[2], rtol=1e-6)
    assert compute_model_devi(models, roots, LoopState.initial({}).pool, TYPE_MAP).keys == []


@pytest.mark.slow  # evaluates real models
def test_true_error_is_deepmd_kits_real_error(example, tmp_path):
    """The same columns as deepmd-kit's calc_model_devi with real_data (what `dp model-devi --real_error`,
    DP-GEN's true error, runs), against pick_data's labels."""
    from deepmd.infer.model_devi import calc_model_devi

    models, roots, ids = _setup(example)
    devi = compute_model_devi(models, roots, ids, TYPE_MAP, true_error=True)
    for key in ids:
        s = load_system(roots, key, TYPE_MAP, labeled=True).sub_system(ids[key])
        natoms = s.get_natoms()
        real = {"energy": s["energies"].reshape(-1, 1) / natoms, "force": s["forces"],
                "virial": s["virials"].reshape(-1, 9) / natoms}
        ref = calc_model_devi(s["coords"].reshape(6, -1), s["cells"].reshape(6, -1), s["atom_types"], models,
                              real_data=real)[:, 1:]
        rows = [i for i, (k, _) in enumerate(devi.keys) if k == key]
        assert np.allclose(devi.true_error[rows], ref, rtol=1e-5, atol=1e-8)
    trust = TrustLevels(f_lo=1e9, f_hi=1e9, f_err_lo=0.0, f_err_hi=1e9)  # every frame a candidate by true error
    write_classified(tmp_path / "d.npz", classify_shard(devi, trust))
    back = read_classified(tmp_path / "d.npz")
    assert set(back.values) == {"f", "e", "f_err", "e_err"} and len(back.candidates) == 12
    order = [devi.keys.index(k) for k in back.candidates]
    assert np.allclose(back.values["f_err"], devi.true_error[order, COLUMNS.index("max_devi_f")], rtol=1e-6)


@pytest.mark.slow  # evaluates real models
def test_descriptor_features_are_compact_and_separate_compositions(example):
    models, roots, ids = _setup(example)
    feats = descriptor_features(models[0], roots, ids, TYPE_MAP, batch_size=4)
    assert len(feats) == 12
    assert all(v.ndim == 1 and v.dtype == np.float32 and v.size <= FEATURE_TRANSFER_DIM for v in feats.values())
    # the two systems (Ag24Au8, Ag16Au16) are further apart than frames within one system
    keys = sorted(ids)
    a = np.array([feats[(keys[0], i)] for i in ids[keys[0]]])
    b = np.array([feats[(keys[1], i)] for i in ids[keys[1]]])
    within = np.mean([np.linalg.norm(m[i] - m[j]) for m in (a, b) for i in range(len(m)) for j in range(i)])
    between = np.mean([np.linalg.norm(x - y) for x in a for y in b])
    assert between > 2 * within


def _run_model_devi_op(example, tmp_path, ids, **select):
    """ModelDevi's OP on the pool `ids` (shard 0, one shard) with SelectParams(**select); its classified output."""
    from dflow.python import OPIO

    from dflow_simplify.ops.model_devi import ModelDevi
    from dflow_simplify.ops.selection import SelectParams

    LoopState(systems={k: 50 for k in ids}, pool=ids).dump(tmp_path / "state.json")
    params = SelectParams(init_pick_number=2, iter_pick_number=2, type_map=TYPE_MAP, **select)
    out = ModelDevi().execute(OPIO({
        "models": sorted((example / "models").glob("*/graph.pb")), "pick_data": [example / "data" / "pick"],
        "pick_data_paths": [], "state": tmp_path / "state.json", "probe_data": None, "type_map": TYPE_MAP,
        "batch_size": 0, "select_params": params.as_dict(), "shard_index": 0, "shard_size": 1000}))
    return read_classified(out["model_devi"])


@pytest.mark.slow  # evaluates real models
@pytest.mark.parametrize("style,with_features", [("max_devi", False), ("cluster_max", True), ("diverse", True)])
def test_model_devi_op_hands_features_over_for_the_styles_that_need_them(example, tmp_path, monkeypatch, style,
                                                                          with_features):
    monkeypatch.chdir(tmp_path)
    _, _, ids = _setup(example)
    back = _run_model_devi_op(example, tmp_path, ids, trust=TrustLevels(f_lo=0.0, f_hi=10.0), select_style=style)
    assert len(back.candidates) == 12  # every frame of the pool, f_lo 0
    if with_features:
        assert back.features.shape[0] == 12 and back.features.shape[1] <= FEATURE_TRANSFER_DIM
    else:
        assert back.features is None


@pytest.mark.slow  # evaluates real models
def test_model_devi_op_classifies_by_the_relative_deviation_when_asked(example, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    models, roots, ids = _setup(example)
    f = COLUMNS.index("max_devi_f")
    absolute = compute_model_devi(models, roots, ids, TYPE_MAP).values[:, f]
    relative = compute_model_devi(models, roots, ids, TYPE_MAP, relative_f=0.5).values[:, f]
    assert np.all(relative < absolute / 0.5)  # each atom's deviation over |mean force| + 0.5
    lo = float(np.median(relative))
    back = _run_model_devi_op(example, tmp_path, ids, trust=TrustLevels(f_lo=lo, f_hi=10.0), relative_f_epsilon=0.5)
    n_candidates = len(back.candidates)
    assert n_candidates == int(np.sum(relative >= lo)) != int(np.sum(absolute >= lo))


def test_model_devi_batch_follows_the_device_unless_set():
    def model(gpu: bool):
        return SimpleNamespace(deep_eval=SimpleNamespace(auto_batch_size=SimpleNamespace(is_gpu_available=lambda: gpu)))

    assert frames_per_call([model(True)]) == FRAMES_PER_CALL["gpu"] > frames_per_call([model(False)]) == 256
    assert frames_per_call([model(True)], 32) == 32 and frames_per_call([], 0) == 256


def test_relative_force_deviation_is_deepmd_kits():
    """DPGEN2's relative_f_epsilon: each atom's force deviation over |mean force| + epsilon (deepmd-kit's
    relative model deviation), for the deviation only; the true error stays absolute."""
    from dflow_simplify.ops.model_devi import deviation_columns

    fs = np.zeros((2, 1, 2, 3))  # 2 models, 1 frame, 2 atoms
    fs[0, 0, 0], fs[1, 0, 0] = [1.0, 0, 0], [3.0, 0, 0]  # atom 0: std 1, mean force 2
    fs[1, 0, 1] = [0, 0, 0.2]  # atom 1: std 0.1, mean force 0.1
    es, vs = np.zeros((2, 1)), np.zeros((2, 1, 9))
    f = COLUMNS.index("max_devi_f")
    assert deviation_columns(es, fs, vs, 2)[0, f] == pytest.approx(1.0)
    rel = deviation_columns(es, fs, vs, 2, relative_f=1.0)[0]
    assert rel[f] == pytest.approx(1 / 3)  # atom 0: 1 / (2 + 1), above atom 1's 0.1 / 1.1
    assert rel[COLUMNS.index("min_devi_f")] == pytest.approx(0.1 / 1.1)
    real = (np.zeros(1), np.zeros((1, 2, 3)), np.zeros((1, 9)))
    err = deviation_columns(es, fs, vs, 2, real=real, relative_f=1.0)[0, f]
    assert err == pytest.approx(np.sqrt((1 + 9) / 2))  # RMS over models of atom 0's error, absolute

