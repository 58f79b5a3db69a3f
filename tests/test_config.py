"""Config: DP-GEN's own simplify.json accepted as is; malformed configs rejected with the key named."""

import copy
import json
import shutil
from pathlib import Path

import pytest

from dflow_simplify.workflows.cli import main
from dflow_simplify.workflows.config import ConfigError, load_config, validate

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def example(example_inputs):
    """This module needs the example's config and data only: stand-in models, no training."""
    return example_inputs


def _mapbi3(tmp_path, **changes) -> Path:
    shutil.copytree(DATA / "mapbi3", tmp_path / "mapbi3")
    cfg_path = tmp_path / "mapbi3" / "simplify_example" / "simplify.json"
    j = json.loads(cfg_path.read_text())
    j.update(changes)
    out = cfg_path.with_name("config.json")
    out.write_text(json.dumps(j))
    return out


def test_dpgen_mapbi3_config_passes_check_with_dftd3(tmp_path, capsys):
    path = _mapbi3(tmp_path, fp_style="dftd3")
    assert main([str(path), "--check"]) == 0
    cfg = load_config(path)
    assert cfg.systems == {"0/sys.000": 12, "0/sys.001": 12}
    assert cfg.jdata["model_devi_f_trust_lo"] == 0.3 and cfg.jdata["model_devi_e_trust_hi"] == 1e10
    assert cfg.init_mode == "scratch"  # that config names no training_iter0_model_path
    assert "24 frames" in capsys.readouterr().out


def test_dpgen_mapbi3_config_with_vasp_as_is(tmp_path, capsys):
    """DP-GEN's own VASP config: its POTCARs are not shipped, so the check names the first one missing;
    with (placeholder) POTCARs in place, it passes, INCAR, POTCARs and fp_skip_bad_box taken as DP-GEN does."""
    path = _mapbi3(tmp_path)
    assert main([str(path), "--check"]) == 2
    assert "fp_params.pp_files for fp_style 'vasp': file ../vasp_inputs/POTCAR_I not found" in capsys.readouterr().err
    j = json.loads(path.read_text())
    pp = path.parent / j["fp_pp_path"]
    pp.mkdir()
    for name in j["fp_pp_files"]:
        (pp / name).write_text(name)
    cfg = load_config(path)
    assert cfg.fp_style == "vasp" and len(cfg.fp_files) == 1 + len(j["type_map"])
    assert cfg.jdata["fp_skip_bad_box"] == "length_ratio:5;height_ratio:5" and cfg.jdata["ratio_failed"] == 0.3


def test_legacy_trust_keys_and_dpgen_014_list_forms(example):
    j = json.loads((example / "config.json").read_text())
    j["f_trust_lo"] = j.pop("model_devi_f_trust_lo")
    j["f_trust_hi"] = j.pop("model_devi_f_trust_hi")
    j["e_trust_lo"], j["e_trust_hi"] = 0.05, 0.5
    j["pick_data"] = ["data/pick"]
    j["sys_batch_size"] = [2]
    cfg = validate(j, example)
    assert cfg.jdata["model_devi_f_trust_lo"] == 0.17 and cfg.jdata["model_devi_e_trust_hi"] == 0.5
    assert len(cfg.iter0_models) == 4 and cfg.init_mode == "init_model"
    j["training_iter0_model_path"] = "models/00*"  # the string form too
    assert len(validate(j, example).iter0_models) == 4


MALFORMED = [
    ("unknown key", lambda j: j.update(pick_numbr=3), "pick_numbr"),
    ("wrong type", lambda j: j.update(init_pick_number="ten"), "init_pick_number"),
    ("missing key", lambda j: j.pop("numb_models"), "numb_models"),
    ("f lo > hi", lambda j: j.update(model_devi_f_trust_lo=2.0, model_devi_f_trust_hi=1.0), "model_devi_f_trust_lo"),
    ("e lo > hi", lambda j: j.update(model_devi_e_trust_lo=2.0, model_devi_e_trust_hi=1.0), "model_devi_e_trust_lo"),
    ("no pick data", lambda j: j.update(pick_data="data/nowhere"), "pick_data"),
    ("type_map mismatch", lambda j: j.update(type_map=["Ag", "Cu"]), "type_map"),
    ("model count", lambda j: j.update(numb_models=3), "training_iter0_model_path"),
    ("bad backend", lambda j: j.update(train_backend="jax"), "train_backend"),
    ("bad fp_params", lambda j: j.update(fp_params={"method": "pbe", "dampng": "d3bj"}), "dampng"),
    ("negative pick", lambda j: j.update(iter_pick_number=0), "iter_pick_number"),
    ("bad step config", lambda j: j.update(step_configs={"run_fp": {"group_size": 0}}), "step_configs.run_fp.group_size"),
    ("true error without labels", lambda j: j.update(true_error_f_trust_lo=0.1), "true_error_f_trust_lo"),
    ("true error lo > hi", lambda j: j.update(labeled=True, true_error_e_trust_lo=0.2, true_error_e_trust_hi=0.1),
     "true_error_e_trust_lo"),
    ("unknown select style", lambda j: j.update(select_style="best"), "select_style"),
    ("negative probe", lambda j: j.update(probe_number=-1), "probe_number"),
    ("conv without probe", lambda j: j.update(conv_e_rmse=0.01), "conv_e_rmse"),
    ("conv not positive", lambda j: j.update(probe_number=5, conv_f_rmse=0), "conv_f_rmse"),
    ("relative epsilon not positive", lambda j: j.update(relative_f_epsilon=0), "relative_f_epsilon"),
]


@pytest.mark.parametrize("what,change,key", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_config_is_rejected_naming_the_key(example, tmp_path, capsys, what, change, key):
    j = json.loads((example / "config.json").read_text())
    change(j)
    for sub in ("data", "models"):
        (tmp_path / sub).symlink_to(example / sub)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(j))
    assert main([str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and key in err, err


def test_not_json_and_missing_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main([str(bad), "--check"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main([str(tmp_path / "none.json"), "--check"]) == 2
    assert "not found" in capsys.readouterr().err


def test_labeled_mode_needs_labels(tmp_path):
    shutil.copytree(DATA / "mapbi3", tmp_path / "m")
    for f in (tmp_path / "m" / "data").rglob("force.npy"):
        f.unlink()
    j = json.loads((DATA / "mapbi3/simplify_example/simplify.json").read_text())
    j.update(labeled=True)
    with pytest.raises(ConfigError, match="lacks force.npy, which labeled: true needs"):
        validate(copy.deepcopy(j), tmp_path / "m" / "simplify_example")


def test_dpgen_true_error_keys_are_accepted_as_is_in_labeled_mode(tmp_path):
    """DP-GEN's true-error keys (dpgen PR #1321) with its MAPbI3 config in labeled mode: taken, and handed to
    SelectConfs; the new selection keys default to DP-GEN's behaviour."""
    from dflow_simplify.workflows.build import select_parameters

    path = _mapbi3(tmp_path, labeled=True, true_error_f_trust_lo=0.1, true_error_f_trust_hi=0.5,
                   true_error_e_trust_lo=0.01)
    p = select_parameters(load_config(path))
    assert (p.trust.f_err_lo, p.trust.f_err_hi, p.trust.e_err_lo) == (0.1, 0.5, 0.01)
    assert p.trust.e_err_hi == 1e10 and p.select_style == "random" and p.probe_number == 0
    assert p.conv_e_rmse is None and p.conv_f_rmse is None and p.trust.uses_true_error
    assert p.relative_f_epsilon is None
    assert type(p).from_dict(p.as_dict()) == p  # the round trip through the workflow's parameter
    relative = select_parameters(load_config(_mapbi3(tmp_path / "rel", labeled=True, relative_f_epsilon=0.5)))
    assert relative.relative_f_epsilon == 0.5 and type(p).from_dict(relative.as_dict()) == relative
