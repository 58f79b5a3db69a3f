"""`gaussian`: Gaussian 16/09 for molecules (no periodic cell, no virial). DP-GEN's `fp_params`
(keywords, multiplicity, charge, nproc, basis_set, ...) are ours as is and go to dpdata's `gaussian/gjf` writer; the log is
parsed with dpdata's `gaussian/log`.
"""

from __future__ import annotations

from pathlib import Path

import dpdata
from dargs import Argument

from .base import register
from .external import ExternalEngine, first_frame

INPUT, OUTPUT = "input", "output"


@register("gaussian")
class Gaussian(ExternalEngine):
    default_command = f"g16 < {INPUT} > {OUTPUT}"
    output_name = OUTPUT

    @classmethod
    def code_args(cls) -> list[Argument]:
        return [
            Argument("keywords", [str, list], doc="route keywords; 'force' is needed, e.g. 'force b3lyp/6-31g**'"),
            Argument("multiplicity", [int, str], optional=True, default="auto"),
            Argument("charge", int, optional=True, default=0),
            Argument("nproc", int, optional=True, default=1),
            Argument("basis_set", [str, type(None)], optional=True, default=None),
            Argument("keywords_high_multiplicity", [str, type(None)], optional=True, default=None),
            Argument("fragment_guesses", bool, optional=True, default=False),
        ]

    def check(self, params: dict, type_map: list[str]) -> None:
        words = params["keywords"] if isinstance(params["keywords"], str) else " ".join(params["keywords"])
        if "force" not in words.lower():
            raise ValueError(f"keywords {words!r}: add 'force' so that Gaussian prints forces")

    def write_inputs(self, frame, workdir: Path, params: dict, files_dir) -> None:
        keys = ("keywords", "multiplicity", "charge", "nproc", "basis_set", "keywords_high_multiplicity",
                "fragment_guesses")
        kwargs = {k: params[k] for k in keys if params.get(k) is not None}
        frame.to("gaussian/gjf", str(workdir / INPUT), **kwargs)

    def parse(self, workdir: Path, frame, params: dict):
        energy, forces, _ = first_frame(dpdata.LabeledSystem(str(workdir / OUTPUT), fmt="gaussian/log"),
                                        frame.get_natoms())
        return energy, forces, None
