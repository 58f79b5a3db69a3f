"""PrepTrain and RunTrain functions on real deepmd-kit training (TensorFlow backend, a few steps)."""

import json
import shutil

import numpy as np
import pytest

from dflow_simplify.ops.prep_train import PrepTrainParams, gather_iter_data, make_train_input
from dflow_simplify.ops.run_train import batch_size_of, run_dp_train, set_training_data, system_paths


def test_train_inputs_differ_in_seeds_and_follow_dpgen_options():
    template = json.loads((__import__("pathlib").Path(__file__).parents[1] / "examples/ag-au-emt-d3/config.json")
                          .read_text())["default_training_param"]
    acts = [["tanh", "tanh"], ["tanh", "gelu"]]
    a = make_train_input(template, 0, 1, PrepTrainParams(type_map=[], activation_func=acts, seed=3))
    b = make_train_input(template, 1, 1, PrepTrainParams(type_map=[], activation_func=acts, seed=3))
    assert a["training"]["seed"] != b["training"]["seed"]
    assert a["model"]["descriptor"]["seed"] != b["model"]["descriptor"]["seed"]
    assert b["model"]["fitting_net"]["activation_function"] == "gelu"
    assert a["model"]["fitting_net"]["trainable"] == template["model"]["fitting_net"]["trainable"]
    reuse = PrepTrainParams(type_map=[], reuse_iter=2, reuse={"numb_steps": 50, "start_lr": 1e-4, "start_pref_f": 10})
    assert make_train_input(template, 0, 1, reuse)["training"]["numb_steps"] == 400
    later = make_train_input(template, 0, 2, reuse)
    assert later["training"]["numb_steps"] == 50 and later["loss"]["start_pref_f"] == 10


def sgd_last_two_layers(template: dict) -> dict:
    """The example's training input with the last hidden layer trainable too: a set-up `dp train` trains (SGD)."""
    template = json.loads(json.dumps(template))
    template["model"]["fitting_net"]["trainable"] = [False, False, True, True]
    return template


def test_batch_sizes_follow_deepmd_auto_rule():
    assert batch_size_of("auto", 32) == 1 and batch_size_of("auto", 5) == 7 and batch_size_of("auto:64", 32) == 2
    assert batch_size_of(3, 32) == 3


def _ckpt_vars(prefix):
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(prefix))
    return {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map() if "Adam" not in n}


def _graph_consts(pb):
    import tensorflow as tf

    graph = tf.compat.v1.GraphDef()
    graph.ParseFromString(pb.read_bytes())
    return {n.name: tf.make_ndarray(n.attr["value"].tensor) for n in graph.node if n.op == "Const"}


@pytest.mark.slow
def test_init_model_training_honours_trainable_lists(example, tmp_path):
    """descriptor trainable false, fitting [false, false, true, true]: only the last hidden and output layers move."""
    data = tmp_path / "iter_data"
    n = gather_iter_data(None, [example / "data" / "holdout"], data, 1)
    assert n == 2
    template = sgd_last_two_layers(json.loads((example / "config.json").read_text())["default_training_param"])
    jinput = make_train_input(template, 0, 1, PrepTrainParams(type_map=["Ag", "Au"]))
    jinput["training"].update(numb_steps=60, disp_freq=20, save_freq=60)
    set_training_data(jinput, system_paths(data), [], "auto", "auto")
    work = tmp_path / "task"
    work.mkdir()
    (work / "input.json").write_text(json.dumps(jinput))
    out = run_dp_train(work, "tensorflow", "init_model", example / "models" / "000")
    assert out["model"].exists() and out["lcurve"].exists()
    before = _ckpt_vars(example / "models" / "000" / "model.ckpt")
    after = _ckpt_vars(out["checkpoint"] / "model.ckpt")
    changed = {n for n in before if n in after and before[n].shape == after[n].shape
               and not np.array_equal(before[n], after[n])}
    frozen = [n for n in before if n.startswith(("filter_type", "layer_0_type", "layer_1_type"))]
    moving = [n for n in before if n.startswith(("layer_2_type", "final_layer_type"))]
    assert frozen and moving
    assert not changed & set(frozen), sorted(changed & set(frozen))
    assert set(moving) <= changed
    # frozen in the training's process (ops/dp_train_freeze.py): the graph holds the trained weights
    consts = _graph_consts(out["model"])
    assert all(np.array_equal(consts[n], after[n]) for n in moving if n in consts) and set(moving) & set(consts)
    shutil.rmtree(work)


def _pt_state(path):
    import torch

    state = torch.load(str(path), map_location="cpu", weights_only=False)
    state = state.get("model", state)
    return {k: v.detach().numpy().copy() for k, v in state.items() if hasattr(v, "detach") and v.dtype.is_floating_point}


@pytest.mark.slow
def test_pytorch_backend_enforces_per_layer_trainable(example, tmp_path):
    """deepmd-kit's PT backend collapses the list to all-or-nothing; RunTrain's entry point enforces it."""
    data = tmp_path / "iter_data"
    gather_iter_data(None, [example / "data" / "holdout"], data, 1)
    template = sgd_last_two_layers(json.loads((example / "config.json").read_text())["default_training_param"])
    jinput = make_train_input(template, 0, 1, PrepTrainParams(type_map=["Ag", "Au"]))
    jinput["training"].update(numb_steps=30, disp_freq=10, save_freq=30)
    set_training_data(jinput, system_paths(data), [], "auto", "auto")
    first = dict(jinput, model=dict(jinput["model"], descriptor=dict(jinput["model"]["descriptor"], trainable=True),
                                    fitting_net=dict(jinput["model"]["fitting_net"], trainable=True)))
    (tmp_path / "start").mkdir()
    (tmp_path / "start" / "input.json").write_text(json.dumps(first))
    start = run_dp_train(tmp_path / "start", "pytorch", "scratch", None)
    (tmp_path / "next").mkdir()
    (tmp_path / "next" / "input.json").write_text(json.dumps(jinput))
    out = run_dp_train(tmp_path / "next", "pytorch", "init_model", start["checkpoint"])
    assert out["model"].name == "graph.pth" and out["model"].exists()
    before, after = _pt_state(start["checkpoint"] / "model.ckpt.pt"), _pt_state(out["checkpoint"] / "model.ckpt.pt")
    fitting = {k: int(k.split(".layers.")[1].split(".")[0]) for k in before if ".fitting_net.filter_layers." in k}
    descriptor = [k for k in before if ".descriptor." in k and "mean" not in k and "stddev" not in k]
    moved = {k for k in before if k in after and not np.array_equal(before[k], after[k])}
    assert fitting and descriptor
    assert not moved & set(descriptor), sorted(moved & set(descriptor))
    assert not {k for k, layer in fitting.items() if layer < 2} & moved
    assert {k for k, layer in fitting.items() if layer >= 2} <= moved


@pytest.mark.parametrize("init_mode,descriptor,skip", [
    ("init_model", {"type": "se_e2_a", "sel": [32, 32]}, True),
    ("finetune", {"type": "se_atten", "sel": 40}, True),
    ("init_model", {"type": "se_e2_a", "sel": "auto"}, False),  # sel "auto" needs the statistics
    ("scratch", {"type": "se_e2_a", "sel": [32, 32]}, False),
    ("init_frz_model", {"type": "hybrid", "list": [{"type": "se_e2_a", "sel": [8]},
                                                   {"type": "se_e2_r", "sel": "auto:1.1"}]}, False),
])
def test_neighbor_statistics_are_skipped_only_when_the_starting_model_fixes_sel(init_mode, descriptor, skip):
    from dflow_simplify.ops.run_train import skip_neighbor_stat_by_default

    assert skip_neighbor_stat_by_default(init_mode, {"model": {"descriptor": descriptor}}) is skip


@pytest.mark.slow
def test_training_process_imports_tensorflow_without_keras():
    """dp_train_freeze.skip_keras: TensorFlow and deepmd-kit's TensorFlow backend load, Keras does not."""
    import subprocess
    import sys

    code = ("import sys; from dflow_simplify.ops.dp_train_freeze import skip_keras; skip_keras(); "
            "import deepmd.tf.entrypoints.main, tensorflow; "
            "print(sorted(m for m in ('keras', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
