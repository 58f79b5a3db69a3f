"""Reading frames by id from a deepmd/npy folder or a deepmd/hdf5 group without loading it whole (what a
ModelDevi shard does): the same arrays as dpdata's whole-system load and sub_system, over several sets, in any
order asked."""

import dpdata
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from dflow_simplify.ops.data import load_system, read_frames

TYPE_MAP = ["Ag", "Au", "Cu"]


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    """11 labeled frames of a 4-atom Au3Ag cell in sets of 3 (set.000-set.003), atoms not sorted by element."""
    frames = None
    for i in range(11):
        atoms = bulk("Au", "fcc", a=4.1, cubic=True)
        atoms.set_chemical_symbols(["Au", "Ag", "Au", "Au"])
        atoms.rattle(0.05, seed=i)
        atoms.calc = EMT()
        frame = dpdata.LabeledSystem(atoms, fmt="ase/structure")
        frames = frame if frames is None else frames + frame
    path = tmp_path_factory.mktemp("sets") / "Au3Ag"
    frames.to_deepmd_npy(str(path), set_size=3)
    assert len(list(path.glob("set.*"))) == 4
    return path


@pytest.fixture(scope="module")
def h5_system(system, tmp_path_factory):
    """The same frames in one HDF5 file (dpdata's deepmd/hdf5, DP-GEN's one_h5 form), group Au3Ag1 (the formula)."""
    path = tmp_path_factory.mktemp("h5") / "pick.h5"
    dpdata.MultiSystems(dpdata.LabeledSystem(str(system), fmt="deepmd/npy")).to("deepmd/hdf5", str(path), set_size=3)
    return path


@pytest.mark.parametrize("fmt", ["deepmd/npy", "deepmd/hdf5"])
@pytest.mark.parametrize("ids", [[0, 4, 10], [9, 2, 5, 3], list(range(11)), [7]])
@pytest.mark.parametrize("labeled", [False, True])
def test_frames_by_id_equal_dpdatas_whole_load(system, h5_system, fmt, ids, labeled):
    root, key = (str(system.parent), f"0/{system.name}") if fmt == "deepmd/npy" else (str(h5_system), "0/#Au3Ag1")
    path = str(system) if fmt == "deepmd/npy" else f"{h5_system}#Au3Ag1"
    got = read_frames(path, fmt, ids, TYPE_MAP, labeled)
    want = load_system([root], key, TYPE_MAP, labeled).sub_system(ids)
    assert got["atom_names"] == want["atom_names"] and list(got["atom_numbs"]) == list(want["atom_numbs"])
    keys = ("coords", "cells", "atom_types") + (("energies", "forces", "virials") if labeled else ())
    for k in keys:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert got.nopbc == want.nopbc


def test_an_element_outside_type_map_is_named(system, h5_system):
    with pytest.raises(ValueError, match=r"\['Au'\] not in type_map"):
        read_frames(str(system), "deepmd/npy", [0], ["Ag", "Cu"], False)
    with pytest.raises(ValueError, match=r"\['Au'\] not in type_map"):
        read_frames(f"{h5_system}#Au3Ag1", "deepmd/hdf5", [0], ["Ag", "Cu"], False)
