"""The transfer routes beyond the Ag-Au example, end to end in local mode (real training and labels): a similar
material (Cu-Au from the Ag-Au models, element_substitution) and a pretrained multi-task model's branch."""

import json
import subprocess
import sys
from pathlib import Path

import dpdata
import pytest

from dflow_simplify.ops.data import find_systems
from dflow_simplify.ops.fp.base import get_engine
from dflow_simplify.ops.model_devi import ensemble_errors
from dflow_simplify.ops.run_train import run_dp_train
from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.slow
EXAMPLES = ROOT / "examples"
AGAU, CUAU, MULTITASK = (EXAMPLES / n for n in ("ag-au-emt-d3", "cu-au-from-ag-au", "ag-au-dpa-multitask"))


def make(example: Path) -> Path:
    subprocess.run([sys.executable, str(example / "make_example.py")], check=True, capture_output=True)
    return example


def run_example(example: Path, tmp_path: Path, **changes) -> Path:
    """The example's config with `changes` (paths made absolute), run to its end in `tmp_path`/run."""
    j = json.loads((example / "config.json").read_text())
    j.update(changes)
    j["pick_data"] = str((example / j["pick_data"]).resolve())
    for key in ("training_iter0_model_path", "training_finetune_model"):
        if key in j:
            j[key] = [str(example / p) for p in ([j[key]] if isinstance(j[key], str) else j[key])]
    (tmp_path / "config.json").write_text(json.dumps(j))
    proc = run_cli([tmp_path / "config.json", "-o", tmp_path / "run"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp_path / "run"


def rmse(models, holdout: Path, type_map, substitution=None) -> tuple[float, float]:
    err = ensemble_errors(models, holdout, type_map, substitution)
    return err["rmse_e_per_atom"], err["rmse_f"]


def test_a_similar_material_beats_the_untransferred_models_and_scratch(tmp_path):
    """Cu-Au frames labeled by EMT, starting from the Ag-Au EMT models with Cu in Ag's place; against the
    same models untransferred (read through the substitution) and the same training from scratch on the
    frames the run relabeled (same total steps, every layer trainable), on 40 held-out Cu-Au frames."""
    from deepmd.infer import DeepPot

    make(CUAU)
    run = run_example(CUAU, tmp_path, numb_models=2, stop_iter=2,
                      training_iter0_model_path=["../ag-au-emt-d3/models/00[01]"])
    type_map, holdout = ["Cu", "Au"], CUAU / "data" / "holdout"
    final = [DeepPot(str(m)) for m in sorted((run / "models").glob("graph.*.pb"))]
    assert len(final) == 2 and all(m.get_type_map() == type_map for m in final)
    originals = [DeepPot(str(m)) for m in sorted((AGAU / "models").glob("00[01]/graph.pb"))]
    report = json.loads((run / "report.json").read_text())
    rounds = sum(1 for it in report["iterations"] if it["iteration"] >= 1)  # one training round each
    template = json.loads((CUAU / "config.json").read_text())["default_training_param"]
    scratch = []
    for i in range(2):
        jinput = json.loads(json.dumps(template))
        for part in ("descriptor", "fitting_net"):
            jinput["model"][part].pop("trainable", None)
            jinput["model"][part]["seed"] = 100 + i
        jinput["training"].update(numb_steps=rounds * template["training"]["numb_steps"], seed=200 + i,
                                  save_freq=rounds * template["training"]["numb_steps"] + 1)
        jinput["training"]["training_data"]["systems"] = [str(run / "dataset" / s) for s in find_systems(str(run / "dataset"))]
        work = tmp_path / f"scratch{i}"
        work.mkdir()
        (work / "input.json").write_text(json.dumps(jinput))
        scratch.append(DeepPot(str(run_dp_train(work, "tensorflow", "scratch", None)["model"])))
    e_t, f_t = rmse(final, holdout, type_map)
    e_o, f_o = rmse(originals, holdout, type_map, {"Cu": "Ag"})
    e_s, f_s = rmse(scratch, holdout, type_map)
    print(f"Cu-Au held out, E meV/atom / F eV/A: transferred {1e3 * e_t:.1f}/{f_t:.3f}  untransferred "
          f"{1e3 * e_o:.1f}/{f_o:.3f}  scratch {1e3 * e_s:.1f}/{f_s:.3f} ({rounds} x "
          f"{template['training']['numb_steps']} steps, {report['n_relabeled']} frames)")
    assert e_t < e_o and f_t < f_o
    assert e_t < e_s and f_t < f_s


def new_level_holdout(out: Path) -> Path:
    """The Ag-Au example's held-out frames at its new level (EMT + D3(BJ), the dftd3 engine)."""
    engine = get_engine("dftd3")
    for rel in find_systems(str(AGAU / "data" / "holdout")):
        s = dpdata.LabeledSystem(str(AGAU / "data" / "holdout" / rel), fmt="deepmd/npy")
        frames = [engine.label(s[j], str(out), {"method": "pbe", "damping": "d3bj"}) for j in range(len(s))]
        labeled = frames[0]
        for f in frames[1:]:
            labeled = labeled + f
        labeled.to("deepmd/npy", str(out / rel), set_size=10**6)
    return out


def fitting_layer(state: dict, prefix: str, layer: int):
    return state[f"{prefix}atomic_model.fitting_net.filter_layers.networks.0.layers.{layer}.matrix"]


def test_finetuned_from_a_multitask_branch(tmp_path):
    """Fine-tuned from the `agau` branch of the tiny multi-task DPA-1 model: the frozen fitting layers are
    that branch's (not the other head's), and the models predict the new level better than the branch."""
    import torch
    from deepmd.infer import DeepPot

    make(MULTITASK)
    run = run_example(MULTITASK, tmp_path, numb_models=2, stop_iter=2)
    final = sorted((run / "models").glob("graph.*.pth"))
    assert len(final) == 2
    pretrained = MULTITASK / "pretrained" / "multitask.pt"
    heads = torch.load(str(pretrained), map_location="cpu", weights_only=True)["model"]
    for model in final:
        state = torch.jit.load(str(model), map_location="cpu").state_dict()
        for layer in (0, 1):  # frozen by fitting_net.trainable [false, false, true, true]
            ours = fitting_layer(state, "", layer)
            assert torch.equal(ours, fitting_layer(heads, "model.agau.", layer))
            assert not torch.equal(ours, fitting_layer(heads, "model.cuau.", layer))
        assert not torch.equal(fitting_layer(state, "", 2), fitting_layer(heads, "model.agau.", 2))  # trained
    branch = tmp_path / "branch.pth"
    subprocess.run([sys.executable, "-m", "deepmd", "--pt", "freeze", "-c", str(pretrained), "--head", "agau",
                    "-o", str(branch)], check=True, capture_output=True)
    holdout = new_level_holdout(tmp_path / "holdout")
    e_t, f_t = rmse([DeepPot(str(m)) for m in final], holdout, ["Ag", "Au"])
    e_b, f_b = rmse([DeepPot(str(branch))], holdout, ["Ag", "Au"])
    n = json.loads((run / "report.json").read_text())["n_relabeled"]
    print(f"Ag-Au held out at EMT+D3, E meV/atom / F eV/A: fine-tuned {1e3 * e_t:.1f}/{f_t:.3f} ({n} frames)  "
          f"branch agau {1e3 * e_b:.1f}/{f_b:.3f}")
    assert e_t < 0.5 * e_b and f_t < 1.05 * f_b
