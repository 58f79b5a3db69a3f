"""Make the Ag-Au example: EMT-labeled frames (the old level) and four original DeePMD models.

    python make_example.py            # data/ and models/ next to this file; skips what exists
    python make_example.py --data-only  # data/ only (seconds)

data/pick/<formula>/   200 frames, 32-atom fcc Ag-Au cells, strained and rattled, labeled by ASE EMT
data/holdout/<formula>/ 40 more frames made the same way (never picked), for testing
models/00{0..3}/       four se_e2_a models trained on data/pick at the EMT level, seeds 1..4
The new level is EMT + D3(BJ, PBE parameters); config.json relabels with the `dftd3` engine.
"""

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dpdata
import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT

HERE = Path(__file__).resolve().parent
TYPE_MAP = ["Ag", "Au"]


def make_frames(n_frames: int, n_au: int, rng: np.random.Generator, repeat: int = 2,
                label=None) -> dpdata.LabeledSystem:
    """`n_frames` EMT-labeled fcc cells (`repeat`^3 conventional cells) with `n_au` Au atoms, strained and
    rattled; `label(frame)`, when given, relabels each frame."""
    frames = None
    for _ in range(n_frames):
        atoms = bulk("Ag", "fcc", a=4.12, cubic=True) * (repeat, repeat, repeat)
        symbols = np.array(["Ag"] * len(atoms))
        symbols[rng.choice(len(atoms), n_au, replace=False)] = "Au"
        atoms.set_chemical_symbols(list(symbols))
        strain = np.eye(3) + rng.uniform(-0.04, 0.04, (3, 3)) * np.array([[1, .3, .3], [.3, 1, .3], [.3, .3, 1]])
        atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
        atoms.rattle(stdev=rng.uniform(0.02, 0.16), seed=int(rng.integers(1 << 30)))
        atoms.calc = EMT()
        frame = dpdata.LabeledSystem(atoms, fmt="ase/structure", type_map=TYPE_MAP)
        frame = label(frame) if label else frame
        frames = frame if frames is None else frames + frame
    return frames


def make_data(root: Path, n_per_system: int, seed: int) -> None:
    if root.exists():
        return
    rng = np.random.default_rng(seed)
    multi = dpdata.MultiSystems(type_map=TYPE_MAP)
    for n_au in (8, 16):
        multi.append(make_frames(n_per_system, n_au, rng))
    multi.to_deepmd_npy(str(root), set_size=10**6)


def train_input(seed: int) -> dict:
    return {
        "model": {
            "type_map": TYPE_MAP,
            "descriptor": {"type": "se_e2_a", "sel": [40, 40], "rcut_smth": 0.5, "rcut": 4.8,
                           "neuron": [8, 16, 32], "axis_neuron": 4, "resnet_dt": False, "seed": seed},
            "fitting_net": {"neuron": [32, 32, 32], "resnet_dt": True, "seed": seed},
        },
        "learning_rate": {"type": "exp", "start_lr": 0.002, "decay_steps": 200, "stop_lr": 5e-5},
        "loss": {"start_pref_e": 0.02, "limit_pref_e": 1, "start_pref_f": 1000, "limit_pref_f": 1,
                 "start_pref_v": 0.0, "limit_pref_v": 0.0},
        "training": {"numb_steps": 3000, "seed": seed, "disp_freq": 500, "save_freq": 3000,
                     "training_data": {"systems": sorted(str(p) for p in (HERE / "data/pick").iterdir()),
                                       "batch_size": "auto"}},
    }


def train_model(index: int) -> None:
    work = HERE / "models" / ("%03d" % index)
    if (work / "graph.pb").exists():
        return
    work.mkdir(parents=True, exist_ok=True)
    (work / "input.json").write_text(json.dumps(train_input(index + 1), indent=2))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DP_INTRA_OP_PARALLELISM_THREADS": "1",
           "DP_INTER_OP_PARALLELISM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(work / "train.log", "w") as log:
        for cmd in (["train", "input.json"], ["freeze", "-o", "graph.pb"]):
            subprocess.run([sys.executable, "-m", "deepmd", "--tf", *cmd], cwd=work, env=env,
                           stdout=log, stderr=subprocess.STDOUT, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2, help="models trained at once")
    parser.add_argument("--data-only", action="store_true", help="make the data, not the models")
    args = parser.parse_args()
    make_data(HERE / "data/pick", 100, seed=2024)
    make_data(HERE / "data/holdout", 20, seed=7)
    if args.data_only:
        print("example data ready:", HERE / "data")
        return
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(train_model, range(4)))
    print("example ready:", HERE)


if __name__ == "__main__":
    main()
