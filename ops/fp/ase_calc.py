"""`ase`: label with any ASE calculator, by short name or "module:Class", with keyword arguments."""

from __future__ import annotations

import importlib

import dpdata
from dargs import Argument

from .base import Engine, labeled_frame, register

SHORT_NAMES = {
    "emt": "ase.calculators.emt:EMT",
    "lj": "ase.calculators.lj:LennardJones",
    "morse": "ase.calculators.morse:MorsePotential",
}


def make_calculator(name: str, kwargs: dict | None = None):
    target = SHORT_NAMES.get(name.lower(), name)
    if ":" not in target:
        raise ValueError(f"fp_params.calculator {name!r}: expected one of {sorted(SHORT_NAMES)} or 'module:Class'")
    module, cls = target.split(":", 1)
    return getattr(importlib.import_module(module), cls)(**(kwargs or {}))


def ase_labels(atoms, calculator):
    """Energy (eV), forces (eV/A), virial (eV) of ASE atoms; virial = -stress * volume for periodic cells."""
    atoms.calc = calculator
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    virial = None
    if atoms.pbc.all():
        virial = -atoms.get_stress(voigt=False) * atoms.get_volume()
    return energy, forces, virial


@register("ase")
class ASECalculator(Engine):
    @staticmethod
    def params_args() -> list[Argument]:
        return [
            Argument("calculator", str, doc="ASE calculator: " + ", ".join(SHORT_NAMES) + " or 'module:Class'"),
            Argument("kwargs", dict, optional=True, default={}, doc="keyword arguments of the calculator"),
        ]

    def label(self, frame: dpdata.System, workdir: str, params: dict, files_dir=None) -> dpdata.LabeledSystem:
        atoms = frame.to("ase/structure")[0]
        e, f, v = ase_labels(atoms, make_calculator(params["calculator"], params.get("kwargs")))
        return labeled_frame(frame, e, f, v)
