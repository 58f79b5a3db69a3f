"""FP engines: dftd3 adds Grimme D3 to existing labels, ase labels with EMT; failures are recorded."""

import json

import dpdata
import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT

from dflow_simplify.ops.fp.base import ENGINES, Engine, register
from dflow_simplify.ops.fp.dftd3 import d3_correction
from dflow_simplify.ops.loop_state import LoopState
from dflow_simplify.ops.run_fp import label_frames


def _atoms(seed=0):
    atoms = bulk("Ag", "fcc", a=4.1, cubic=True) * (2, 1, 1)
    atoms[1].symbol = atoms[4].symbol = "Au"
    atoms.rattle(0.05, seed=seed)
    return atoms


def test_d3_virial_and_forces_are_strain_and_position_derivatives():
    a = _atoms()
    sym, pos, cell = a.get_chemical_symbols(), a.positions, a.cell.array
    e, f, v = d3_correction(sym, pos, cell, True, "pbe", "d3bj")
    h = 1e-5
    p = pos.copy()
    p[2, 0] += h
    ep = d3_correction(sym, p, cell, True, "pbe", "d3bj")[0]
    p[2, 0] -= 2 * h
    em = d3_correction(sym, p, cell, True, "pbe", "d3bj")[0]
    assert abs(-(ep - em) / (2 * h) - f[2, 0]) < 1e-6
    eps = np.eye(3)
    eps[0, 0] += h
    e_plus = d3_correction(sym, pos @ eps, cell @ eps, True, "pbe", "d3bj")[0]
    eps[0, 0] -= 2 * h
    e_minus = d3_correction(sym, pos @ eps, cell @ eps, True, "pbe", "d3bj")[0]
    assert np.isclose(-(e_plus - e_minus) / (2 * h), v[0, 0], rtol=2e-3)  # deepmd virial = -dE/d(strain)
    assert e < 0


def test_dftd3_engine_matches_the_dftd3_ase_calculator(tmp_path):
    from dftd3.ase import DFTD3

    a = _atoms(1)
    a.calc = EMT()
    old = dpdata.LabeledSystem(a, fmt="ase/structure", type_map=["Ag", "Au"])
    old.to("deepmd/npy", str(tmp_path / "sys"))
    multi, sources, failures = label_frames([str(tmp_path)], {"0/sys": [0]}, ["Ag", "Au"], "dftd3",
                                            {"method": "pbe", "damping": "d3bj"}, tmp_path / "work")
    assert not failures and sources == {"Ag6Au2": [("0/sys", 0)]}
    new = multi["Ag6Au2"]
    b = a.copy()
    b.calc = DFTD3(method="pbe", damping="d3bj")
    d3_e, d3_f = b.get_potential_energy(), b.get_forces()
    d3_v = -b.get_stress(voigt=False) * b.get_volume()
    assert np.isclose(new["energies"][0], old["energies"][0] + d3_e, atol=1e-6)
    assert np.allclose(new["forces"][0], old["forces"][0] + d3_f, atol=1e-6)
    assert np.allclose(new["virials"][0], old["virials"][0] + d3_v, atol=1e-5)
    assert np.allclose(new["coords"], old["coords"]) and np.allclose(new["cells"], old["cells"])


def test_ase_engine_labels_with_emt_and_keeps_the_structure(tmp_path):
    a = _atoms(2)
    dpdata.System(a, fmt="ase/structure", type_map=["Ag", "Au"]).to("deepmd/npy", str(tmp_path / "sys"))
    multi, _, failures = label_frames([str(tmp_path)], {"0/sys": [0]}, ["Ag", "Au"], "ase", {"calculator": "emt"},
                                      tmp_path / "w")
    a.calc = EMT()
    lab = multi["Ag6Au2"]
    assert not failures
    assert np.isclose(lab["energies"][0], a.get_potential_energy())
    assert np.allclose(lab["forces"][0], a.get_forces())
    assert np.allclose(lab["virials"][0], -a.get_stress(voigt=False) * a.get_volume())


def test_a_failing_engine_is_recorded_not_raised(tmp_path):
    @register("always-fails-test")
    class Failing(Engine):
        def label(self, frame, workdir, params, files_dir=None):
            raise RuntimeError("SCF did not converge")

    try:
        a = _atoms(3)
        s = dpdata.System(a, fmt="ase/structure", type_map=["Ag", "Au"])
        (s + s).to("deepmd/npy", str(tmp_path / "sys"))
        multi, _, failures = label_frames([str(tmp_path)], {"0/sys": [0, 1]}, ["Ag", "Au"], "always-fails-test",
                                          {}, tmp_path / "w")
        assert multi.get_nframes() == 0 and [f["frame"] for f in failures] == [0, 1]
        assert failures[0]["system"] == "0/sys" and "SCF did not converge" in failures[0]["reason"]
        json.dumps(failures)
    finally:
        ENGINES.pop("always-fails-test")
    assert LoopState.count({"a": [1, 2]}) == 2


def test_runfp_labels_only_its_extracted_group_and_names_the_original_frames(tmp_path, monkeypatch):
    """SelectConfs extracts each group's frames; RunFP reads that folder (never pick_data) and records
    labels and failures under the frames' ids in pick_data."""
    from dflow.python import OPIO

    from dflow_simplify.ops.data import extract_frames
    from dflow_simplify.ops.run_fp import RunFP

    frames = [_atoms(s) for s in range(6)]
    for a in frames:
        a.calc = EMT()
    multi = dpdata.MultiSystems(type_map=["Ag", "Au"])
    for a in frames:
        multi.append(dpdata.LabeledSystem(a, fmt="ase/structure", type_map=["Ag", "Au"]))
    multi.to_deepmd_npy(str(tmp_path / "pick"))
    extract_frames([str(tmp_path / "pick")], {"0/Ag6Au2": [3, 5]}, ["Ag", "Au"], True, tmp_path / "group")
    assert dpdata.LabeledSystem(str(tmp_path / "group" / "0000"), fmt="deepmd/npy").get_nframes() == 2
    monkeypatch.chdir(tmp_path)
    out = RunFP().execute(OPIO({"frames": tmp_path / "group", "type_map": ["Ag", "Au"], "fp_style": "dftd3",
                                "fp_params": {"method": "pbe", "damping": "d3bj"}, "fp_files": None,
                                "skip_bad_box": ""}))
    assert out["n_labeled"] == 2 and out["n_failed"] == 0
    ids = json.loads((tmp_path / out["labeled_data"] / "Ag6Au2" / "frame_ids.json").read_text())
    assert ids == [["0/Ag6Au2", 3], ["0/Ag6Au2", 5]]
    labeled = dpdata.LabeledSystem(str(tmp_path / out["labeled_data"] / "Ag6Au2"), fmt="deepmd/npy")
    np.testing.assert_allclose(labeled["coords"][1], frames[5].positions, atol=1e-10)


def test_non_finite_labels_are_failed_frames_and_a_full_disk_is_not(tmp_path):
    """An engine's NaN or infinite energy, forces or virial is a failed frame, recorded like any FP failure
    (training on it would die late, naming no frame); a full disk is the machine's failure, not the frame's:
    the step fails, and a rerun labels the frame."""
    import errno

    import pytest

    from dflow_simplify.ops.fp.base import FPTaskError

    @register("non-finite-test")
    class NonFinite(Engine):
        def label(self, frame, workdir, params, files_dir=None):
            a = frame.to("ase/structure")[0]
            a.calc = EMT()
            lab = dpdata.LabeledSystem(a, fmt="ase/structure", type_map=["Ag", "Au"])
            which = params["which"].pop(0)
            if which == "energy":
                lab.data["energies"][:] = np.nan
            elif which == "virial":
                lab.data["virials"][0, 1, 1] = np.inf
            elif which == "disk":
                raise OSError(errno.ENOSPC, "No space left on device", str(workdir))
            elif which == "disk in the code":
                raise FPTaskError("command exited with code 1: vasp_std", ["forrtl: No space left on device"])
            return lab

    try:
        s = dpdata.System(_atoms(4), fmt="ase/structure", type_map=["Ag", "Au"])
        (s + s + s).to("deepmd/npy", str(tmp_path / "sys"))
        multi, _, failures = label_frames([str(tmp_path)], {"0/sys": [0, 1, 2]}, ["Ag", "Au"], "non-finite-test",
                                          {"which": ["energy", "ok", "virial"]}, tmp_path / "w")
        assert multi.get_nframes() == 1 and [f["frame"] for f in failures] == [0, 2]
        assert [f["kind"] for f in failures] == ["failed", "failed"]
        assert failures[0]["reason"] == "non-finite label: energies hold NaN or infinity"
        assert failures[1]["reason"] == "non-finite label: virials hold NaN or infinity"
        for which in ("disk", "disk in the code"):
            with pytest.raises(OSError, match="No space left on device|ran out of space"):
                label_frames([str(tmp_path)], {"0/sys": [0]}, ["Ag", "Au"], "non-finite-test", {"which": [which]},
                             tmp_path / "w2")
    finally:
        ENGINES.pop("non-finite-test")
