"""External FP engines against real recorded outputs (tests/data/fp, see its PROVENANCE.md).

Each engine labels a frame built from the reference data; its command *replays* the recorded output
(copies it into the task folder) instead of running the code, so that input writing, the command,
parsing, units and the atom order go through the engine's real path. Parsed labels must equal the
reference values shipped with the outputs.
"""

import json
import shlex
from pathlib import Path

import dpdata
import numpy as np
import pytest

from dflow_simplify.ops.fp.base import FPTaskError, get_engine
from dflow_simplify.ops.fp.cp2k import input_from_dict, insert_structure, parse_output
from dflow_simplify.ops.loop_state import LoopState, check_ratio_failed, return_failed_frames
from dflow_simplify.ops.run_fp import label_frames
from dflow_simplify.workflows.config import ConfigError, validate

FP = Path(__file__).parent / "data" / "fp"


@pytest.fixture(scope="session")
def example(example_inputs):
    """This module needs the example's config and data only: stand-in models, no training."""
    return example_inputs


def replay(*outputs: Path) -> str:
    """A command that puts recorded outputs into the task folder, as if the code had run."""
    return " && ".join(f"cp -r {shlex.quote(str(o))} ." for o in outputs)


def raw_frame(folder: Path, index: int = 0, type_map=None):
    return dpdata.LabeledSystem(str(folder), fmt="deepmd/raw", type_map=type_map)[index]


def pp_dir(tmp_path, names):
    d = tmp_path / "files"
    d.mkdir()
    for n in names:
        (d / n).write_text(f"placeholder {n}\n")
    return d


def assert_labels(got: dpdata.LabeledSystem, ref: dpdata.LabeledSystem, virial=True, tol=1e-6):
    np.testing.assert_allclose(got["energies"], ref["energies"], atol=tol)
    np.testing.assert_allclose(got["forces"], ref["forces"], atol=tol)
    np.testing.assert_allclose(got["coords"], ref["coords"], atol=1e-8)  # the input frame's own
    if virial:
        np.testing.assert_allclose(got["virials"], ref["virials"], atol=1e-4)
    else:
        assert "virials" not in got.data


def test_vasp_h2o_outcar_matches_dpdata_reference(tmp_path):
    ref = raw_frame(FP / "vasp" / "h2o", index=2, type_map=["O", "H"])  # an MD OUTCAR: the last frame is the task's result
    engine = get_engine("vasp")
    files = pp_dir(tmp_path, ["INCAR", "O.POTCAR", "H.POTCAR"])
    params = {"command": replay(FP / "vasp" / "h2o" / "OUTCAR"), "incar": "INCAR",
              "pp_files": ["O.POTCAR", "H.POTCAR"], "envs": {}}
    (tmp_path / "task").mkdir()
    got = engine.label(ref, str(tmp_path / "task"), params, files)
    assert_labels(got, ref)
    # inputs written the VASP way: POSCAR of the frame, POTCARs in the POSCAR's element order
    assert (tmp_path / "task" / "POTCAR").read_text() == "placeholder O.POTCAR\nplaceholder H.POTCAR\n"
    assert dpdata.System(str(tmp_path / "task" / "POSCAR"), fmt="vasp/poscar").get_atom_names() == ["O", "H"]


def test_vasp_al_matches_dpgen_post_fp_reference(tmp_path):
    frame = dpdata.LabeledSystem(str(FP / "vasp" / "al1" / "OUTCAR"), fmt="vasp/outcar")
    files = pp_dir(tmp_path, ["INCAR", "Al.POTCAR"])
    params = {"command": replay(FP / "vasp" / "al1" / "OUTCAR"), "incar": "INCAR", "pp_files": ["Al.POTCAR"],
              "aniso_kspacing": [0.3, 0.3, 0.3]}
    got = get_engine("vasp").label(frame, str(tmp_path), params, files)
    # DP-GEN tests/generator/test_post_fp.py's values for this task
    assert got["energies"][0] == pytest.approx(-1.89718546, abs=1e-7)
    np.testing.assert_allclose(got["forces"][0], [[-0.110216, 0, 0.110216], [0.110216, 0, -0.110216]], atol=1e-6)
    np.testing.assert_allclose(got["virials"][0], [[1.452089, 0, 0.030366], [0, 1.67641, 0], [0.030366, 0, 1.452089]],
                               atol=1e-5)
    assert (tmp_path / "KPOINTS").read_text().splitlines()[2] == "Gamma"


def test_cp2k_parser_old_format_matches_dpdata_reference():
    ref = dpdata.LabeledSystem(str(FP / "cp2k" / "fe2o3" / "deepmd"), fmt="deepmd/npy")
    volume = abs(np.linalg.det(ref["cells"][0]))
    e, f, v = parse_output((FP / "cp2k" / "fe2o3" / "output").read_text(), ref.get_natoms(), volume)
    assert e == pytest.approx(ref["energies"][0], abs=1e-6)
    np.testing.assert_allclose(f, ref["forces"][0], atol=1e-6)
    np.testing.assert_allclose(v, ref["virials"][0], atol=1e-5)


def test_cp2k_engine_replay_matches_dpgen_reference(tmp_path):
    ref = raw_frame(FP / "cp2k" / "c2h2n2")
    params = {"command": replay(FP / "cp2k" / "c2h2n2" / "output"),
              "input": {"FORCE_EVAL": {"DFT": {"XC": {"XC_FUNCTIONAL": {"_": "PBE"}}}, "SUBSYS": {}}}}
    got = get_engine("cp2k").label(ref, str(tmp_path), params)
    assert_labels(got, ref, virial=False)  # that run printed no stress tensor
    text = (tmp_path / "input.inp").read_text()
    assert "&FORCES ON" in text and "&COORD" in text and "RUN_TYPE ENERGY_FORCE" in text


def test_cp2k_template_gets_the_frames_cell_and_coords():
    frame = raw_frame(FP / "cp2k" / "c2h2n2")
    text = insert_structure("&FORCE_EVAL\n  &SUBSYS\n    &KIND C\n    &END KIND\n  &END SUBSYS\n&END FORCE_EVAL\n", frame)
    assert text.index("&CELL") < text.index("&COORD") < text.index("&KIND C")
    coord_lines = text.split("&COORD")[1].split("&END COORD")[0].split("\n")[1:-1]
    assert len(coord_lines) == frame.get_natoms() and coord_lines[0].split()[0] == "C"
    with pytest.raises(ValueError, match="must not hold &CELL"):
        insert_structure(text, frame)
    assert "STRESS_TENSOR ANALYTICAL" in input_from_dict({"FORCE_EVAL": {"SUBSYS": {}}}, periodic=True)


def test_abacus_replay_matches_dpgen_reference_and_failed_task_is_a_failure(tmp_path):
    ref = dpdata.LabeledSystem(str(FP / "abacus" / "data.000"), fmt="deepmd/raw")
    engine = get_engine("abacus")
    files = pp_dir(tmp_path, ["H.upf", "C.upf"])
    for i in (0, 1):
        task = tmp_path / f"t{i}"
        task.mkdir()
        params = {"command": replay(FP / "abacus" / f"task.001.00000{i}" / "OUT.ABACUS"),
                  "pp_files": ["H.upf", "C.upf"], "input": {"ecutwfc": 80}, "k_points": [1, 1, 1, 0, 0, 0]}
        got = engine.label(ref[i], str(task), params, files)
        assert_labels(got, ref[i], tol=1e-5)  # dpgen's data.000 was written with rounding
        assert "ecutwfc 80" in (task / "INPUT").read_text() and (task / "H.upf").is_file()
    failed = tmp_path / "t2"
    failed.mkdir()
    params["command"] = replay(FP / "abacus" / "task.001.000002" / "OUT.ABACUS")
    with pytest.raises(FPTaskError, match="output does not parse") as err:
        engine.label(ref[0], str(failed), params, files)
    assert err.value.log_tail, "the failed task's log tail is recorded"


def test_qe_replay_matches_dpgen_reference(tmp_path):
    ref = raw_frame(FP / "qe" / "c80")
    files = pp_dir(tmp_path, ["C.UPF", "H.UPF", "N.UPF"])
    params = {"command": replay(FP / "qe" / "c80" / "output"), "pp_files": ["C.UPF", "H.UPF", "N.UPF"],
              "namelists": {"system": {"ecutwfc": 110}}, "kspacing": 0.5}
    got = get_engine("qe").label(ref, str(tmp_path), params, files)
    assert_labels(got, ref, tol=1e-5)
    text = (tmp_path / "input").read_text()
    assert "nat = 176," in text and "K_POINTS automatic" in text and "tstress = .true.," in text


def test_gaussian_replay_matches_dpgen_reference(tmp_path):
    ref = raw_frame(FP / "gaussian" / "ch4")
    assert ref.nopbc
    params = {"command": replay(FP / "gaussian" / "ch4" / "output"), "keywords": "force b3lyp/6-31g**",
              "multiplicity": 1, "charge": 0, "nproc": 1}
    got = get_engine("gaussian").label(ref, str(tmp_path), params)
    assert_labels(got, ref, virial=False)
    assert "#force b3lyp/6-31g**" in (tmp_path / "input").read_text()


def test_failed_command_and_timeout_are_recorded_with_log_tail(tmp_path):
    ref = raw_frame(FP / "cp2k" / "c2h2n2")
    engine = get_engine("cp2k")
    params = {"command": "echo 'SCF did not converge' && exit 3", "input": {"FORCE_EVAL": {"SUBSYS": {}}}}
    with pytest.raises(FPTaskError, match="exited with code 3") as err:
        engine.label(ref, str(tmp_path), params)
    assert err.value.log_tail == ["SCF did not converge"]
    params.update(command="sleep 30", timeout=0.5)
    with pytest.raises(FPTaskError, match="timed out after 0.5 s"):
        engine.label(ref, str(tmp_path), params)


def test_bad_box_is_skipped_and_recorded_not_labeled(tmp_path):
    frames = dpdata.System(str(FP / "cp2k" / "c2h2n2"), fmt="deepmd/raw")
    thin = frames.copy()
    thin.data["cells"] = np.diag([10.0, 10.0, 1.0])[None]
    frames.append(thin)
    root = tmp_path / "pick"
    frames.to("deepmd/npy", str(root / "sys"))
    _, _, failures = label_frames([str(root)], {"0/sys": [0, 1]}, ["C", "H", "N"], "cp2k",
                                            {"command": "exit 1", "input": {}}, tmp_path / "w",
                                            skip_bad_box="length_ratio:5;height_ratio:5")
    kinds = sorted((f["frame"], f["kind"]) for f in failures)
    assert kinds == [(0, "failed"), (1, "bad_box")]
    assert "length_ratio 10 > 5" in [f for f in failures if f["kind"] == "bad_box"][0]["reason"]
    # the bad box is retired at once and is no FP task for ratio_failed; the failed frame returns to the pool
    state = return_failed_frames(LoopState(systems={"0/sys": 2}, picked={"0/sys": [0, 1]}), failures)
    assert state.skipped == {"0/sys": [1]} and state.pool == {"0/sys": [0]} and state.picked == {}
    check_ratio_failed(1, [f for f in failures if f["kind"] == "bad_box"], ratio_failed=0.0)
    with pytest.raises(ValueError, match="1 of 1 FP tasks failed"):
        check_ratio_failed(0, failures, ratio_failed=0.5)


def _cp2k_config(example, **fp):
    j = json.loads((example / "config.json").read_text())
    j.update(fp_style="cp2k", fp_params={}, **fp)
    return j


def test_dpgen_keys_configure_engines_and_missing_files_are_named(example, tmp_path):
    for name in ("data", "models"):  # the example's data and models, FP input files in tmp_path
        (tmp_path / name).symlink_to(example / name)
    j = _cp2k_config(example, external_input_path="cp2k.inp")
    with pytest.raises(ConfigError, match=r"fp_params.input_template .*cp2k.inp not found"):
        validate(j, tmp_path)
    (tmp_path / "cp2k.inp").write_text("&FORCE_EVAL\n &SUBSYS\n &END SUBSYS\n&END FORCE_EVAL\n")
    cfg = validate(j, tmp_path)
    assert cfg.jdata["fp_params"]["input_template"] in cfg.fp_files
    j = _cp2k_config(example, user_fp_params={"FORCE_EVAL": {"SUBSYS": {}}}, external_input_path="cp2k.inp")
    assert validate(j, tmp_path).jdata["fp_params"]["input"] == {"FORCE_EVAL": {"SUBSYS": {}}}  # DP-GEN's precedence
    with pytest.raises(ConfigError, match="exactly one of"):
        validate(_cp2k_config(example), tmp_path)
    j = _cp2k_config(example, user_fp_params={"FORCE_EVAL": {}}, fp_skip_bad_box="length_ration:5")
    with pytest.raises(ConfigError, match="fp_skip_bad_box"):
        validate(j, tmp_path)
    j.update(fp_style="vasp", fp_incar="cp2k.inp", fp_pp_path="pp", fp_pp_files=["Ag/POTCAR", "Au/POTCAR"],
             fp_skip_bad_box="length_ratio:5")
    with pytest.raises(ConfigError, match=r"fp_params.pp_files .*pp/Ag/POTCAR not found"):
        validate(j, tmp_path)
    for el in ("Ag", "Au"):
        (tmp_path / "pp" / el).mkdir(parents=True)
        (tmp_path / "pp" / el / "POTCAR").write_text(el)
    cfg = validate(j, tmp_path)
    staged = cfg.jdata["fp_params"]["pp_files"]
    assert len(set(staged)) == 2, "two files named POTCAR get distinct names"
    assert [Path(cfg.fp_files[s]).read_text() for s in staged] == ["Ag", "Au"]
