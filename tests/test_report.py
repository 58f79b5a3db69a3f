"""The report's pieces on their own: the progress lines, where the labels went, the steps' times, the models'
errors per set of frames, the figures and the page (tests/test_report_page.py opens it in a browser)."""

import io
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from dflow_simplify.ops.classified import HIST_EDGES, histogram
from dflow_simplify.ops.loop_state import CONVERGED, NOTHING_SELECTED, STOP_ITER
from dflow_simplify.ops.op_time import op_timer, parse_op_time
from dflow_simplify.workflows import figures, model_errors, report_page, step_times
from dflow_simplify.workflows.report import relabeled_per_system, step_events, summary_lines


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


def test_an_ops_time_record_is_printed_and_read_back_even_when_it_fails():
    out = io.StringIO()
    with pytest.raises(RuntimeError), op_timer(out):
        sum(range(10**6))
        raise RuntimeError("the OP failed")
    record = parse_op_time("some output\n" + out.getvalue() + "more output\n")
    assert set(record) == {"start", "end", "cpu"} and record["end"] >= record["start"] and record["cpu"] > 0
    assert parse_op_time("no record here") is None


def test_step_times_sum_per_stage_and_span_per_iteration():
    times = {"iter-000001--run-train-0000": {"start": 0.0, "end": 10.0, "cpu": 12.0},
             "iter-000001--run-train-0001": {"start": 1.0, "end": 12.0, "cpu": 11.0},
             "iter-000001--model-devi-000000": {"start": 12.0, "end": 15.0, "cpu": 3.0},
             "iter-000002--prep-train": {"start": 20.0, "end": 21.0, "cpu": None}}
    assert step_times.per_stage(times) == [
        {"stage": "prep-train", "steps": 1, "wall_s": 1.0, "cpu_s": None},  # CPU unknown (an Argo step)
        {"stage": "run-train", "steps": 2, "wall_s": 21.0, "cpu_s": 23.0},
        {"stage": "model-devi", "steps": 1, "wall_s": 3.0, "cpu_s": 3.0}]
    assert step_times.per_iteration(times) == {1: 15.0, 2: 1.0}


def test_step_times_read_local_logs_and_argo_stamps(tmp_path):
    log = tmp_path / "wf" / "iter-000001--select-confs" / "log.txt"
    log.parent.mkdir(parents=True)
    log.write_text('dflow-simplify op time: {"start": 5.0, "end": 7.5, "cpu": 2.0}\n')
    local = SimpleNamespace(key="iter-000001--select-confs", workflow="wf", type="Pod", phase="Succeeded")
    group = SimpleNamespace(key="iter-000001--run-fp-group", workflow="wf", type="Steps", phase="Succeeded")
    assert step_times.step_times([local, group], str(tmp_path)) == {"iter-000001--select-confs":
                                                                    {"start": 5.0, "end": 7.5, "cpu": 2.0}}
    argo = SimpleNamespace(key="iter-000002--run-fp-000001", type="Pod", phase="Succeeded",
                           startedAt="2026-01-01T00:00:00Z", finishedAt="2026-01-01T00:01:30Z")
    record = step_times.step_times([argo])["iter-000002--run-fp-000001"]
    assert record["end"] - record["start"] == 90 and record["cpu"] is None


def _errors_result():
    """model_errors' result for 4 frames of two systems: the originals 0.1 eV/atom off everywhere, iteration 1's
    models 0.02 off on the two frames they picked, the final models 0.01 off."""
    frames = [["0/a", 0], ["0/a", 1], ["0/b", 0], ["0/b", 1]]
    none = [None] * 4

    def errs(e, f_sq, rows=range(4)):
        return {"e_err": [e if j in rows else None for j in range(4)], "f_sq": [f_sq if j in rows else None for j in range(4)],
                "f_n": [6 if j in rows else None for j in range(4)]}

    return {"frames": frames, "natoms": [2] * 4, "e_ref": [0.0] * 4,
            "sets": {"originals": errs(0.1, 6 * 0.04), "iteration 1": errs(-0.02, 6 * 0.01, rows=(2, 3)),
                     "final": errs(0.01, 0.0), "empty": {"e_err": none, "f_sq": none, "f_n": none}}, "skipped": {}}


def test_model_errors_per_set_of_frames():
    result = _errors_result()
    assert model_errors.set_rmse(result, "originals") == {"rmse_e_per_atom": pytest.approx(0.1), "rmse_f": pytest.approx(0.2),
                                                          "n_frames": 4}
    assert model_errors.set_rmse(result, "empty") is None and model_errors.set_rmse(result, "absent") is None
    picks = {0: [["0/a", 0], ["0/a", 1]], 1: [["0/b", 0], ["0/b", 1], ["0/b", 9]]}  # 0/b 9: its labeling failed
    curve = model_errors.learning_curve(result, picks, {0: 0, 1: 2}, last=2)
    assert [(p["iteration"], p["relabeled_before"], p["models"]["n_frames"]) for p in curve] == [(0, 0, 2), (1, 2, 2)]
    assert curve[1]["models"]["rmse_e_per_atom"] == pytest.approx(0.02)
    assert curve[1]["originals"]["rmse_e_per_atom"] == pytest.approx(0.1)  # the same frames, the originals
    systems = model_errors.per_system(result, ["0/a", "0/b", "0/never"])
    assert sorted(systems) == ["0/a", "0/b"] and systems["0/b"]["final"]["rmse_e_per_atom"] == pytest.approx(0.01)


def test_histogram_quantiles():
    values = np.geomspace(0.01, 1.0, 1001)
    counts = histogram(values)
    assert report_page.histogram_quantile(counts, 0.5) == pytest.approx(0.1, rel=0.1)
    assert report_page.histogram_quantile(counts, 0.9) == pytest.approx(10 ** -0.2, rel=0.1)
    assert report_page.histogram_quantile(np.zeros(len(HIST_EDGES) - 1), 0.5) is None


def _report(**changes) -> dict:
    rows = [{"iteration": 0, "n_pool": 200, "n_candidate": 200, "n_accurate": 0, "n_failed": 0, "n_selected": 10,
             "n_probe": 0, "n_relabeled": 10, "n_fp_failed": 1, "n_bad_box": 0},
            {"iteration": 1, "n_pool": 190, "n_candidate": 0, "n_accurate": 190, "n_failed": 0, "n_selected": 0,
             "n_probe": 0, "n_relabeled": 0, "n_fp_failed": 0, "n_bad_box": 0}]
    report = {"workflow_id": "wf<1>", "stopped_by": NOTHING_SELECTED, "n_frames": 200, "n_relabeled": 10,
              "n_fp_failed": 1, "n_bad_box": 0, "n_failed_left": 0, "wall_time_s": 95.3, "iterations": rows,
              "measured_error": [], "relabeled_per_system": {"0/a": [10, 150]},
              "settings": {"trust": {"f_lo": 0.17, "f_hi": 10.0}, "numb_models": 4, "systems": {"0/a": 150, "0/b": 50},
                           "stop_iter": 3, "conv_e_rmse": 0.01, "conv_f_rmse": None},
              "deviation_histograms": {"1": {"f": histogram(np.full(190, 0.05)).tolist(),
                                             "e": histogram(np.full(190, 0.002)).tolist()}},
              "model_errors": {}, "timing": {"stages": [{"stage": "run-train", "steps": 4, "wall_s": 50.0, "cpu_s": 80.0}],
                                             "iterations": {"1": 61.0}, "report_s": 9.0}}
    report.update(changes)
    return report


def test_stop_reason_names_the_rule_and_its_figures():
    assert report_page.stop_reason(_report())["text"] == (
        "No frame selected in iteration 1: of the 190 frames left in the pool, 190 accurate (max force deviation < 0.17 "
        "eV/Å), 0 failed (≥ f_trust_hi 10.0 eV/Å: never relabeled), no candidate.")
    emptied = _report()
    emptied["iterations"][1].update(n_pool=0, n_accurate=0)
    assert "each of the 200 frames was relabeled (10) or retired as accurate (0" in report_page.stop_reason(emptied)["text"]
    stop = report_page.stop_reason(_report(stopped_by=STOP_ITER))
    assert stop["rule"] == STOP_ITER and "stop_iter = 3 (iteration 1)" in stop["text"]
    probe = {"iteration": 1, "relabeled_before": 10, "rmse_e_per_atom": 0.004, "rmse_f": 0.2, "n_frames": 5}
    text = report_page.stop_reason(_report(stopped_by=CONVERGED, measured_error=[probe]))["text"]
    assert "5 probe frames" in text and "energy RMSE 0.004 eV/atom ≤ conv_e_rmse 0.01" in text and "force" not in text


def test_summary_and_tables_from_the_report():
    errors = {"originals_on_relabeled": {"rmse_e_per_atom": 0.6, "rmse_f": 0.15, "n_frames": 10},
              "final_on_relabeled": {"rmse_e_per_atom": 0.05, "rmse_f": 0.14, "n_frames": 10},
              "learning_curve": [], "per_system": {"0/a": {"originals": {"rmse_e_per_atom": 0.6, "rmse_f": 0.1, "n_frames": 10},
                                                           "final": None}}}
    report = _report(model_errors=errors)
    facts = {f["id"]: f for f in report_page.summary_facts(report)}
    assert facts["frames-relabeled"]["value"] == "10" and facts["frames-relabeled"]["detail"] == "5.0% of the pool"
    assert facts["pool-size"]["detail"] == "in 2 system(s)" and facts["fp-failures"]["value"] == "1"
    assert facts["error-rmse_e_per_atom"]["value"] == "0.6 → 0.05 eV/atom"
    assert facts["time"]["value"] == "1 min 35 s" and "CPU 1 min 20 s" in facts["time"]["detail"]
    rows = report_page.iteration_table(report)
    assert rows[0]["devi_f_median"] == "–" and float(rows[1]["devi_f_median"]) == pytest.approx(0.05, rel=0.15)
    assert rows[1]["time"] == "1 min 01 s"
    systems = report_page.system_table(report)
    assert [s["system"] for s in systems] == ["0/a", "0/b"] and systems[0]["share"] == "7%" and systems[1]["orig_e"] == "–"
    lines = summary_lines(report)
    assert lines[0].startswith("relabeled 10 of 200 frames (5.0% of the pool) in 2 iterations; No frame selected")
    assert lines[1] == ("on the 10 relabeled frames: energy RMSE originals 0.6 -> final 0.05 eV/atom, "
                        "force RMSE originals 0.15 -> final 0.14 eV/A")


def test_figures_are_small_svg():
    curve = [{"iteration": 1, "relabeled_before": 10, "models": {"rmse_e_per_atom": 0.05, "rmse_f": 0.1, "n_frames": 5},
              "originals": {"rmse_e_per_atom": 0.6, "rmse_f": 0.12, "n_frames": 5}}]
    rng = np.random.default_rng(0)
    ref = rng.normal(size=20000)
    drawn = [figures.learning_curve(curve, {"rmse_e_per_atom": 0.6, "rmse_f": 0.15, "n_frames": 10},
                                    {"rmse_e_per_atom": 0.01, "rmse_f": 0.1, "x": 15}, []),
             figures.deviation({1: {"f": histogram(rng.uniform(0.01, 1, 190)).tolist()}}, {"f_lo": 0.17, "f_hi": 10.0}),
             figures.parity({"e_ref": ref[:50], "e_pred": ref[:50] + 0.01, "f_ref": ref, "f_pred": ref + 0.02})]
    for svg in drawn:
        assert svg.startswith("<?xml") and "<svg" in svg and len(svg) < 150_000
    assert "trust lo = 0.17" in drawn[1] and "final models: RMSE 0.02" in drawn[2]


def test_the_page_has_captioned_figures_and_no_raw_json(tmp_path):
    report = _report()
    (tmp_path / "report.json").write_text(json.dumps(report))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "graph.000.pb").write_text("")
    page = report_page.write_page(tmp_path).read_text()
    assert "wf&lt;1&gt;" in page and "<script" not in page and '{"' not in page
    images = re.findall(r"<img [^>]*>", page)
    assert len(images) == 1 and 'alt="Histograms of the maximum force deviation' in images[0]
    assert "data:image/svg+xml;base64," in images[0] and page.count("<figcaption>") == 1
    assert 'href="models/graph.000.pb"' in page and 'href="report.json"' in page
    assert re.search(r'id="stop-rule".*no frame selected', page, re.S)


def test_the_report_process_never_imports_tensorflow(tmp_path):
    """Everything the report runs in its own process (collect_outputs' modules, the page) leaves TensorFlow and
    deepmd-kit's backends unimported: their start-up notices cannot reach the terminal."""
    import shutil
    import subprocess
    import sys

    recorded = Path(__file__).parent / "data" / "report"
    for name in ("report.json", "model_errors.json", "timing.json"):
        shutil.copy(recorded / name, tmp_path / name)
    code = ("import sys; import dflow_simplify.workflows.report, dflow_simplify.workflows.build; "
            "from dflow_simplify.workflows.report_page import write_page; write_page(sys.argv[1]); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'torch') or m.startswith('deepmd.tf')"
            " or m.startswith('deepmd.pt') or m == 'deepmd.infer'))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]" and (tmp_path / "report.html").exists()
