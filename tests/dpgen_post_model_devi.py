"""Run DP-GEN's own `post_model_devi` (dpgen.simplify.simplify) on given deviations; run with DP-GEN's Python.

    python dpgen_post_model_devi.py cases.json workdir   ->  prints {"<case>": {"picked": [...], "rest": [...],
                                                                               "accurate": [...]} or {"error": "..."}}

Each case gives per-frame deviation rows (7 columns of `dp model-devi`), optional true-error rows, and the
trust levels. The frames are one 1-atom system whose x coordinate is the frame's index, so each frame can be
found again in the folders DP-GEN writes: data.picked (candidates: iter_pick_number covers all of them),
data.rest (the failed frames) and data.accurate.
"""

import json
import os
import sys
from pathlib import Path

import dpdata
import numpy as np
from dpgen.simplify import simplify

HEADER = "step max_devi_v min_devi_v avg_devi_v max_devi_f min_devi_f avg_devi_f devi_e"


def _frames(folder: Path) -> list[int]:
    if not folder.is_dir() or not any(folder.iterdir()):
        return []
    ms = dpdata.MultiSystems().from_deepmd_npy(str(folder), labeled=False)
    return sorted(int(round(x)) for s in ms for x in s["coords"][:, 0, 0])


def run_case(case: dict, work: Path) -> dict:
    n = len(case["devi"])
    system = dpdata.System(data={
        "atom_names": ["H"], "atom_numbs": [1], "atom_types": np.zeros(1, int),
        "coords": np.array([[[float(i), 0.0, 0.0]] for i in range(n)]), "cells": np.zeros((n, 3, 3)),
        "orig": np.zeros(3), "nopbc": True})
    model_devi = work / "iter.000001" / simplify.model_devi_name
    system.to_deepmd_npy(str(model_devi / "data.rest.old" / system.formula), set_size=n)
    for name, rows in (("details", case["devi"]), ("true_error", case.get("true_error") or case["devi"])):
        table = np.column_stack([np.arange(n), np.asarray(rows, float)])
        np.savetxt(model_devi / name, table, fmt=["%12d"] + ["%19.6e"] * 7,
                   header=f"data.rest.old/{system.formula}\n{HEADER}")
    jdata = {"iter_pick_number": n, **{k: float(v) for k, v in case["trust"].items()}}
    cwd = os.getcwd()
    os.chdir(work)
    try:
        simplify.post_model_devi(1, jdata, {})
    except RuntimeError as e:
        return {"error": str(e)}
    finally:
        os.chdir(cwd)
    return {"picked": _frames(model_devi / "data.picked"), "rest": _frames(model_devi / "data.rest"),
            "accurate": _frames(model_devi / "data.accurate")}


def main() -> None:
    cases = json.loads(Path(sys.argv[1]).read_text())
    work = Path(sys.argv[2])
    out = {}
    for name, case in cases.items():
        (work / name).mkdir(parents=True)
        out[name] = run_case(case, work / name)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
