"""The report's pieces on their own: lcurve parsing, the figures, report.html, the progress lines, where the
labels went."""

import json
from types import SimpleNamespace

import matplotlib.image as matplotlib_image
import numpy as np

from dflow_simplify.ops.classified import histogram
from dflow_simplify.ops.selection import TrustLevels
from dflow_simplify.workflows import figures
from dflow_simplify.workflows.report import relabeled_per_system, step_events

LCURVE = """# step       rmse_trn    rmse_e_trn    rmse_f_trn   lr
# If there is no available reference data, rmse_*_{val,trn} will print nan
      0      2.22e+00      6.64e-01      1.45e-01    1.0e-03
    100      1.10e+00      3.00e-01      1.20e-01    5.0e-04
    200      9.00e-01      1.00e-01      1.10e-01    2.5e-04
"""


def test_lcurve_columns_by_name(tmp_path):
    (tmp_path / "lcurve.out").write_text(LCURVE)
    lc = figures.read_lcurve(tmp_path / "lcurve.out")
    assert list(lc) == ["step", "rmse_trn", "rmse_e_trn", "rmse_f_trn", "lr"]
    assert lc["step"].tolist() == [0, 100, 200] and lc["rmse_e_trn"][-1] == 0.1


def _drawn(path) -> bool:
    image = matplotlib_image.imread(path)
    return image.shape[0] > 300 and image[..., :3].std() > 0.05


def test_figures_and_page_from_data(tmp_path):
    (tmp_path / "lcurve.out").write_text(LCURVE)
    rng = np.random.default_rng(0)
    devi = {1: np.abs(rng.normal(0.1, 0.05, (190, 2))), 2: np.abs(rng.normal(0.3, 0.1, (24, 2))), 3: np.zeros((0, 2))}
    hists = {it: {"f": histogram(v[:, 0]), "e": histogram(v[:, 1])} for it, v in devi.items()}  # as ModelDevi's
    trust = TrustLevels(0.17, 10.0, 1e10, 1e10)
    figures.plot_deviation(hists, trust, tmp_path / "deviation.png")
    rows = [{"iteration": 0, "n_pool": 200, "n_candidate": 200, "n_accurate": 0, "n_failed": 0, "n_selected": 10,
             "n_relabeled": 10, "n_fp_failed": 0}, {"iteration": 1, "n_pool": 190, "n_candidate": 39, "n_accurate": 151,
                                                     "n_failed": 0, "n_selected": 0, "n_relabeled": 0, "n_fp_failed": None}]
    figures.plot_counts(rows, tmp_path / "counts.png")
    figures.plot_lcurves({1: [figures.read_lcurve(tmp_path / "lcurve.out")]}, tmp_path / "lcurves.png")
    ref = rng.normal(size=30)
    figures.plot_final_error({"e_ref": ref, "e_pred": ref + 0.01, "f_ref": ref, "f_pred": ref, "rmse_e_per_atom": 0.01,
                              "rmse_f": 0.0, "n_frames": 30}, tmp_path / "final_error.png")
    measured = [{"iteration": 1, "relabeled_before": 15, "rmse_e_per_atom": 0.05, "rmse_f": 0.1, "n_frames": 5},
                {"iteration": 2, "relabeled_before": 35, "rmse_e_per_atom": 0.02, "rmse_f": 0.08, "n_frames": 5}]
    figures.plot_learning_curve(measured, tmp_path / "learning_curve.png")
    for name in figures.FIGURES:
        assert _drawn(tmp_path / name), name
    page = figures.write_html(tmp_path, {"workflow_id": "wf<1>", "iterations": rows}, list(figures.FIGURES)).read_text()
    assert "wf&lt;1&gt;" in page and "<th>n_candidate</th>" in page and "<td>151</td>" in page
    assert all(f"src='{name}'" in page for name in figures.FIGURES)


def _step(key, phase, n_labeled=None):
    params = {} if n_labeled is None else {"n_labeled": SimpleNamespace(value=str(n_labeled))}
    return SimpleNamespace(key=key, phase=phase, type="Pod", outputs=SimpleNamespace(parameters=params))


def test_progress_lines_once_per_step_with_frames_so_far():
    seen = set()
    steps = [_step("iter-000000--run-fp-000000", "Succeeded", 10), _step("iter-000001--run-train-0000", "Succeeded"),
             _step("iter-000001--run-train-0001", "Running")]
    assert step_events(steps, seen) == [
        "[iteration 0] run-fp-000000 succeeded (1 done); frames relabeled so far: 10",
        "[iteration 1] run-train-0000 succeeded (1 done); frames relabeled so far: 10"]
    assert step_events(steps, seen) == []  # nothing new
    steps[2] = _step("iter-000001--run-train-0001", "Failed")
    steps.append(_step("iter-000001--model-devi", "Succeeded"))
    assert step_events(steps, seen) == [
        "[iteration 1] model-devi succeeded; frames relabeled so far: 10",
        "[iteration 1] run-train-0001 failed (2 done); frames relabeled so far: 10"]


def test_measured_errors_count_the_frames_relabeled_before_each_measurement():
    from dflow_simplify.workflows.report import measured_errors

    probe = {"rmse_e_per_atom": 0.05, "rmse_f": 0.1, "n_frames": 5}
    rows = [{"iteration": 0, "n_relabeled": 15, "probe_error": None}, {"iteration": 1, "n_relabeled": 25, "probe_error": probe},
            {"iteration": 2, "n_relabeled": 0, "probe_error": dict(probe, rmse_e_per_atom=0.01)}]
    got = measured_errors(rows)
    assert [(m["iteration"], m["relabeled_before"], m["rmse_e_per_atom"]) for m in got] == [(1, 15, 0.05), (2, 40, 0.01)]


def test_relabeled_per_system_counts_the_dataset_frames_by_their_pick_data_system(tmp_path):
    (tmp_path / "Ag2").mkdir()
    (tmp_path / "Ag2" / "frame_ids.json").write_text(json.dumps([["0/bulk", 3], ["0/slab", 1], ["0/bulk", 0]]))
    (tmp_path / "Au2").mkdir()
    (tmp_path / "Au2" / "frame_ids.json").write_text(json.dumps([["1/hot", 7], None]))
    systems = {"0/bulk": 10, "0/slab": 4, "1/hot": 8, "1/never": 5}
    assert relabeled_per_system(tmp_path, systems) == {"0/bulk": [2, 10], "0/slab": [1, 4], "1/hot": [1, 8]}
