"""Make the Ag-Au CP2K example's pick data: 12 small (4-atom) fcc Ag2Au2 cells, strained and rattled.

    python make_example.py      # data/pick next to this file, and the Ag-Au EMT example's models

The new level of theory is CP2K PBE (SZV basis, low cutoff: a few seconds per frame on one core);
the starting models are two of the Ag-Au EMT example's (examples/ag-au-emt-d3, made if missing).
"""

import subprocess
import sys
from pathlib import Path

import dpdata
import numpy as np
from ase.build import bulk

HERE = Path(__file__).resolve().parent


def make_pick(root: Path, n_frames: int = 12, seed: int = 7) -> None:
    if root.exists():
        return
    rng = np.random.default_rng(seed)
    frames = None
    for _ in range(n_frames):
        atoms = bulk("Ag", "fcc", a=4.12, cubic=True)
        atoms.set_chemical_symbols(["Ag", "Au", "Ag", "Au"])
        strain = np.eye(3) + np.diag(rng.uniform(-0.03, 0.03, 3))
        atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
        atoms.rattle(stdev=rng.uniform(0.02, 0.15), seed=int(rng.integers(1 << 30)))
        frame = dpdata.System(atoms, fmt="ase/structure", type_map=["Ag", "Au"])
        frames = frame if frames is None else frames + frame
    frames.to("deepmd/npy", str(root / "Ag2Au2"), set_size=10**6)


if __name__ == "__main__":
    subprocess.run([sys.executable, str(HERE.parent / "ag-au-emt-d3" / "make_example.py")], check=True)
    make_pick(HERE / "data" / "pick")
    print("example ready:", HERE)
