"""The heterogeneous case of benchmarks/selection.py: a pool like a DP-GEN collection, where selection can matter.

Ag-Au, made here with ASE; old level EMT, new level EMT + D3(BJ, PBE) (the `dftd3` engine), a change that is
not uniform across populations (surface atoms have fewer neighbours, compressed cells more):

  population   pick_data  held out  what
  bulk            280        30     2x2x2 fcc cells (32 atoms), x_Au 0.25 / 0.5 / 0.75, strain +-1.5%, rattle 0.05 A
  slab             48        30     fcc(100) slabs, 2x2x6 (24 atoms), 10 A vacuum, x_Au 0.5, rattle 0.05 A
  compressed       36        30     bulk x_Au 0.5 at 94% of the lattice constant, rattle 0.05 A
  hot              36        30     bulk x_Au 0.5, rattle 0.20 A

Original models: four se_e2_a models trained on pick_data at the old level (EMT), 20000 steps each; their
error on the held-out frames is reported at the old level (their own accuracy) and the new level.
pick_data is handed to the loop labeled at the new level (labeled mode: labeling costs nothing here, the
frames counted are what a DFT user would pay for).
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.originals import train_dp

TYPE_MAP = ["Ag", "Au"]
POPULATIONS = {"bulk": 280, "slab": 48, "compressed": 36, "hot": 36}
HOLDOUT_PER_POPULATION = 30
A0 = 4.085  # between EMT's Ag and Au lattice constants
# small enough for 2 CPU cores (~0.01 s/step): the 2nd neighbour shell inside rcut, sel with margin for hot frames
DESCRIPTOR = {"type": "se_e2_a", "sel": [32, 32], "rcut_smth": 1.5, "rcut": 4.5, "neuron": [8, 16, 32],
              "axis_neuron": 4, "resnet_dt": False}
FITTING = {"neuron": [32, 32, 32], "resnet_dt": True}
LOSS = {"start_pref_e": 0.02, "limit_pref_e": 1, "start_pref_f": 1000, "limit_pref_f": 1,
        "start_pref_v": 0.0, "limit_pref_v": 0.0}
ORIGINAL_STEPS = 20000


def _atoms(population: str, rng: np.random.Generator, x_au: float):
    from ase.build import bulk, fcc100

    if population == "slab":
        atoms = fcc100("Ag", size=(2, 2, 6), a=A0, vacuum=5.0)
        atoms.pbc = True
    else:
        atoms = bulk("Ag", "fcc", a=A0 * (0.94 if population == "compressed" else 1.0), cubic=True) * (2, 2, 2)
        strain = np.eye(3) + rng.uniform(-0.015, 0.015, (3, 3)) * np.array([[1, .3, .3], [.3, 1, .3], [.3, .3, 1]])
        atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
    symbols = np.array(["Ag"] * len(atoms))
    symbols[rng.choice(len(atoms), int(round(x_au * len(atoms))), replace=False)] = "Au"
    atoms.set_chemical_symbols(list(symbols))
    atoms.rattle(stdev=0.2 if population == "hot" else 0.05, seed=int(rng.integers(1 << 30)))
    return atoms


def _frames(population: str, n: int, rng: np.random.Generator):
    """(x_Au, frames labeled by EMT) per composition of the population."""
    import dpdata
    from ase.calculators.emt import EMT

    compositions = (0.25, 0.5, 0.75) if population == "bulk" else (0.5,)
    out = {}
    for k, x in enumerate(compositions):
        m = n // len(compositions) + (1 if k < n % len(compositions) else 0)
        frames = None
        for _ in range(m):
            atoms = _atoms(population, rng, x)
            atoms.calc = EMT()
            f = dpdata.LabeledSystem(atoms, fmt="ase/structure", type_map=TYPE_MAP)
            frames = f if frames is None else frames + f
        out[f"{population}-x{int(x * 100):02d}"] = frames
    return out


def make_data(root: Path, seed: int = 2026) -> None:
    """root/{pick-old,holdout-old}/<population-composition>/: EMT labels."""
    if (root / "holdout-old").exists():
        return
    rng = np.random.default_rng(seed)
    for population, n in POPULATIONS.items():
        for name, frames in _frames(population, n, rng).items():
            frames.to_deepmd_npy(str(root / "pick-old" / name), set_size=10**6)
        for name, frames in _frames(population, HOLDOUT_PER_POPULATION, rng).items():
            frames.to_deepmd_npy(str(root / "holdout-old" / name), set_size=10**6)


def train_original(work: Path, pick: Path, index: int) -> Path:
    seed = index + 1
    inp = {"model": {"type_map": TYPE_MAP, "descriptor": {**DESCRIPTOR, "seed": seed},
                     "fitting_net": {**FITTING, "seed": seed}},
           "learning_rate": {"type": "exp", "start_lr": 0.002, "decay_steps": 500, "stop_lr": 1e-5}, "loss": LOSS,
           "training": {"numb_steps": ORIGINAL_STEPS, "seed": seed, "disp_freq": 1000, "save_freq": ORIGINAL_STEPS,
                        "training_data": {"systems": sorted(str(p) for p in pick.iterdir()), "batch_size": "auto"}}}
    return train_dp(work / "models" / f"{index:03d}", inp)


def population_of(system_name: str) -> str:
    return system_name.split("-", 1)[0]


def transfer_config() -> dict:
    """The loop's settings (fixed before any run; the rules are in selection.py's docstring)."""
    training = {
        "model": {"type_map": TYPE_MAP, "descriptor": {**DESCRIPTOR, "trainable": False},
                  "fitting_net": {**FITTING, "trainable": [False, False, True, True]}},
        "learning_rate": {"type": "exp", "start_lr": 0.001, "decay_steps": 60, "stop_lr": 1e-4},
        "loss": {"start_pref_e": 0.2, "limit_pref_e": 1, "start_pref_f": 100, "limit_pref_f": 1,
                 "start_pref_v": 0, "limit_pref_v": 0},
        "training": {"numb_steps": 600, "disp_freq": 200, "save_freq": 600, "training_data": {"batch_size": "auto"}},
    }
    return {"type_map": TYPE_MAP, "labeled": True, "fp_style": "none", "numb_models": 4,
            "training_init_model": True, "train_backend": "tensorflow", "init_pick_number": 20,
            "iter_pick_number": 20, "model_devi_f_trust_hi": 10.0, "pick_seed": 1, "stop_iter": 5,
            "default_training_param": copy.deepcopy(training), "step_configs": {"run_fp": {"group_size": 20}}}


def prepare(work: Path) -> dict:
    """Data, originals; pick_data and the held-out frames at the new level are made by the driver."""
    make_data(work / "data")
    pick_old = work / "data" / "pick-old"
    with ThreadPoolExecutor(2) as pool:
        models = list(pool.map(lambda i: train_original(work, pick_old, i), range(4)))
    return {"pick_old": pick_old, "holdout_old": work / "data" / "holdout-old", "models": models,
            "config": transfer_config()}
