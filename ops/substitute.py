"""A similar material's frames from the old ones: rename elements, scale the cells, check the distances.

    python submit_simplify.py substitute OLD_DATA OUT --substitute Cu=Ag [--scale 0.91]

NEW=OLD as in `element_substitution` (Cu takes the place of Ag). The frames come out unlabeled (deepmd/npy,
one folder per composition, type_map = the old one with the new names in the same places), ready to be
pick_data of a run that labels them with the new material's FP. A scaled frame whose shortest interatomic
distance falls below `min_distance` is refused: a lattice scaling too strong for the rattled positions.
"""

from __future__ import annotations

from pathlib import Path

import dpdata
import numpy as np

from .data import find_systems
from .start_models import check_substitution

FRAME_KEYS = ("atom_names", "atom_numbs", "atom_types", "cells", "coords", "orig", "nopbc")


def substitute(system: dpdata.System, substitution: dict[str, str], scale: float = 1.0) -> dpdata.System:
    """`system` with each old element renamed to the new one that takes its place and cells and positions
    scaled by `scale`; labels dropped (they belong to the old material)."""
    old_to_new = {old: new for new, old in substitution.items()}
    data = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in system.data.items() if k in FRAME_KEYS}
    data["atom_names"] = [old_to_new.get(n, n) for n in system.data["atom_names"]]
    data["atom_numbs"] = list(system.data["atom_numbs"])
    data["cells"] = data["cells"] * scale
    data["coords"] = data["coords"] * scale
    return dpdata.System(data=data)


def shortest_distance(system: dpdata.System) -> float:
    """The shortest interatomic distance (A) over all frames, periodic images included."""
    from ase.neighborlist import neighbor_list

    shortest = np.inf
    for atoms in system.to("ase/structure"):
        d = neighbor_list("d", atoms, 3.0)
        if len(d):
            shortest = min(shortest, float(d.min()))
    return shortest


def substitute_data(source: str | Path, out: str | Path, substitution: dict[str, str], scale: float = 1.0,
                    min_distance: float = 1.0) -> dict:
    """Every deepmd/npy system under `source` substituted into `out`; returns frames, the new type_map and the
    shortest distances before and after. Raises ValueError before writing anything when a check fails."""
    source, out = Path(source), Path(out)
    rels = find_systems(str(source))
    if not rels:
        raise ValueError(f"{source}: no deepmd/npy system (type.raw and set.*/) found")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out}: exists and is not empty; give a new folder")
    if not scale > 0:
        raise ValueError(f"scale: expected a positive number, got {scale}")
    systems = [dpdata.System(str(source / rel), fmt="deepmd/npy") for rel in rels]
    old_map = list(systems[0].data["atom_names"])
    if any(list(s.data["atom_names"]) != old_map for s in systems):
        raise ValueError(f"{source}: the systems do not share one type_map")
    missing = sorted(set(substitution.values()) - set(old_map))
    if missing:
        raise ValueError(f"substitute: {missing} not among the old frames' elements {old_map}")
    new_map = [{o: n for n, o in substitution.items()}.get(t, t) for t in old_map]
    check_substitution(new_map, substitution)
    new = [substitute(s, substitution, scale) for s in systems]
    before = min(shortest_distance(s) for s in systems)
    after = min(shortest_distance(s) for s in new)
    if after < min_distance:
        raise ValueError(f"scale {scale}: the shortest interatomic distance would be {after:.3f} A (old frames: "
                         f"{before:.3f} A), below min_distance {min_distance} A")
    multi = dpdata.MultiSystems(*new, type_map=new_map)
    multi.to_deepmd_npy(str(out), set_size=10**6)
    return {"frames": sum(len(s) for s in new), "systems": len(multi), "type_map": new_map,
            "shortest_distance": {"old": round(before, 3), "new": round(after, 3)}}
