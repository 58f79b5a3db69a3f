"""Starting points other than same-material se_e2_a checkpoints, checked without training: a similar
material (element_substitution, the substitute command) and a multi-task model's branch (model_branch)."""

import json
from pathlib import Path

import dpdata
import numpy as np
import pytest

from dflow_simplify.ops.model_devi import model_types
from dflow_simplify.ops.run_train import train_command
from dflow_simplify.ops.start_models import check_substitution, models_type_map
from dflow_simplify.ops.substitute import substitute_data
from dflow_simplify.workflows.cli import main
from dflow_simplify.workflows.config import ConfigError, validate


@pytest.fixture(scope="module")
def cuau(example_inputs, tmp_path_factory) -> Path:
    """The Ag-Au example's pick frames as Cu-Au (Cu in Ag's place, cells x 0.91), unlabeled."""
    out = tmp_path_factory.mktemp("cuau") / "pick"
    substitute_data(example_inputs / "data" / "pick", out, {"Cu": "Ag"}, 0.91)
    return out


def test_substituted_frames_are_the_old_ones_renamed_and_scaled(example_inputs, cuau):
    old = dpdata.LabeledSystem(str(example_inputs / "data" / "pick" / "Ag24Au8"), fmt="deepmd/npy")
    new = dpdata.System(str(cuau / "Cu24Au8"), fmt="deepmd/npy")
    assert (cuau / "Cu24Au8" / "type_map.raw").read_text().split() == ["Cu", "Au"]
    assert not list(cuau.glob("*/set.*/energy.npy"))  # labels of the old material are dropped
    np.testing.assert_array_equal(new["atom_types"], old["atom_types"])
    np.testing.assert_allclose(new["cells"], 0.91 * old["cells"])
    np.testing.assert_allclose(new["coords"], 0.91 * old["coords"])


def test_substitute_refuses_crushed_cells_and_unknown_elements(example_inputs, tmp_path, capsys):
    pick = example_inputs / "data" / "pick"
    with pytest.raises(ValueError, match="shortest interatomic distance would be 0.99"):
        substitute_data(pick, tmp_path / "a", {"Cu": "Ag"}, 0.5)
    with pytest.raises(ValueError, match=r"\['Pt'\] not among the old frames' elements"):
        substitute_data(pick, tmp_path / "b", {"Cu": "Pt"})
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert main(["substitute", str(pick), str(tmp_path / "c"), "--substitute", "Cu"]) == 2
    assert "expected NEW=OLD" in capsys.readouterr().err


def test_substitution_maps_new_elements_onto_the_models_by_index():
    class Model:
        def get_type_map(self):
            return ["Ag", "Au"]

    assert models_type_map(["Au", "Cu"], {"Cu": "Ag"}) == ["Au", "Ag"]
    assert list(model_types([Model()], ["Au", "Cu"], {"Cu": "Ag"})) == [1, 0]
    with pytest.raises(ValueError, match="element_substitution"):
        model_types([Model()], ["Cu", "Au"])
    with pytest.raises(ValueError, match="would both be the models' \\['Au'\\]"):
        check_substitution(["Cu", "Au"], {"Cu": "Au"})
    with pytest.raises(ValueError, match="\\['Zr'\\] not in type_map"):
        check_substitution(["Cu", "Au"], {"Zr": "Hf"})


def _cuau_config(example_inputs, cuau, tmp_path, **changes) -> dict:
    """The example's config on the Cu-Au frames, from stand-in models that say they were trained on Ag-Au."""
    j = json.loads((example_inputs / "config.json").read_text())
    for i in range(4):
        m = tmp_path / "models" / ("%03d" % i)
        m.mkdir(parents=True)
        (m / "model.ckpt.index").write_text("")
        (m / "input.json").write_text(json.dumps({"model": {"type_map": ["Ag", "Au"]}}))
    j["default_training_param"]["model"]["type_map"] = ["Cu", "Au"]
    j.update(type_map=["Cu", "Au"], pick_data=str(cuau), training_iter0_model_path=str(tmp_path / "models" / "00*"),
             fp_style="ase", fp_params={"calculator": "emt"})
    j.update(changes)
    return j


def test_similar_material_needs_the_substitution_onto_the_models_type_map(example_inputs, cuau, tmp_path):
    j = _cuau_config(example_inputs, cuau, tmp_path)
    with pytest.raises(ConfigError, match=r"type_map \['Cu', 'Au'\] differs from the type map \['Ag', 'Au'\].*"
                                          "element_substitution"):
        validate(j, tmp_path)
    cfg = validate({**j, "element_substitution": {"Cu": "Ag"}}, tmp_path)
    assert cfg.init_mode == "init_model" and cfg.jdata["element_substitution"] == {"Cu": "Ag"}
    assert validate({**j, "type_map_from_models": {"Cu": "Ag"}}, tmp_path).jdata["element_substitution"]  # alias
    swapped = {**j, "type_map": ["Au", "Cu"], "element_substitution": {"Cu": "Ag"}}
    swapped["default_training_param"] = {**j["default_training_param"]}
    swapped["default_training_param"]["model"] = {**j["default_training_param"]["model"], "type_map": ["Au", "Cu"]}
    with pytest.raises(ConfigError, match=r"with element_substitution: \['Au', 'Ag'\]"):  # order is the models'
        validate(swapped, tmp_path)


START_MISTAKES = [
    ("substitution of an element not in type_map", dict(element_substitution={"Cu": "Ag"}), "element_substitution"),
    ("two elements onto one", dict(element_substitution={"Ag": "Au"}), "element_substitution"),
    ("substitution with finetune", dict(element_substitution={"Ag": "Cu"}, training_finetune_model="m.pt"),
     "element_substitution: deepmd-kit's finetune maps elements by name"),
    ("branch without finetune", dict(model_branch="agau"), "model_branch"),
    ("branch on tensorflow", dict(model_branch="agau", training_finetune_model="m.pt"), "train_backend 'pytorch'"),
]


@pytest.mark.parametrize("what,changes,message", START_MISTAKES, ids=[m[0] for m in START_MISTAKES])
def test_start_mistakes_are_named_before_anything_runs(example_inputs, tmp_path, capsys, what, changes, message):
    j = json.loads((example_inputs / "config.json").read_text())
    j.update(changes)
    for sub in ("data", "models"):
        (tmp_path / sub).symlink_to(example_inputs / sub)
    (tmp_path / "config.json").write_text(json.dumps(j))
    assert main([str(tmp_path / "config.json"), "--check"]) == 2
    assert message in capsys.readouterr().err


def test_finetune_from_a_branch_passes_model_branch():
    cmd = train_command("pytorch", "finetune", Path("multitask.pt"), False, "agau")
    assert cmd[-4:] == ["--finetune", "multitask.pt", "--model-branch", "agau"]
    later = train_command("pytorch", "init_model", Path("ckpt"), False, "agau")  # later iterations: no branch
    assert "--model-branch" not in later
