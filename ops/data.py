"""The frame index: stable frame ids over `pick_data`, reading and extracting frames by id.

`pick_data` is never copied or rewritten. It is a list of roots (directories or HDF5 files);
each root holds one or more deepmd systems. A system is named ``"<root index>/<path in root>"``
(``"<root index>/<file>#<group>"`` for HDF5; :class:`loop_state.SystemKey`), a frame by ``(system, index)``.
Iterations only pass the small loop state JSON (loop_state.py) and the relabeled frames.
"""

from __future__ import annotations

import glob
import json
import os
from contextlib import contextmanager
from pathlib import Path

import dpdata
import numpy as np

from .loop_state import SystemKey

H5_SUFFIXES = (".h5", ".hdf5")


def expand_roots(patterns: list[str], base_dir: str | os.PathLike = ".") -> list[str]:
    """Glob each `pick_data` entry (relative to `base_dir`) into existing absolute paths, sorted per pattern."""
    roots: list[str] = []
    for pattern in patterns:
        full = os.path.join(str(base_dir), os.path.expanduser(pattern))
        matches = sorted(glob.glob(full))
        roots.extend(os.path.abspath(m) for m in matches if os.path.abspath(m) not in roots)
    return roots


def _h5_groups(path: str) -> list[str]:
    import h5py

    groups: list[str] = []

    def visit(name, obj):
        if isinstance(obj, h5py.Group) and "type.raw" in obj:
            groups.append(name)

    with h5py.File(path, "r") as f:
        if "type.raw" in f:
            groups.append("")
        f.visititems(visit)
    return sorted(groups)


def walk_once(top: str):
    """(folder, file names) under `top`, sorted, links followed but never into a folder already walked (a link
    loop, or a second path to the same folder; real folders are taken before links to them)."""
    walked = set()
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        walked.add(os.path.realpath(dirpath))
        keep = []
        for d in sorted(dirnames, key=lambda d: (os.path.islink(os.path.join(dirpath, d)), d)):
            real = os.path.realpath(os.path.join(dirpath, d))
            if real not in walked:
                walked.add(real)
                keep.append(d)
        dirnames[:] = sorted(keep)
        yield dirpath, filenames


def find_systems(root: str) -> list[str]:
    """Relative names of the deepmd systems inside one root: npy dirs holding type.raw, HDF5 groups.
    Symlinks are followed, but never into a folder already walked (a link loop, or a second path to
    the same folder), so each system is found once."""
    root = str(root)
    if os.path.isfile(root) and root.endswith(H5_SUFFIXES):
        return ["#" + g for g in _h5_groups(root)]
    found = []
    for dirpath, filenames in walk_once(root):
        if "type.raw" in filenames:
            found.append(os.path.relpath(dirpath, root))
        for f in sorted(filenames):
            if f.endswith(H5_SUFFIXES):
                rel = os.path.relpath(os.path.join(dirpath, f), root)
                found.extend(rel + "#" + g for g in _h5_groups(os.path.join(dirpath, f)))
    return found


def system_location(roots: list[str], key: str) -> tuple[str, str]:
    """(path for dpdata, dpdata format) of a system key over the given roots."""
    k = SystemKey.parse(key)
    root = str(roots[k.root])
    if k.group is not None:
        path = root if k.path == "" else os.path.join(root, k.path)
        return f"{os.path.normpath(path)}#{k.group or '/'}", "deepmd/hdf5"
    return os.path.normpath(os.path.join(root, k.path)), "deepmd/npy"


def load_system(roots: list[str], key: str, type_map: list[str], labeled: bool) -> dpdata.System:
    """The whole system `key`, with its types mapped onto `type_map`."""
    path, fmt = system_location(roots, key)
    cls = dpdata.LabeledSystem if labeled else dpdata.System
    return cls(path, fmt=fmt, type_map=type_map)


def count_frames(roots: list[str], key: str) -> int:
    """Frames of a system without loading its arrays (npy: box.npy headers; HDF5: dataset shape)."""
    path, fmt = system_location(roots, key)
    if fmt == "deepmd/npy":
        n = 0
        for box in sorted(glob.glob(os.path.join(path, "set.*", "box.npy"))):
            n += np.load(box, mmap_mode="r").shape[0]
        return n
    with open_system(path, fmt) as (_, _, _, sets):
        return sum(arrays["box"].shape[0] for arrays in sets.values())


def npy_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """The shape of an .npy file from its header, checked against the file's size (nothing else is read);
    ValueError naming the file when it is no numeric .npy array or is truncated."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(f)
            offset = f.tell()
    except Exception as e:  # not an .npy file at all
        raise ValueError(f"{path}: not a readable .npy file ({e})") from None
    if dtype.hasobject:
        raise ValueError(f"{path}: holds Python objects; expected a numeric array")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if os.path.getsize(path) < expected:
        raise ValueError(f"{path}: truncated ({os.path.getsize(path)} bytes, its header says {expected})")
    return tuple(shape)


def write_frame_ids(path: str | os.PathLike, ids: dict[str, list[int]]) -> None:
    Path(path).write_text(json.dumps(ids))


NPY_LABELS = {"energies": "energy", "forces": "force", "virials": "virial"}


@contextmanager
def open_system(path: str, fmt: str):
    """(element names or None, types, nopbc, sets) of a deepmd/npy folder or a deepmd/hdf5 `file#group`; sets
    maps each set's name, in order, to its arrays: array name ("box", "coord", "energy", ...) -> rows read on
    demand (a memory map, an HDF5 dataset): nothing else of the system is read."""
    if fmt == "deepmd/npy":
        names = Path(path, "type_map.raw").read_text().split() if Path(path, "type_map.raw").exists() else None
        types = np.loadtxt(Path(path, "type.raw"), dtype=int, ndmin=1)
        sets = {Path(d).name: {Path(f).name[:-4]: np.load(f, mmap_mode="r")
                               for f in sorted(glob.glob(os.path.join(d, "*.npy")))}
                for d in sorted(glob.glob(os.path.join(path, "set.*")))}
        yield names, types, Path(path, "nopbc").exists(), sets
        return
    import h5py

    file_path, group = path.split("#", 1)
    with h5py.File(file_path, "r") as f:
        g = f[group] if group not in ("", "/") else f
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in g["type_map.raw"][()]] \
            if "type_map.raw" in g else None
        sets = {s: {k[:-4]: g[s][k] for k in g[s] if k.endswith(".npy")} for s in sorted(k for k in g if k.startswith("set."))}
        yield names, np.asarray(g["type.raw"][()], dtype=int).reshape(-1), "nopbc" in g, sets


def first_non_finite(path: str, fmt: str, arrays: tuple[str, ...], chunk: int = 4096) -> tuple[int, str] | None:
    """(frame index in the system, "set.xxx/array.npy") of the first frame whose `arrays` ("box", "coord",
    "energy", ...; those present) hold a NaN or an infinity, or None. Read a chunk of frames at a time (memory
    maps, HDF5 datasets): the whole of pick_data passes through, never all in memory."""
    with open_system(path, fmt) as (_, _, _, sets):
        start = 0
        for set_name, arrs in sets.items():
            for name in arrays:
                if name not in arrs:
                    continue
                data = arrs[name]
                for lo in range(0, data.shape[0], chunk):
                    rows = np.asarray(data[lo:lo + chunk])
                    bad = ~np.isfinite(rows.reshape(rows.shape[0], -1)).all(axis=1)
                    if bad.any():
                        return start + lo + int(np.argmax(bad)), f"{set_name}/{name}.npy"
            start += arrs["box"].shape[0] if "box" in arrs else 0
    return None


def read_frames(path: str, fmt: str, frame_ids: list[int], type_map: list[str], labeled: bool) -> dpdata.System:
    """Frames `frame_ids` of the system at `path` (deepmd/npy folder or deepmd/hdf5 `file#group`): coordinates,
    cells, types (and energies, forces, virials) read by row, never the whole system, so that a ModelDevi shard
    of a large system reads only its frames. Types mapped onto `type_map` as dpdata maps them; other data are
    left out."""
    with open_system(path, fmt) as (names, types, nopbc, sets):
        names = names or list(type_map)
        unknown = sorted({names[t] for t in set(types.tolist())} - set(type_map))
        if unknown:
            raise ValueError(f"{path}: element(s) {unknown} not in type_map {type_map}")
        types = np.array([type_map.index(names[t]) for t in types], dtype=int)
        starts = np.cumsum([0] + [s["box"].shape[0] for s in sets.values()])
        given = np.asarray(frame_ids, dtype=int)
        by_frame = np.argsort(given, kind="stable")
        want = given[by_frame]  # read in ascending order, set by set; given back in the order asked
        arrays = {"cells": [], "coords": [], **({k: [] for k in NPY_LABELS} if labeled else {})}
        files = {"cells": "box", "coords": "coord", **NPY_LABELS}
        for arrs, lo, hi in zip(sets.values(), starts[:-1], starts[1:]):
            rows = want[(want >= lo) & (want < hi)] - lo
            for k in arrays:
                if len(rows) and files[k] in arrs:  # no virial array: no virials
                    arrays[k].append(np.asarray(arrs[files[k]][rows]))
    n, natoms = len(want), len(types)
    data = {"atom_names": list(type_map), "atom_numbs": [int(np.sum(types == t)) for t in range(len(type_map))],
            "atom_types": types, "orig": np.zeros(3), "nopbc": nopbc,
            "cells": np.concatenate(arrays["cells"]).reshape(n, 3, 3),
            "coords": np.concatenate(arrays["coords"]).reshape(n, natoms, 3)}
    if labeled:
        data["energies"] = np.concatenate(arrays["energies"]).reshape(n)
        data["forces"] = np.concatenate(arrays["forces"]).reshape(n, natoms, 3)
        if arrays["virials"]:
            data["virials"] = np.concatenate(arrays["virials"]).reshape(n, 3, 3)
    for k in ("cells", "coords", "energies", "forces", "virials"):
        if k in data:
            data[k][by_frame] = data[k].copy()
    return (dpdata.LabeledSystem if labeled else dpdata.System)(data=data)


def iter_frames(roots, ids: dict[str, list[int]], type_map, labeled: bool, frames_only: bool = False):
    """Yield (system key, frame ids, dpdata system restricted to those frames), one system at a time.
    `frames_only`: coordinates, cells, types and labels only, read by frame (read_frames) instead of loading
    each whole system."""
    for key in sorted(ids):
        if not ids[key]:
            continue
        path, fmt = system_location(roots, key)
        if frames_only:
            yield key, list(ids[key]), read_frames(path, fmt, list(ids[key]), list(type_map), labeled)
            continue
        system = load_system(roots, key, type_map, labeled)
        yield key, list(ids[key]), system.sub_system(list(ids[key]))


def extract_frames(roots, ids: dict[str, list[int]], type_map, labeled: bool, out_dir) -> None:
    """Copy the frames `ids` of `pick_data` into `out_dir` (deepmd/npy, one folder per system, plus
    `origin.json`: folder -> [system key, frame ids]), so that a labeling task reads only its own frames."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    origin = {}
    for n, (key, frame_ids, system) in enumerate(iter_frames(roots, ids, type_map, labeled)):
        name = "%04d" % n
        system.to_deepmd_npy(str(out_dir / name), set_size=10**9)
        origin[name] = [key, frame_ids]
    (out_dir / "origin.json").write_text(json.dumps(origin))


def extracted_frames(group_dir) -> tuple[list[str], dict[str, list[int]], dict[tuple[str, int], tuple[str, int]]]:
    """(roots, frame ids, local (system, frame) -> original (system, frame)) of an `extract_frames` folder."""
    origin = json.loads(Path(group_dir, "origin.json").read_text())
    ids, to_original = {}, {}
    for name, (key, frame_ids) in origin.items():
        ids["0/" + name] = list(range(len(frame_ids)))
        to_original.update({("0/" + name, j): (key, int(f)) for j, f in enumerate(frame_ids)})
    return [str(group_dir)], ids, to_original


def save_labeled(multi: dpdata.MultiSystems, sources: dict[str, list[tuple[str, int]]], out_dir) -> None:
    """Write labeled frames as deepmd/npy (one dir per formula) plus `frame_ids.json` per dir."""
    os.makedirs(out_dir, exist_ok=True)
    if multi.get_nframes() == 0:
        return
    multi.to_deepmd_npy(str(out_dir), set_size=10**9)
    for name in multi.systems:
        Path(out_dir, name, "frame_ids.json").write_text(json.dumps(sources.get(name, [])))


def pick_data_roots(artifact, paths) -> list[str]:
    """pick_data's roots for an OP: the artifact it received, or the paths it reads in place (a volume
    mounted in the pod at the same path; `dflow_config.pick_data_volume`)."""
    if artifact:
        return [str(r) for r in artifact]
    if paths:
        return [str(r) for r in paths]
    raise ValueError("pick_data: neither the artifact nor pick_data_paths was given")
