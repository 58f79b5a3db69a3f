"""`qe` (DP-GEN's `pwscf`): Quantum ESPRESSO pw.x. Namelists from DP-GEN's `user_fp_params`
(control/system/electrons), `fp_pp_path` + `fp_pp_files` for the species, k-points from `kspacing` or
`k_points`. The input is written here; input + output are parsed with dpdata's `qe/pw/scf`.
"""

from __future__ import annotations

from pathlib import Path

import dpdata
from ase.data import atomic_masses, atomic_numbers
from dargs import Argument

from .base import register
from .external import ExternalEngine, copy_input, first_frame, kpoint_mesh, present_elements

INPUT, OUTPUT = "input", "output"
NAMELISTS = ("control", "system", "electrons")


def fortran(value) -> str:
    if isinstance(value, bool):
        return ".true." if value else ".false."
    if isinstance(value, str):
        return f"'{value}'"
    return str(value)


def pw_input(frame: dpdata.System, namelists: dict, pseudos: dict[str, str], k_points: list[int] | None) -> str:
    """A pw.x SCF input with forces and stress, the frame's cell and Cartesian positions in Angstrom."""
    nl = {name: dict(namelists.get(name, {})) for name in NAMELISTS}
    nl["control"].update({"calculation": "scf", "tprnfor": True, "pseudo_dir": "./"})
    if not frame.nopbc:
        nl["control"]["tstress"] = True
    elements = present_elements(frame)
    nl["system"].update({"ibrav": 0, "nat": frame.get_natoms(), "ntyp": len(elements)})
    lines = []
    for name in NAMELISTS:
        lines += [f"&{name}"] + [f"  {k} = {fortran(v)}," for k, v in nl[name].items()] + ["/"]
    lines.append("ATOMIC_SPECIES")
    lines += [f"{e} {atomic_masses[atomic_numbers[e]]:.4f} {pseudos[e]}" for e in elements]
    lines.append("CELL_PARAMETERS angstrom")
    lines += ["%.10f %.10f %.10f" % tuple(v) for v in frame["cells"][0]]
    lines.append("ATOMIC_POSITIONS angstrom")
    lines += ["%s %.10f %.10f %.10f" % (frame["atom_names"][t], *xyz)
              for t, xyz in zip(frame["atom_types"], frame["coords"][0])]
    if k_points is None:
        lines.append("K_POINTS gamma")
    else:
        lines += ["K_POINTS automatic", "%d %d %d 0 0 0" % tuple(k_points)]
    return "\n".join(lines) + "\n"


@register("qe")
class QuantumEspresso(ExternalEngine):
    default_command = f"pw.x -input {INPUT} > {OUTPUT}"
    output_name = OUTPUT
    file_params = ("pp_files",)

    @classmethod
    def code_args(cls) -> list[Argument]:
        return [
            Argument("pp_files", list, doc="one pseudopotential per element of type_map (DP-GEN's fp_pp_files)"),
            Argument("namelists", dict, optional=True, default={},
                     doc="{control: {...}, system: {ecutwfc: ...}, electrons: {...}} (DP-GEN's user_fp_params)"),
            Argument("kspacing", [float, int, type(None)], optional=True, default=None,
                     doc="k-point spacing in 1/A (2 pi included); Gamma point when neither this nor k_points"),
            Argument("k_points", [list, type(None)], optional=True, default=None, doc="Monkhorst-Pack mesh"),
        ]

    @staticmethod
    def from_dpgen(jdata: dict) -> dict:
        out = {}
        if jdata.get("fp_pp_files"):
            out["pp_files"] = [str(Path(jdata.get("fp_pp_path", ""), f)) for f in jdata["fp_pp_files"]]
        user = jdata.get("user_fp_params") or {}
        if user:
            out["namelists"] = {k: v for k, v in user.items() if k in NAMELISTS}
            for key in ("kspacing", "k_points"):
                if key in user:
                    out[key] = user[key]
        return out

    def check(self, params: dict, type_map: list[str]) -> None:
        if len(params["pp_files"]) != len(type_map):
            raise ValueError(f"fp_pp_files: expected one pseudopotential per element of {type_map}")
        unknown = sorted(set(params["namelists"]) - set(NAMELISTS))
        if unknown:
            raise ValueError(f"namelists: unknown {unknown}; expected some of {list(NAMELISTS)}")

    def write_inputs(self, frame, workdir: Path, params: dict, files_dir) -> None:
        pseudos = {e: copy_input(files_dir, params["pp_files"][self.type_map.index(e)], workdir)
                   for e in present_elements(frame)}
        k_points = params.get("k_points")
        if params.get("kspacing") and not frame.nopbc:
            k_points = kpoint_mesh(frame["cells"][0], params["kspacing"])
        (workdir / INPUT).write_text(pw_input(frame, params["namelists"], pseudos, k_points))

    def parse(self, workdir: Path, frame, params: dict):
        system = dpdata.LabeledSystem([str(workdir / INPUT), str(workdir / OUTPUT)], fmt="qe/pw/scf")
        return first_frame(system, frame.get_natoms())
