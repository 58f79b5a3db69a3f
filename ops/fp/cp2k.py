"""`cp2k`: CP2K (Quickstep). Input from DP-GEN's `user_fp_params` (a nested dict) or an input template
file (`external_input_path`); the frame's cell and coordinates go into FORCE_EVAL/SUBSYS.

The output parser is ours and small: dpdata's `cp2k/output` does not read the stress CP2K 2023+ prints
(`STRESS| Analytical stress tensor [GPa]`). Energy is read in Hartree, forces in Hartree/Bohr, stress in
GPa (positive = compressive, as VASP's); virial = stress * volume, deepmd's sign convention.
"""

from __future__ import annotations

import re
from pathlib import Path

import dpdata
import numpy as np
from dargs import Argument
from dpdata.unit import EnergyConversion, ForceConversion, PressureConversion

from .base import register
from .external import ExternalEngine, resolve

HARTREE = EnergyConversion("hartree", "eV").value()
HARTREE_PER_BOHR = ForceConversion("hartree/bohr", "eV/angstrom").value()
GPA = PressureConversion("GPa", "eV/angstrom^3").value()

INPUT, OUTPUT = "input.inp", "output"
ENERGY_RE = re.compile(r"ENERGY\| Total FORCE_EVAL \( \w+ \) energy [\[(]a\.u\.[\])]:\s+(\S+)")


def render_section(name: str, body, indent: int = 0) -> list[str]:
    """A CP2K section from DP-GEN's dict form: keys are keywords or subsections, '_' is the section's
    own parameter, a list of dicts repeats a section (e.g. KIND)."""
    if isinstance(body, list):
        return [line for item in body for line in render_section(name, item, indent)]
    pad = "  " * indent
    head = f"{pad}&{name}" + (f" {body['_']}" if "_" in body else "")
    lines = [head]
    for key, value in body.items():
        if key == "_":
            continue
        if isinstance(value, dict) or (isinstance(value, list) and value and isinstance(value[0], dict)):
            lines += render_section(key, value, indent + 1)
        else:
            text = " ".join(map(str, value)) if isinstance(value, list) else str(value)
            lines.append(f"{pad}  {key} {text}")
    lines.append(f"{pad}&END {name}")
    return lines


def subsys_blocks(frame: dpdata.System) -> list[str]:
    lines = ["    &CELL"]
    if frame.nopbc:
        lines.append("      PERIODIC NONE")
    cell = frame["cells"][0] if not frame.nopbc else np.eye(3) * 100.0
    lines += [f"      {ax} {v[0]:.10f} {v[1]:.10f} {v[2]:.10f}" for ax, v in zip("ABC", cell)]
    lines += ["    &END CELL", "    &COORD"]
    for t, xyz in zip(frame["atom_types"], frame["coords"][0]):
        lines.append(f"      {frame['atom_names'][t]} {xyz[0]:.10f} {xyz[1]:.10f} {xyz[2]:.10f}")
    lines.append("    &END COORD")
    return lines


def insert_structure(template: str, frame: dpdata.System) -> str:
    """The template with the frame's &CELL and &COORD put at the top of FORCE_EVAL/SUBSYS."""
    if re.search(r"^\s*&(CELL|COORD)\b", template, re.M | re.I):
        raise ValueError("the CP2K template must not hold &CELL or &COORD: each frame's own are inserted")
    match = re.search(r"^\s*&SUBSYS\b.*$", template, re.M | re.I)
    if match is None:
        raise ValueError("the CP2K template has no &SUBSYS section (its &KIND blocks go there)")
    return template[:match.end()] + "\n" + "\n".join(subsys_blocks(frame)) + template[match.end():]


def input_from_dict(params: dict, periodic: bool) -> str:
    """DP-GEN's user_fp_params dict; forces (and, for periodic cells, the stress) are always printed."""
    sections = {k: dict(v) if isinstance(v, dict) else v for k, v in params.items()}
    sections.setdefault("GLOBAL", {}).setdefault("RUN_TYPE", "ENERGY_FORCE")
    force_eval = sections.setdefault("FORCE_EVAL", {})
    force_eval.setdefault("METHOD", "Quickstep")
    force_eval.setdefault("SUBSYS", {})
    printing = dict(force_eval.get("PRINT", {}))
    printing.setdefault("FORCES", {"_": "ON"})
    if periodic:
        force_eval.setdefault("STRESS_TENSOR", "ANALYTICAL")
        printing.setdefault("STRESS_TENSOR", {"_": "ON"})
    force_eval["PRINT"] = printing
    lines = [line for name, body in sections.items() for line in render_section(name, body)]
    return "\n".join(lines) + "\n"


def parse_output(text: str, natoms: int, volume: float | None):
    """Energy (eV), forces (eV/A) and virial (eV, None without a stress tensor) of the last evaluation."""
    energies = ENERGY_RE.findall(text)
    if not energies:
        raise ValueError("no 'ENERGY| Total FORCE_EVAL' line (SCF not converged or run incomplete?)")
    energy = float(energies[-1]) * HARTREE
    blocks = text.split("ATOMIC FORCES in [a.u.]")
    if len(blocks) < 2:
        raise ValueError("no 'ATOMIC FORCES in [a.u.]' block: add &PRINT/&FORCES ON to FORCE_EVAL")
    rows = [ln.split() for ln in blocks[-1].splitlines()[3:3 + natoms]]
    forces = np.array([[float(x) for x in r[3:6]] for r in rows]) * HARTREE_PER_BOHR
    if forces.shape != (natoms, 3):
        raise ValueError(f"forces block has {len(rows)} rows for {natoms} atoms")
    virial = None
    stress = _last_stress(text)
    if stress is not None and volume is not None:
        virial = stress * GPA * volume
    return energy, forces, virial


def _last_stress(text: str):
    lines = text.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if "STRESS| Analytical stress tensor [GPa]" in lines[i] or "STRESS| Numerical stress tensor [GPa]" in lines[i]:
            rows = [ln.split()[2:5] for ln in lines[i + 2:i + 5]]  # CP2K >= 2023: 'STRESS|  x  v v v'
            return np.array(rows, dtype=float)
        if lines[i].strip() == "STRESS TENSOR [GPa]":  # CP2K < 2023
            rows = [ln.split()[1:4] for ln in lines[i + 3:i + 6]]
            return np.array(rows, dtype=float)
    return None


@register("cp2k")
class CP2K(ExternalEngine):
    default_command = f"cp2k.psmp -i {INPUT} -o {OUTPUT}"
    output_name = OUTPUT
    file_params = ("input_template",)

    @classmethod
    def code_args(cls) -> list[Argument]:
        return [
            Argument("input", dict, optional=True, default=None,
                     doc="the CP2K input as DP-GEN's nested dict (user_fp_params); no &CELL/&COORD"),
            Argument("input_template", str, optional=True, default=None,
                     doc="a CP2K input file (DP-GEN's external_input_path) without &CELL/&COORD"),
        ]

    @staticmethod
    def from_dpgen(jdata: dict) -> dict:
        if jdata.get("user_fp_params"):
            return {"input": jdata["user_fp_params"]}
        if jdata.get("external_input_path"):
            return {"input_template": jdata["external_input_path"]}
        return {}

    def check(self, params: dict, type_map: list[str]) -> None:
        if (params.get("input") is None) == (params.get("input_template") is None):
            raise ValueError("expected exactly one of fp_params.input (user_fp_params) and "
                             "fp_params.input_template (external_input_path)")

    def write_inputs(self, frame, workdir: Path, params: dict, files_dir) -> None:
        if params.get("input") is not None:
            template = input_from_dict(params["input"], periodic=not frame.nopbc)
        else:
            template = resolve(files_dir, params["input_template"]).read_text()
        (workdir / INPUT).write_text(insert_structure(template, frame))

    def parse(self, workdir: Path, frame, params: dict):
        volume = None if frame.nopbc else abs(np.linalg.det(frame["cells"][0]))
        return parse_output((workdir / OUTPUT).read_text(errors="replace"), frame.get_natoms(), volume)
