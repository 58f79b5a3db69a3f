"""`abacus`: ABACUS, configured the DP-GEN way: INPUT parameters from `fp_incar` (an INPUT file) or
`user_fp_params`, `fp_pp_path` + `fp_pp_files` (+ `fp_orb_files` for LCAO), k-points from `k_points`,
`fp_kpt_file` or the INPUT's own kspacing/gamma_only. STRU written and the run parsed by dpdata.
"""

from __future__ import annotations

from pathlib import Path

import dpdata
from dargs import Argument

from .base import register
from .external import ExternalEngine, copy_input, first_frame, present_elements, resolve


def read_input_file(text: str) -> dict:
    """ABACUS INPUT: 'key value ...' lines after INPUT_PARAMETERS; '#' starts a comment."""
    params = {}
    for line in text.splitlines():
        words = line.split("#")[0].split()
        if len(words) >= 2 and words[0] != "INPUT_PARAMETERS":
            params[words[0]] = " ".join(words[1:])
    return params


@register("abacus")
class Abacus(ExternalEngine):
    default_command = "abacus"
    output_name = "OUT.ABACUS/running_scf.log"
    file_params = ("input_file", "pp_files", "orb_files", "kpt_file")

    @classmethod
    def code_args(cls) -> list[Argument]:
        return [
            Argument("pp_files", list, doc="one pseudopotential per element of type_map (DP-GEN's fp_pp_files)"),
            Argument("orb_files", [list, type(None)], optional=True, default=None,
                     doc="numerical orbitals per element, for LCAO (DP-GEN's fp_orb_files)"),
            Argument("input_file", [str, type(None)], optional=True, default=None, doc="INPUT file (DP-GEN's fp_incar)"),
            Argument("input", dict, optional=True, default={}, doc="INPUT parameters (DP-GEN's user_fp_params)"),
            Argument("k_points", [list, type(None)], optional=True, default=None, doc="6 integers: mesh and shift"),
            Argument("kpt_file", [str, type(None)], optional=True, default=None, doc="KPT file (DP-GEN's fp_kpt_file)"),
        ]

    @staticmethod
    def from_dpgen(jdata: dict) -> dict:
        out = {}
        pp_path = jdata.get("fp_pp_path", "")
        for ours, theirs in (("pp_files", "fp_pp_files"), ("orb_files", "fp_orb_files")):
            if jdata.get(theirs):
                out[ours] = [str(Path(pp_path, f)) for f in jdata[theirs]]
        if jdata.get("fp_incar"):
            out["input_file"] = jdata["fp_incar"]
        if jdata.get("user_fp_params"):
            user = dict(jdata["user_fp_params"])
            if "k_points" in user:
                out["k_points"] = user.pop("k_points")
            out["input"] = user
        if jdata.get("fp_kpt_file"):
            out["kpt_file"] = jdata["fp_kpt_file"]
        if jdata.get("k_points"):
            out["k_points"] = jdata["k_points"]
        return out

    def check(self, params: dict, type_map: list[str]) -> None:
        for key in ("pp_files", "orb_files"):
            if params.get(key) is not None and len(params[key]) != len(type_map):
                raise ValueError(f"{key}: expected one file per element of type_map {type_map}")
        if params.get("k_points") is not None and len(params["k_points"]) != 6:
            raise ValueError("k_points: expected 6 integers (3 mesh sizes and 3 shifts)")

    def write_inputs(self, frame, workdir: Path, params: dict, files_dir) -> None:
        elements = present_elements(frame)
        index = [self.type_map.index(e) for e in elements]
        pp = [copy_input(files_dir, params["pp_files"][i], workdir) for i in index]
        orb = [copy_input(files_dir, params["orb_files"][i], workdir) for i in index] if params.get("orb_files") else None
        frame.to("abacus/stru", str(workdir / "STRU"), pp_file=pp, numerical_orbital=orb)
        values = read_input_file(resolve(files_dir, params["input_file"]).read_text()) if params.get("input_file") else {}
        values.update({k: str(v) for k, v in params.get("input", {}).items()})
        values.update({"calculation": "scf", "ntype": str(len(elements)), "pseudo_dir": "./", "cal_force": "1",
                       "suffix": "ABACUS"})
        if orb:
            values["orbital_dir"] = "./"
        if not frame.nopbc:
            values["cal_stress"] = "1"
        (workdir / "INPUT").write_text("INPUT_PARAMETERS\n" + "".join(f"{k} {v}\n" for k, v in values.items()))
        if params.get("k_points") is not None:
            (workdir / "KPT").write_text("K_POINTS\n0\nGamma\n" + " ".join(map(str, params["k_points"])) + "\n")
        elif params.get("kpt_file"):
            (workdir / "KPT").write_text(resolve(files_dir, params["kpt_file"]).read_text())

    def parse(self, workdir: Path, frame, params: dict):
        return first_frame(dpdata.LabeledSystem(str(workdir), fmt="abacus/scf"), frame.get_natoms())
