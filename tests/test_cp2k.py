"""CP2K for real (Debian's cp2k, one OpenMP thread, 4-atom Ag-Au cells, SZV basis, low cutoff: ~10 s a run).

RunFP labels frames with CP2K at PBE and at PBE-D3(BJ); the difference must equal the `dftd3` engine's
D3 correction on the same frames (energy, forces and virial: units and signs of the whole CP2K path,
including the CP2K 2023 stress parser). CP2K's pair cutoff is twice its D3 R_CUTOFF.
"""

import copy
import importlib.util
import json
import os
import shutil
from pathlib import Path

import dpdata
import numpy as np
import pytest
from ase.units import Bohr
from dflow.python import OPIO

from dflow_simplify.ops.data import extract_frames
from dflow_simplify.ops.fp.dftd3 import d3_correction
from dflow_simplify.ops.run_fp import RunFP

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ag-au-cp2k"
R_CUTOFF = 12.0  # Angstrom, CP2K's D3 R_CUTOFF; its pair cutoff is 2 * R_CUTOFF

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("cp2k.psmp") is None and not os.environ.get("CI"),
                                reason="CP2K not installed (scripts/setup.sh installs Debian's cp2k)")]


def cp2k_input(d3: bool) -> dict:
    inp = copy.deepcopy(json.loads((EXAMPLE / "config.json").read_text())["user_fp_params"])
    if d3:
        inp["FORCE_EVAL"]["DFT"]["XC"]["VDW_POTENTIAL"] = {
            "POTENTIAL_TYPE": "PAIR_POTENTIAL",
            "PAIR_POTENTIAL": {"TYPE": "DFTD3(BJ)", "PARAMETER_FILE_NAME": "dftd3.dat",
                               "REFERENCE_FUNCTIONAL": "PBE", "R_CUTOFF": R_CUTOFF}}
    return inp


def run_fp(tmp_path: Path, name: str, pick: Path, d3: bool) -> dpdata.MultiSystems:
    work = tmp_path / name
    work.mkdir()
    os.chdir(work)
    extract_frames([str(pick)], {"0/Ag2Au2": [0, 1]}, ["Ag", "Au"], False, work / "frames")  # as SelectConfs does
    out = RunFP().execute(OPIO({
        "frames": work / "frames", "type_map": ["Ag", "Au"], "fp_style": "cp2k",
        "fp_params": {"command": "cp2k.psmp -i input.inp -o output", "envs": {"OMP_NUM_THREADS": "1"},
                      "timeout": 300, "input": cp2k_input(d3)},
        "fp_files": None, "skip_bad_box": "length_ratio:5;height_ratio:5"}))
    assert out["n_failed"] == 0 and out["n_labeled"] == 2, (work / out["failures"]).read_text()
    return dpdata.LabeledSystem(str(work / out["labeled_data"] / "Ag2Au2"), fmt="deepmd/npy")


@pytest.fixture
def cp2k_pick(tmp_path) -> Path:
    """The CP2K example's 4-atom Ag2Au2 frames (made by its make_example.make_pick)."""
    spec = importlib.util.spec_from_file_location("make_cp2k_example", EXAMPLE / "make_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.make_pick(tmp_path / "pick")
    return tmp_path / "pick"


def test_cp2k_pbe_d3_minus_pbe_equals_dftd3_correction(tmp_path, monkeypatch, cp2k_pick):
    monkeypatch.chdir(tmp_path)
    pbe = run_fp(tmp_path, "pbe", cp2k_pick, d3=False)
    pbe_d3 = run_fp(tmp_path, "pbe-d3", cp2k_pick, d3=True)
    frames = dpdata.System(str(cp2k_pick / "Ag2Au2"), fmt="deepmd/npy", type_map=["Ag", "Au"])
    np.testing.assert_allclose(pbe["coords"], frames["coords"][:2])  # the input frames' own structure
    np.testing.assert_allclose(pbe["cells"], frames["cells"][:2])
    assert np.abs(pbe["forces"]).max() > 0.01 and np.abs(pbe["virials"]).max() > 0.1  # real labels
    for i in range(2):
        symbols = [frames["atom_names"][t] for t in frames["atom_types"]]
        e, f, v = d3_correction(symbols, frames["coords"][i], frames["cells"][i], True, "pbe", "d3bj",
                                cutoff={"disp2": 2 * R_CUTOFF / Bohr, "disp3": 40.0, "cn": 40.0})
        assert pbe_d3["energies"][i] - pbe["energies"][i] == pytest.approx(e, abs=1e-5)
        np.testing.assert_allclose(pbe_d3["forces"][i] - pbe["forces"][i], f, atol=1e-5)
        np.testing.assert_allclose(pbe_d3["virials"][i] - pbe["virials"][i], v, atol=1e-4)


def test_local_run_with_cp2k_labels_and_an_injected_failure(tmp_path, example, cp2k_pick):
    """The CP2K example end to end (3 iterations, ~2 min), its command failing for one frame on purpose."""
    from dflow_simplify.ops.fp.cp2k import parse_output

    from .conftest import run_cli

    j = json.loads((EXAMPLE / "config.json").read_text())
    j["pick_data"] = str(cp2k_pick)
    j["training_iter0_model_path"] = [str(example / "models" / "00[01]")]
    j["ratio_failed"] = 0.5
    # an injected failure: frame 4 (picked in iteration 0) exits 3 instead of running CP2K
    j["fp_params"]["command"] = ('case "$PWD" in *.000004) echo injected failure; exit 3;; esac; '
                                 "cp2k.psmp -i input.inp -o output")
    (tmp_path / "config.json").write_text(json.dumps(j))
    out = tmp_path / "out"
    proc = run_cli([tmp_path / "config.json", "-o", out])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["iterations"][0]["n_fp_failed"] == 1 and report["n_fp_failed"] >= 1
    failures = [f for p in out.glob("work/*/iter-000000--run-fp-*/workdir/group.*/failures.json")
                for f in json.loads(p.read_text())]
    assert [(f["frame"], f["engine"], f["kind"]) for f in failures] == [(4, "cp2k", "failed")]
    assert "exited with code 3" in failures[0]["reason"] and failures[0]["log_tail"] == ["injected failure"]

    dataset = dpdata.LabeledSystem(str(out / "dataset" / "Ag2Au2"), fmt="deepmd/npy")
    ids = [fid for _, fid in json.loads((out / "dataset" / "Ag2Au2" / "frame_ids.json").read_text())]
    assert 4 not in ids and dataset.get_nframes() == report["n_in_dataset"] >= 4
    # the dataset's labels are CP2K's: each equals the output of that frame's CP2K task
    for i, fid in enumerate(ids):
        task_out = next(out.glob(f"work/*/*run-fp-*/workdir/group.*/tasks/task.0_Ag2Au2.{fid:06d}/output"))
        e, f, v = parse_output(task_out.read_text(), 4, abs(np.linalg.det(dataset["cells"][i])))
        assert dataset["energies"][i] == pytest.approx(e, abs=1e-6)
        np.testing.assert_allclose(dataset["virials"][i], v, atol=1e-6)
    assert (out / "models" / "graph.001.pb").is_file()
