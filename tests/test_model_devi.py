"""ModelDevi's function on the example's real models: deepmd-kit's definitions, batching-invariant."""

import numpy as np

from dflow_simplify.ops.data import LoopState, find_systems, load_system
from dflow_simplify.ops.model_devi import COLUMNS, compute_model_devi, load_models, read_model_devi, write_model_devi


def test_model_devi_matches_a_direct_computation(example, tmp_path):
    models = load_models(sorted((example / "models").glob("*/graph.pb")))
    roots = [str(example / "data" / "pick")]
    systems = {f"0/{s}": 100 for s in find_systems(roots[0])}
    ids = {k: [0, 3, 5, 7, 11, 42] for k in systems}
    devi = compute_model_devi(models, roots, ids, ["Ag", "Au"], batch_size=4)
    key = sorted(systems)[0]
    frame_ids, values = devi[key]
    assert frame_ids == ids[key] and values.shape == (6, len(COLUMNS))
    # independent: every model's forces and energies, deviation by hand
    sys = load_system(roots, key, ["Ag", "Au"], labeled=False).sub_system(ids[key])
    outs = [m.eval(sys["coords"].reshape(6, -1), sys["cells"].reshape(6, -1), sys["atom_types"]) for m in models]
    forces = np.array([o[1].reshape(6, -1, 3) for o in outs])
    energies = np.array([o[0].reshape(6) for o in outs]) / sys.get_natoms()
    f_dev = np.sqrt(((forces - forces.mean(0)) ** 2).mean(0).sum(-1)).max(-1)
    assert np.allclose(values[:, COLUMNS.index("max_devi_f")], f_dev, rtol=1e-6)
    assert np.allclose(values[:, COLUMNS.index("devi_e")], energies.std(0), rtol=1e-6)
    # batching does not change anything
    again = compute_model_devi(models, roots, ids, ["Ag", "Au"], batch_size=256)
    assert np.allclose(again[key][1], values)
    write_model_devi(tmp_path / "d.npz", devi)
    table = read_model_devi(tmp_path / "d.npz")
    assert len(table) == 12 and np.isclose(table[(key, 5)][0], f_dev[2])
    assert compute_model_devi(models, roots, LoopState.initial({}).pool, ["Ag", "Au"]) == {}
