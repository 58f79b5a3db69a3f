"""The FP engine interface and its registry.

An engine labels one frame: ``label(frame, workdir, params, files_dir) -> dpdata.LabeledSystem``. It keeps
the frame's own cell and coordinates and sets energy (eV), forces (eV/A) and, for periodic cells,
virial (eV). Engines that run an external code (`external.py`: CP2K, VASP, ...) write inputs into
`workdir`, run a command there and parse its output; in-process engines (dftd3, ase) just compute.
Each engine declares its `fp_params` with dargs, so that a config is checked before anything runs;
`files_dir` is the folder holding the input files the config named (pseudopotentials, templates), under
the names the config check gave them in fp_params.
"""

from __future__ import annotations

from typing import Callable

import dpdata
import numpy as np
from dargs import Argument


class FPTaskError(RuntimeError):
    """A task that did not give labels: its code failed, timed out or its output did not parse."""

    def __init__(self, reason: str, log_tail: list[str] | None = None):
        super().__init__(reason)
        self.log_tail = log_tail or []


class Engine:
    name: str = ""
    # True when the engine adds to the labels pick_data already has (dftd3 on top of PBE)
    needs_input_labels: bool = False
    # fp_params keys that name input files (a path or a list of paths) shipped to the RunFP steps
    file_params: tuple[str, ...] = ()

    @staticmethod
    def params_args() -> list[Argument]:
        return []

    @staticmethod
    def from_dpgen(jdata: dict) -> dict:
        """fp_params from DP-GEN's top-level keys (fp_incar, fp_pp_files, user_fp_params, ...)."""
        return {}

    def check(self, params: dict, type_map: list[str]) -> None:
        """Raise ValueError naming the fp_params key when `params` cannot work for `type_map`."""

    def label(self, frame: dpdata.System, workdir: str, params: dict, files_dir=None) -> dpdata.LabeledSystem:
        raise NotImplementedError


ENGINES: dict[str, type[Engine]] = {}


def register(name: str) -> Callable[[type[Engine]], type[Engine]]:
    def deco(cls: type[Engine]) -> type[Engine]:
        cls.name = name
        ENGINES[name] = cls
        return cls

    return deco


def get_engine(name: str) -> Engine:
    from . import abacus, ase_calc, cp2k, dftd3, gaussian, labeled, qe, vasp  # noqa: F401  (registration)

    if name not in ENGINES:
        raise KeyError(f"unknown fp_style {name!r}; available: {', '.join(sorted(ENGINES))}")
    return ENGINES[name]()


def available_engines() -> list[str]:
    get_engine("none")
    return sorted(ENGINES)


def labeled_frame(frame: dpdata.System, energy: float, forces: np.ndarray, virial: np.ndarray | None):
    """A one-frame LabeledSystem with the frame's own structure and the given labels."""
    data = {k: frame.data[k] for k in ("atom_names", "atom_numbs", "atom_types", "orig", "cells", "coords")}
    data["nopbc"] = frame.nopbc
    data["energies"] = np.array([energy], dtype=float)
    data["forces"] = np.asarray(forces, dtype=float).reshape(1, -1, 3)
    if virial is not None and not frame.nopbc:
        data["virials"] = np.asarray(virial, dtype=float).reshape(1, 3, 3)
    return dpdata.LabeledSystem(data=data)
