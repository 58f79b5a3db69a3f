"""`vasp`: VASP, configured the DP-GEN way: `fp_incar`, `fp_pp_path` + `fp_pp_files` (one POTCAR per
element of type_map, same order), k-points from the INCAR's KSPACING, `fp_aniso_kspacing` or a KPOINTS
file. VASP itself cannot be shipped: the command names the user's binary. Output: OUTCAR, via dpdata.
"""

from __future__ import annotations

from pathlib import Path

import dpdata
import numpy as np
from dargs import Argument

from .base import register
from .external import ExternalEngine, first_frame, kpoint_mesh, present_elements, resolve


def kpoints_from_spacing(cell: np.ndarray, spacing: list[float]) -> str:
    """A Gamma-centred KPOINTS with ceil(2 pi |b_i| / spacing_i) points along each reciprocal vector."""
    mesh = kpoint_mesh(cell, spacing)
    return "Automatic mesh from fp_aniso_kspacing\n0\nGamma\n%d %d %d\n0 0 0\n" % tuple(mesh)


@register("vasp")
class VASP(ExternalEngine):
    default_command = "vasp_std"
    output_name = "OUTCAR"
    file_params = ("incar", "pp_files", "kpoints")

    @classmethod
    def code_args(cls) -> list[Argument]:
        return [
            Argument("incar", str, doc="INCAR file (DP-GEN's fp_incar)"),
            Argument("pp_files", list, doc="one POTCAR per element of type_map, same order "
                                           "(DP-GEN's fp_pp_files, relative to fp_pp_path)"),
            Argument("kpoints", str, optional=True, default=None, doc="KPOINTS file, when the INCAR has no KSPACING"),
            Argument("aniso_kspacing", list, optional=True, default=None,
                     doc="k-point spacing per reciprocal vector, 1/A (DP-GEN's fp_aniso_kspacing)"),
        ]

    @staticmethod
    def from_dpgen(jdata: dict) -> dict:
        out = {}
        if jdata.get("fp_incar"):
            out["incar"] = jdata["fp_incar"]
        if jdata.get("fp_pp_files"):
            out["pp_files"] = [str(Path(jdata.get("fp_pp_path", ""), f)) for f in jdata["fp_pp_files"]]
        if jdata.get("fp_aniso_kspacing"):
            out["aniso_kspacing"] = jdata["fp_aniso_kspacing"]
        return out

    def check(self, params: dict, type_map: list[str]) -> None:
        if len(params["pp_files"]) != len(type_map):
            raise ValueError(f"fp_pp_files: expected one POTCAR per element of type_map {type_map}, "
                             f"got {len(params['pp_files'])}")

    def write_inputs(self, frame, workdir: Path, params: dict, files_dir) -> None:
        frame.to("vasp/poscar", str(workdir / "POSCAR"))
        incar = resolve(files_dir, params["incar"]).read_text()
        (workdir / "INCAR").write_text(incar)
        potcars = [resolve(files_dir, params["pp_files"][self.type_map.index(e)]).read_text()
                   for e in present_elements(frame)]
        (workdir / "POTCAR").write_text("".join(potcars))
        if params.get("aniso_kspacing"):
            (workdir / "KPOINTS").write_text(kpoints_from_spacing(frame["cells"][0], params["aniso_kspacing"]))
        elif params.get("kpoints"):
            (workdir / "KPOINTS").write_text(resolve(files_dir, params["kpoints"]).read_text())

    def parse(self, workdir: Path, frame, params: dict):
        return first_frame(dpdata.LabeledSystem(str(workdir / "OUTCAR"), fmt="vasp/outcar"), frame.get_natoms())
