"""A similar material: Cu-Au frames made from the Ag-Au example's, to transfer its models to.

    python make_example.py   # data/ next to this file (and the Ag-Au example's models, made if missing)

data/pick/<formula>/     200 unlabeled Cu-Au frames: the Ag-Au example's pick frames with Cu in the place of Ag
                         and cells scaled by 0.91 (Cu's smaller lattice), made by `submit_simplify.py substitute`;
                         the run labels the frames it picks with EMT (fp_style ase)
data/holdout/<formula>/  the Ag-Au example's 40 held-out frames substituted the same way, labeled by EMT
config.json starts from the Ag-Au example's models with element_substitution {"Cu": "Ag"}.
"""

import subprocess
import sys
from pathlib import Path

import dpdata
from ase.calculators.emt import EMT

HERE = Path(__file__).resolve().parent
AGAU = HERE.parent / "ag-au-emt-d3"
SCALE = "0.91"


def substitute(source: Path, out: Path) -> None:
    if not out.exists():
        subprocess.run([sys.executable, str(HERE.parents[1] / "submit_simplify.py"), "substitute", str(source), str(out),
                        "--substitute", "Cu=Ag", "--scale", SCALE], check=True)


def label_emt(root: Path) -> None:
    """Label every system under `root` in place with ASE's EMT (the new material's reference here)."""
    for system in sorted(p for p in root.iterdir() if p.is_dir()):
        if not any(system.glob("set.*/energy.npy")):
            s = dpdata.System(str(system), fmt="deepmd/npy")
            s.predict(calculator=EMT(), driver="ase").to("deepmd/npy", str(system), set_size=10**6)


if __name__ == "__main__":
    subprocess.run([sys.executable, str(AGAU / "make_example.py")], check=True)
    substitute(AGAU / "data" / "pick", HERE / "data" / "pick")
    substitute(AGAU / "data" / "holdout", HERE / "data" / "holdout")
    label_emt(HERE / "data" / "holdout")
    print("example ready:", HERE)
