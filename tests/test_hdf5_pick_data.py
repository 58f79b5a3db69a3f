"""pick_data as deepmd/hdf5 files (DP-GEN's one_h5 form): checked before a run like npy folders, from the
dataset shapes (no array read), each mistake named with its file and group."""

import json
from pathlib import Path

import dpdata
import h5py
import numpy as np
import pytest

from dflow_simplify.workflows.config import ConfigError, load_config

from .test_config import _mapbi3

MAPBI3 = Path(__file__).parent / "data" / "mapbi3" / "data"


def mapbi3_h5(path: Path) -> Path:
    multi = dpdata.MultiSystems()
    for sys_dir in sorted(MAPBI3.iterdir()):
        multi.append(dpdata.LabeledSystem(str(sys_dir), fmt="deepmd/npy"))
    multi.to("deepmd/hdf5", str(path))
    return path


def test_hdf5_pick_data_is_indexed_like_the_npy_folders(tmp_path):
    config = _mapbi3(tmp_path, fp_style="dftd3")
    npy = load_config(config)
    h5 = mapbi3_h5(config.parent.parent / "pick.h5")
    j = json.loads(config.read_text())
    config.write_text(json.dumps({**j, "pick_data": "../pick.h5"}))
    cfg = load_config(config)
    assert cfg.pick_roots == [str(h5)] and all(k.startswith("0/#") for k in cfg.systems)
    assert cfg.n_frames == npy.n_frames == 24  # dpdata merged the two systems of one formula into one group


def _broken(h5: Path, change) -> None:
    with h5py.File(h5, "a") as f:
        group = f[sorted(f)[0]]
        change(group)


BROKEN = [
    ("coordinates of another atom count", lambda g: (g["set.000"].pop("coord.npy"),
                                                   g["set.000"].create_dataset("coord.npy", data=np.zeros((12, 9)))),
     r"set.000/coord.npy has shape \(12, 9\); expected \(frames, \d+\)"),
    ("an element outside type_map", lambda g: (g.pop("type_map.raw"),
                                               g.create_dataset("type_map.raw", data=np.array([b"Xe", b"Pb", b"I", b"N", b"H"]))),
     r"has element\(s\) \['Xe'\] not in type_map"),
    ("no labels for dftd3", lambda g: [g[s].pop("energy.npy") for s in g if s.startswith("set.")],
     "lacks energy.npy, which fp_style 'dftd3' needs"),
]


@pytest.mark.parametrize("what,change,message", BROKEN, ids=[b[0] for b in BROKEN])
def test_a_broken_hdf5_system_is_named_before_anything_runs(tmp_path, what, change, message):
    config = _mapbi3(tmp_path, fp_style="dftd3")
    h5 = mapbi3_h5(config.parent.parent / "pick.h5")
    _broken(h5, change)
    j = json.loads(config.read_text())
    config.write_text(json.dumps({**j, "pick_data": "../pick.h5"}))
    with pytest.raises(ConfigError, match=message) as e:
        load_config(config)
    assert "pick.h5#" in str(e.value)
