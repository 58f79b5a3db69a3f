"""`dftd3`: new label = existing label + Grimme's D3 (energy, forces, virial) from simple-dftd3.

This is the seed's route from a functional to the same functional with D3, e.g. PBE -> PBE-D3(BJ).
"""

from __future__ import annotations

import dpdata
import numpy as np
from ase.data import atomic_numbers
from ase.units import Bohr, Hartree
from dargs import Argument

from .base import Engine, labeled_frame, register

DAMPINGS = {
    "d3bj": "RationalDampingParam",
    "d3zero": "ZeroDampingParam",
    "d3bjm": "ModifiedRationalDampingParam",
    "d3zerom": "ModifiedZeroDampingParam",
    "d3op": "OptimizedPowerDampingParam",
}


def d3_correction(symbols, positions, cell, pbc: bool, method: str, damping: str, atm: bool = False,
                  cutoff: dict | None = None):
    """D3 energy (eV), forces (eV/A) and virial (eV, deepmd convention: -dE/d(strain))."""
    from dftd3 import interface

    numbers = np.array([atomic_numbers[s] for s in symbols])
    model = interface.DispersionModel(
        numbers, np.asarray(positions) / Bohr,
        np.asarray(cell) / Bohr if pbc else None,
        np.array([True, True, True]) if pbc else None,
    )
    if cutoff:
        model.set_realspace_cutoff(cutoff.get("disp2", 60.0), cutoff.get("disp3", 40.0), cutoff.get("cn", 40.0))
    param = getattr(interface, DAMPINGS[damping])(method=method, atm=atm)
    res = model.get_dispersion(param, grad=True)
    energy = float(res["energy"]) * Hartree
    forces = -np.asarray(res["gradient"]) * Hartree / Bohr
    virial = -np.asarray(res["virial"]) * Hartree if pbc else None
    return energy, forces, virial


@register("dftd3")
class DFTD3(Engine):
    needs_input_labels = True

    @staticmethod
    def params_args() -> list[Argument]:
        return [
            Argument("method", str, optional=True, default="pbe", doc="functional whose D3 parameters are used"),
            Argument("damping", str, optional=True, default="d3bj", doc="one of " + ", ".join(DAMPINGS)),
            Argument("atm", bool, optional=True, default=False, doc="add the three-body ATM term"),
            Argument("realspace_cutoff", dict, optional=True, default=None,
                     doc="cutoffs in Bohr: {disp2, disp3, cn} (library defaults 60, 40, 40)"),
        ]

    def check(self, params: dict, type_map: list[str]) -> None:
        damping, method = params.get("damping", "d3bj"), params.get("method", "pbe")
        if damping not in DAMPINGS:
            raise ValueError(f"damping: expected one of {list(DAMPINGS)}, got {damping!r}")
        from dftd3 import interface

        try:  # the library's own table says which functionals it has parameters for
            getattr(interface, DAMPINGS[damping])(method=method, atm=params.get("atm", False))
        except Exception as e:
            raise ValueError(f"method: simple-dftd3 has no {damping} parameters for {method!r} ({e})") from None
        unknown = set(params.get("realspace_cutoff") or {}) - {"disp2", "disp3", "cn"}
        if unknown:
            raise ValueError(f"realspace_cutoff: unknown key(s) {sorted(unknown)}; expected disp2, disp3, cn")
        missing = [e for e in type_map if e not in atomic_numbers]
        if missing:
            raise ValueError(f"type_map: {missing} are no element symbols; D3 needs the elements")

    def label(self, frame: dpdata.System, workdir: str, params: dict, files_dir=None) -> dpdata.LabeledSystem:
        symbols = [frame["atom_names"][t] for t in frame["atom_types"]]
        e, f, v = d3_correction(symbols, frame["coords"][0], frame["cells"][0], not frame.nopbc,
                                params.get("method", "pbe"), params.get("damping", "d3bj"),
                                params.get("atm", False), params.get("realspace_cutoff"))
        old_v = frame["virials"][0] if "virials" in frame.data else None
        new_v = None if v is None or old_v is None else old_v + v
        return labeled_frame(frame, frame["energies"][0] + e, frame["forces"][0] + f, new_v)
