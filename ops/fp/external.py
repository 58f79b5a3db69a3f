"""Engines that run an external FP code: write inputs for one frame, run a command, parse the output.

A plugin subclasses `ExternalEngine` and provides `code_args()` (its own fp_params, dargs),
`write_inputs(frame, workdir, params, files_dir)` and `parse(workdir, frame, params)` returning
energy (eV), forces (eV/A, in the order of the frame written) and virial (eV) or None. The base class
sorts atoms by type before writing (POSCAR/POTCAR-style codes group them), runs the command with a
timeout, turns every failure into an `FPTaskError` with the log's tail, checks the parsed labels and
maps forces back onto the input frame, whose own cell and coordinates are kept.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
from pathlib import Path

import dpdata
import numpy as np
from dargs import Argument

from .base import Engine, FPTaskError, labeled_frame

LOG_NAME = "fp.log"
TAIL_LINES = 20


def tail(path: str | os.PathLike, n: int = TAIL_LINES) -> list[str]:
    try:
        with open(path, errors="replace") as f:
            return [line.rstrip("\n") for line in f.readlines()[-n:]]
    except OSError:
        return []


def run_command(command: str, workdir: Path, envs: dict | None, timeout: float | None) -> None:
    """Run `command` in `workdir` (shell syntax, e.g. `mpirun -n 4 vasp_std`), output to fp.log."""
    env = dict(os.environ)
    env.update({k: str(v) for k, v in (envs or {}).items()})
    log = workdir / LOG_NAME
    with open(log, "w") as out:
        proc = subprocess.Popen(command, shell=True, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: mpirun and its ranks
            proc.wait()
            raise FPTaskError(f"timed out after {timeout} s: {command}", tail(log)) from None
    if rc != 0:
        raise FPTaskError(f"command exited with code {rc}: {command}", tail(log))


def resolve(files_dir: str | os.PathLike | None, name: str) -> Path:
    """An input file the config named (staged under `files_dir` by the workflow) or an absolute path."""
    path = Path(files_dir, name) if files_dir is not None and not os.path.isabs(name) else Path(name)
    if not path.is_file():
        raise FPTaskError(f"input file {name} is missing in the RunFP step (looked for {path})")
    return path


def copy_input(files_dir, name: str, workdir: Path) -> str:
    """Copy a named input file (a pseudopotential, an orbital file) into the task folder; its file name."""
    src = resolve(files_dir, name)
    (workdir / src.name).write_bytes(src.read_bytes())
    return src.name


def kpoint_mesh(cell: np.ndarray, spacing: float | list[float]) -> list[int]:
    """ceil(2 pi |b_i| / spacing_i) k-points along each reciprocal vector (one spacing or one per axis)."""
    spacings = [spacing] * 3 if np.isscalar(spacing) else list(spacing)
    rec = np.linalg.inv(cell).T
    return [max(1, math.ceil(2 * math.pi * np.linalg.norm(rec[i]) / spacings[i])) for i in range(3)]


def present_elements(frame: dpdata.System) -> list[str]:
    """Element names of the frame's atoms, in type order (the order inputs are written in)."""
    return [n for n, c in zip(frame["atom_names"], frame["atom_numbs"]) if c > 0]


def sort_by_type(frame: dpdata.System) -> tuple[dpdata.System, np.ndarray]:
    """The frame with atoms grouped by type and without absent elements, and the permutation used."""
    perm = np.argsort(frame["atom_types"], kind="stable")
    out = frame.pick_atom_idx(perm)
    absent = [n for n, c in zip(out["atom_names"], out["atom_numbs"]) if c == 0]
    if absent:
        out = out.copy()
        out.remove_atom_names(absent)
    return out, perm


class ExternalEngine(Engine):
    default_command: str = ""
    output_name: str = LOG_NAME  # the file whose tail explains a parse failure

    @classmethod
    def params_args(cls) -> list[Argument]:
        return [
            Argument("command", str, optional=True, default=cls.default_command,
                     doc="shell command run in each task folder, e.g. 'mpirun -n 4 vasp_std'"),
            Argument("envs", dict, optional=True, default={"OMP_NUM_THREADS": "1"},
                     doc="environment variables of the command"),
            Argument("timeout", [int, float, type(None)], optional=True, default=None,
                     doc="seconds before a task is killed and recorded as failed"),
        ] + cls.code_args()

    @classmethod
    def code_args(cls) -> list[Argument]:
        return []

    def write_inputs(self, frame: dpdata.System, workdir: Path, params: dict, files_dir) -> None:
        raise NotImplementedError

    def parse(self, workdir: Path, frame: dpdata.System, params: dict):
        raise NotImplementedError

    def label(self, frame: dpdata.System, workdir: str, params: dict, files_dir=None) -> dpdata.LabeledSystem:
        work = Path(workdir)
        self.type_map = list(frame["atom_names"])  # frames are read with the config's type_map
        written, perm = sort_by_type(frame)
        self.write_inputs(written, work, params, files_dir)
        run_command(params["command"], work, params.get("envs"), params.get("timeout"))
        try:
            energy, forces, virial = self.parse(work, written, params)
            forces = np.asarray(forces, dtype=float).reshape(-1, 3)
            if forces.shape[0] != len(perm):
                raise ValueError(f"{forces.shape[0]} forces for {len(perm)} atoms")
            if not (np.isfinite(energy) and np.isfinite(forces).all()):
                raise ValueError("non-finite energy or forces")
        except FPTaskError:
            raise
        except Exception as exc:
            raise FPTaskError(f"output does not parse: {type(exc).__name__}: {exc}",
                              tail(work / self.output_name)) from None
        in_input_order = np.empty_like(forces)
        in_input_order[perm] = forces
        return labeled_frame(frame, float(energy), in_input_order, virial)


def first_frame(system: dpdata.LabeledSystem, natoms: int):
    """Energy, forces, virial of a parsed one-frame system, or an error saying why there is none."""
    if system.get_nframes() == 0:
        raise ValueError("no labeled frame in the output (SCF not converged or run incomplete?)")
    if system.get_natoms() != natoms:
        raise ValueError(f"output has {system.get_natoms()} atoms, the input {natoms}")
    virial = system["virials"][-1] if "virials" in system.data else None
    return system["energies"][-1], system["forces"][-1], virial
