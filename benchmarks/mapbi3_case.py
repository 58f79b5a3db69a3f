"""The MAPbI3 case of label_efficiency.py: DP-GEN's own SCAN frames, SCAN -> SCAN-D3(BJ) with the dftd3 engine.

benchmarks/data/mapbi3 (see its PROVENANCE.md): frames 0-99 of each system are pick_data (200 frames),
frames 100-119 are held out. The original models: four se_e2_a models trained here on pick_data at the
SCAN level, with DP-GEN's example's descriptor cutoffs, `sel`, `type_one_side` and loss, but smaller
networks than its GPU settings (CPU here). Transfer: descriptor and the first two fitting layers frozen,
as in the Ag-Au example. model_devi_f_trust_lo: the median of the original models' max force deviation on
pick_data (the rule stated in the README, not tuned to the result).
"""

from __future__ import annotations

import copy
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.originals import train_dp

DATA = Path(__file__).resolve().parent / "data" / "mapbi3"
TYPE_MAP = ["I", "Pb", "C", "N", "H"]
DESCRIPTOR = {"type": "se_e2_a", "sel": [20, 8, 8, 8, 48], "rcut_smth": 2.0, "rcut": 6.0, "neuron": [8, 16, 32],
              "axis_neuron": 4, "resnet_dt": False, "type_one_side": True}
LOSS = {"start_pref_e": 0.02, "limit_pref_e": 2, "start_pref_f": 1000, "limit_pref_f": 2, "start_pref_v": 0.0,
        "limit_pref_v": 0.0}


def split(dst: Path) -> tuple[Path, Path]:
    import dpdata

    pick, holdout = dst / "pick", dst / "holdout"
    if not pick.exists():
        for name in ("sys.000", "sys.001"):
            s = dpdata.LabeledSystem(str(DATA / name), fmt="deepmd/npy", type_map=TYPE_MAP)
            s[list(range(100))].to_deepmd_npy(str(pick / name), set_size=10**6)
            s[list(range(100, len(s)))].to_deepmd_npy(str(holdout / name), set_size=10**6)
    return pick, holdout


def train_original(work: Path, pick: Path, index: int, steps: int = 3000) -> Path:
    seed = index + 1
    inp = {"model": {"type_map": TYPE_MAP, "descriptor": {**DESCRIPTOR, "seed": seed},
                     "fitting_net": {"neuron": [32, 32, 32], "resnet_dt": True, "seed": seed}},
           "learning_rate": {"type": "exp", "start_lr": 0.002, "decay_steps": 200, "stop_lr": 5e-5}, "loss": LOSS,
           "training": {"numb_steps": steps, "seed": seed, "disp_freq": 500, "save_freq": steps,
                        "training_data": {"systems": sorted(str(p) for p in pick.iterdir()), "batch_size": 1}}}
    return train_dp(work / "models" / f"{index:03d}", inp)


def median_max_devi_f(models: list[Path], pick: Path) -> float:
    import dpdata

    from dflow_simplify.ops.data import find_systems
    from dflow_simplify.ops.model_devi import compute_model_devi, load_models

    ids = {f"0/{rel}": list(range(len(dpdata.System(str(pick / rel), fmt="deepmd/npy")))) for rel in find_systems(str(pick))}
    devi = compute_model_devi(load_models([m / "graph.pb" for m in models]), [str(pick)], ids, TYPE_MAP)
    return float(np.median(devi.quantities()["f"]))


def prepare(work: Path) -> dict:
    pick, holdout = split(work / "data")
    with ThreadPoolExecutor(2) as pool:
        models = list(pool.map(lambda i: train_original(work, pick, i), range(4)))
    dpgen = json.loads((DATA.parents[2] / "tests" / "data" / "mapbi3" / "simplify_example" / "simplify.json").read_text())
    cfg = {k: v for k, v in dpgen.items() if not k.startswith(("fp_", "_comment", "cvasp", "ratio_failed"))}
    cfg.pop("model_devi_activation_func", None)  # the original models are tanh throughout
    training = copy.deepcopy(dpgen["default_training_param"])
    training["model"]["descriptor"] = {**DESCRIPTOR, "trainable": False}
    training["model"]["fitting_net"] = {"neuron": [32, 32, 32], "resnet_dt": True, "trainable": [False, False, True, True]}
    training["loss"] = LOSS
    training["learning_rate"] = {"type": "exp", "start_lr": 0.001, "decay_steps": 100, "stop_lr": 1e-4}
    training["training"] = {"numb_steps": 400, "disp_freq": 100, "save_freq": 400, "training_data": {"batch_size": 1}}
    cfg.update(default_training_param=training, fp_style="dftd3", fp_params={"method": "scan", "damping": "d3bj"},
               labeled=False, training_init_model=True, init_pick_number=10, iter_pick_number=15,
               model_devi_f_trust_lo=round(median_max_devi_f(models, pick), 4), model_devi_f_trust_hi=100.0,
               sys_batch_size=[1], pick_data="data/pick")
    return {"pick": pick, "holdout": holdout, "models": models, "config": cfg}
