"""Selection end to end in local mode (real training): labeled mode picking by DP-GEN's true error, and the
probe with the stopping rule on measured error."""

import json
from pathlib import Path

import dpdata
import numpy as np
import pytest

from dflow_simplify.ops.data import find_systems
from dflow_simplify.ops.loop_state import LoopState, flatten
from tests.conftest import TWO_MODELS, example_config, run_cli

pytestmark = pytest.mark.slow
TYPE_MAP = ["Ag", "Au"]


@pytest.fixture(scope="module")
def new_level_pick(example, tmp_path_factory) -> Path:
    """The example's pick_data labeled at the new level (EMT + D3 with the dftd3 engine): labeled mode's input."""
    from dflow_simplify.ops.fp.base import get_engine

    out = tmp_path_factory.mktemp("new-level") / "pick"
    engine = get_engine("dftd3")
    params = {"method": "pbe", "damping": "d3bj"}
    for rel in find_systems(str(example / "data" / "pick")):
        s = dpdata.LabeledSystem(str(example / "data" / "pick" / rel), fmt="deepmd/npy", type_map=TYPE_MAP)
        labeled = None
        for j in range(len(s)):
            lab = engine.label(s[j], str(out.parent / "tasks"), params)
            labeled = lab if labeled is None else labeled + lab
        labeled.to_deepmd_npy(str(out / rel), set_size=10**9)
    return out


def _config(tmp_path, **changes) -> Path:
    """The example with two of its models (what is checked here does not need four)."""
    return example_config(tmp_path / "inputs", **{**TWO_MODELS, **changes})


def _step_dir(run: Path, key: str) -> Path:
    return next((run / "work").glob(f"*/{key}"))


def _models(run: Path, iteration: int) -> list[Path]:
    return sorted(p for d in sorted((run / "work").glob(f"*/iter-{iteration:06d}--run-train-00??"))
                  for p in (d / "outputs" / "artifacts" / "model").rglob("*.pb"))


def _true_error_e(models, pick: Path, ids: list[tuple[str, int]]) -> dict:
    """Per frame, DP-GEN's true energy error per atom: RMS over the models of (prediction - label) / natoms."""
    from deepmd.infer import DeepPot

    dps = [DeepPot(str(m)) for m in models]
    out = {}
    for key, frame in ids:
        s = dpdata.LabeledSystem(str(pick / key.split("/", 1)[1]), fmt="deepmd/npy", type_map=TYPE_MAP)[frame]
        preds = np.array([dp.eval(s["coords"].reshape(1, -1), s["cells"].reshape(1, -1), s["atom_types"])[0].item()
                          for dp in dps])
        out[(key, frame)] = float(np.sqrt(np.mean((preds - s["energies"][0]) ** 2)) / s.get_natoms())
    return out


def test_labeled_mode_picks_the_largest_true_errors(example, new_level_pick, tmp_path):
    """true_error_e_trust_lo with select_style max_devi: iteration 1 relabels the 15 frames whose true energy
    error (against pick_data's new-level labels) is largest, as recomputed here from iteration 1's models."""
    config = _config(tmp_path, labeled=True, fp_style="none", pick_data=str(new_level_pick),
                     model_devi_f_trust_lo=1e9, model_devi_f_trust_hi=1e10, true_error_e_trust_lo=0.0,
                     select_style="max_devi", stop_iter=2)
    proc = run_cli([config, "-o", tmp_path / "run"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    run = tmp_path / "run"
    state = LoopState.load(next((_step_dir(run, "iter-000001--prep-train") / "outputs" / "artifacts" / "state")
                                .rglob("state.json")))
    picked = json.loads(next((_step_dir(run, "iter-000001--select-confs") / "outputs" / "artifacts" / "picked")
                             .rglob("picked.json")).read_text())
    picked = {(k, i) for k, v in picked.items() for i in v}
    pool = flatten(state.pool)
    errors = _true_error_e(_models(run, 1), new_level_pick, pool)
    # every picked frame's error is at least every other pool frame's (to float32, the precision ModelDevi keeps)
    lowest_picked = min(errors[p] for p in picked)
    highest_left = max(errors[p] for p in pool if p not in picked)
    print(f"true error: lowest picked {lowest_picked:.6g}, highest not picked {highest_left:.6g}")
    assert len(picked) == 15 and lowest_picked >= highest_left * (1 - 1e-5)
    assert len(set(sorted(errors, key=errors.get, reverse=True)[:15]) & picked) >= 14
    report = json.loads((run / "report.json").read_text())
    assert report["stopped_by"] == "stop_iter" and report["n_relabeled"] == 25


def test_probe_measures_unseen_frames_and_stops_the_loop(example, tmp_path):
    """probe_number 5 and conv_e_rmse: the probe is held out of iteration 1's training, measured with iteration
    1's models (recomputed here), and the loop stops on it with the probe in the delivered dataset."""
    config = _config(tmp_path, probe_number=5, conv_e_rmse=0.2, select_style="diverse")
    proc = run_cli([config, "-o", tmp_path / "run"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    run = tmp_path / "run"
    report = json.loads((run / "report.json").read_text())
    assert report["stopped_by"] == "converged" and report["converged"] is True
    assert report["iterations"][0]["n_probe"] == 5 and report["n_relabeled"] == 15 == report["n_in_dataset"]
    measured = report["measured_error"]
    assert [m["iteration"] for m in measured] == [1] and measured[0]["n_frames"] == 5
    assert measured[0]["rmse_e_per_atom"] <= 0.2
    prep = _step_dir(run, "iter-000001--prep-train") / "outputs" / "artifacts"
    ids = lambda d: {tuple(x) for f in Path(d).rglob("frame_ids.json") for x in json.loads(f.read_text())}  # noqa: E731
    train, probe = ids(prep / "iter_data"), ids(prep / "probe_data")
    assert len(train) == 10 and len(probe) == 5 and not train & probe
    # the measured error, recomputed from iteration 1's models on the probe frames (ensemble mean vs label)
    from dflow_simplify.ops.model_devi import ensemble_errors, load_models

    err = ensemble_errors(load_models(_models(run, 1)), prep / "probe_data", TYPE_MAP)
    assert np.isclose(err["rmse_e_per_atom"], measured[0]["rmse_e_per_atom"], rtol=1e-6)
    assert np.isclose(err["rmse_f"], measured[0]["rmse_f"], rtol=1e-6)
    delivered = {tuple(x) for d in (run / "dataset").iterdir() for x in json.loads((d / "frame_ids.json").read_text())}
    assert delivered == train | probe
    assert "Learning curve" in (run / "report.html").read_text()
