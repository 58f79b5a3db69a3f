"""Gather what a finished (or running) workflow produced: per-iteration counts, models, one dataset."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import dpdata
from dflow import download_artifact

from dflow_simplify.ops.data import find_systems
from dflow_simplify.ops.loop_state import CONVERGED, NOTHING_SELECTED, STOP_ITER
from dflow_simplify.ops.select_confs import iter_index_of

from .model_errors import evaluate_in_subprocess, learning_curve, model_set, per_system, set_rmse
from .step_times import per_iteration, per_stage, step_times

ITER_COLUMNS = ("iteration", "n_pool", "n_candidate", "n_accurate", "n_failed", "n_selected", "n_probe", "n_relabeled",
                "n_fp_failed", "n_bad_box")
MODEL_SUFFIXES = (".pb", ".pth", ".pt")  # model files the report evaluates (the fake OPs of the tests write others)


def _download_json(artifact) -> object:
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(_download_files(artifact, Path(tmp), "json", "*.json")[0].read_text())


def _sliced_int(value) -> int:
    """An int output of one slice; dflow wraps it as [{"dflow_list_item": v, "order": i}]."""
    if isinstance(value, (str, int)):
        return int(value)
    return sum(int(item["dflow_list_item"]) for item in value)


def _by_key(steps) -> dict:
    return {s.key: s for s in steps if getattr(s, "key", None)}


def iteration_rows(steps) -> list[dict]:
    """One row per iteration whose select-confs finished, with the FP outcome of its picks."""
    keyed = _by_key(steps)
    rows = []
    for key in sorted(k for k in keyed if k.endswith("--select-confs")):
        step = keyed[key]
        if step.phase != "Succeeded":
            continue
        rep = _download_json(step.outputs.artifacts["report"])
        prefix = key[: -len("--select-confs")]
        fp_keys = [k for k in keyed if re.fullmatch(re.escape(prefix) + r"--run-fp-\d+", k)]
        fps = [keyed[k] for k in fp_keys if keyed[k].phase == "Succeeded"]
        row = {c: rep.get(c) for c in ITER_COLUMNS if c in rep}
        row["n_relabeled"] = sum(_sliced_int(s.outputs.parameters["n_labeled"].value) for s in fps)
        row["n_fp_failed"] = sum(_sliced_int(s.outputs.parameters["n_failed"].value) for s in fps)
        row["n_bad_box"] = sum(_sliced_int(s.outputs.parameters["n_skipped"].value) for s in fps)
        row["go_on"] = rep.get("go_on")
        row["stopped_by"] = rep.get("stopped_by")
        row["probe_error"] = rep.get("probe_error")
        row["histograms"] = rep.get("histograms") or {}
        row["fp_done"] = len(fps) == len(fp_keys) == (rep["fp_groups"] if "fp_groups" in rep else len(fp_keys))
        rows.append(row)
    return rows


def measured_errors(rows: list[dict]) -> list[dict]:
    """Per iteration with a probe: the models' error on frames they had not seen (the probe drawn and relabeled
    the round before) and the frames relabeled so far (their training set plus the probe itself)."""
    out, before = [], 0
    for r in rows:
        if r.get("probe_error"):
            out.append({"iteration": r["iteration"], "relabeled_before": before, **r["probe_error"]})
        before += r.get("n_relabeled") or 0
    return out


def _download_files(artifact, tmp: Path, name: str, pattern: str) -> list[Path]:
    download_artifact(artifact, path=tmp / name)
    return sorted(f for f in (tmp / name).rglob(pattern) if ".dflow" not in f.parts)


def picks_per_iteration(steps) -> dict[int, list[list]]:
    """Iteration -> the frames its select-confs picked ([system key, frame]; the probe is not among them)."""
    picks = {}
    for key, step in sorted(_by_key(steps).items()):
        if key.endswith("--select-confs") and step.phase == "Succeeded" and "picked" in step.outputs.artifacts:
            ids = _download_json(step.outputs.artifacts["picked"])
            picks[iter_index_of(key)] = [[k, i] for k, frames in ids.items() for i in frames]
    return picks


def iteration_models(steps, tmp: Path) -> dict[int, list[Path]]:
    """Iteration -> its trained models (frozen files, one per distinct file: in debug mode a slice's artifact
    may show its siblings' files too)."""
    found: dict[int, dict[str, Path]] = {}
    for key, step in sorted(_by_key(steps).items()):
        if step.phase == "Succeeded" and re.search(r"--run-train-\d+$", key):
            for f in _download_files(step.outputs.artifacts["model"], tmp, key, "graph.*"):
                if f.suffix in MODEL_SUFFIXES:
                    found.setdefault(iter_index_of(key), {})[hashlib.sha256(f.read_bytes()).hexdigest()] = f
    return {it: sorted(files.values()) for it, files in found.items()}


def training_fits(steps, tmp: Path) -> dict[str, list[dict]]:
    """Iteration -> the exact fits' records (train_style exact: each RunTrain's `lcurve` output is its fit.json),
    one per model; empty for dp train."""
    fits: dict[str, list[dict]] = {}
    for key, step in sorted(_by_key(steps).items()):
        if step.phase == "Succeeded" and re.search(r"--run-train-\d+$", key) and "lcurve" in step.outputs.artifacts:
            for f in _download_files(step.outputs.artifacts["lcurve"], tmp, key, "fit.json")[:1]:
                record = json.loads(f.read_text())
                record.pop("seconds", None)  # report.json holds no times (timing.json does): equal runs, equal reports
                fits.setdefault(str(iter_index_of(key)), []).append(record)
    return fits


def evaluation_request(cfg, dataset: Path, final_models: list[Path], by_iteration: dict[int, list[Path]],
                       picks: dict[int, list], last: int) -> dict:
    """What model_errors evaluates: the originals and the final models on every relabeled frame (with parity
    data), each earlier iteration's models on the frames they picked."""
    from .config import is_s3_uri

    j = cfg.jdata
    sets = []
    originals = [m for m in cfg.iter0_models if not is_s3_uri(m)]
    if originals:
        sets.append({"name": "originals", "models": originals, "substitution": j.get("element_substitution") or {},
                     "head": j.get("model_branch"), "frames": None, "parity": True})
    for it, models in sorted(by_iteration.items()):
        if it != last and picks.get(it):
            sets.append({"name": model_set(it, last), "models": [str(m) for m in models], "frames": picks[it],
                         "parity": False})
    if final_models:
        sets.append({"name": "final", "models": [str(m) for m in final_models], "frames": None, "parity": True})
    return {"type_map": j["type_map"], "dataset": str(dataset), "sets": sets}


def model_error_summary(result: dict, rows: list[dict], picks: dict[int, list], last: int, systems) -> dict:
    """report.json's `model_errors`: the originals' and final models' RMSE on every relabeled frame, the learning
    curve, per system, what could not be evaluated."""
    if "error" in result:
        return {"skipped": {"all models": result["error"]}}
    before, relabeled_before = 0, {}
    for r in rows:
        relabeled_before[r["iteration"]] = before
        before += r.get("n_relabeled") or 0
    return {"originals_on_relabeled": _rounded(set_rmse(result, "originals")),
            "final_on_relabeled": _rounded(set_rmse(result, "final")),
            "learning_curve": [{**p, "models": _rounded(p["models"]), "originals": _rounded(p["originals"])}
                               for p in learning_curve(result, picks, relabeled_before, last)],
            "per_system": {k: {n: _rounded(v) for n, v in e.items()} for k, e in per_system(result, systems).items()},
            "skipped": result.get("skipped") or {}}


def _rounded(err: dict | None) -> dict | None:
    return None if err is None else {k: v if k == "n_frames" or v is None else round(v, 6) for k, v in err.items()}


def settings_of(cfg) -> dict:
    """The config's values the page names (trust levels, picks, stopping rules), and pick_data's systems."""
    from .build import select_parameters

    p, j = select_parameters(cfg), cfg.jdata
    trust = {k: v for k, v in vars(p.trust).items() if v is not None and v < 1e9}
    return {"fp_style": cfg.fp_style, "numb_models": j["numb_models"], "train_backend": j["train_backend"],
            "init_mode": cfg.init_mode, "train_style": cfg.train_style, "init_pick_number": p.init_pick_number,
            "iter_pick_number": p.iter_pick_number,
            "select_style": p.select_style, "trust": trust, "relative_f_epsilon": p.relative_f_epsilon,
            "probe_number": p.probe_number, "conv_e_rmse": p.conv_e_rmse, "conv_f_rmse": p.conv_f_rmse,
            "stop_iter": p.stop_iter, "type_map": j["type_map"], "systems": dict(cfg.systems)}


def consolidate_dataset(src: str | os.PathLike, dst: str | os.PathLike, type_map: list[str]) -> int:
    """Merge every relabeled group below `src` into one deepmd/npy set per formula in `dst`,
    with `frame_ids.json` (pick_data system and frame of every frame, in order)."""
    multi = dpdata.MultiSystems(type_map=type_map)
    sources: dict[str, list] = {}
    for rel in find_systems(str(src)):
        sys_dir = Path(src, rel)
        system = dpdata.LabeledSystem(str(sys_dir), fmt="deepmd/npy", type_map=type_map)
        ids_file = sys_dir / "frame_ids.json"
        ids = json.loads(ids_file.read_text()) if ids_file.exists() else [None] * len(system)
        multi.append(system)
        sources.setdefault(system.formula, []).extend(ids)
    if Path(dst).exists():
        shutil.rmtree(dst)
    Path(dst).mkdir(parents=True)
    if multi.get_nframes():
        multi.to_deepmd_npy(str(dst), set_size=10**9)
        for name in multi.systems:
            Path(dst, name, "frame_ids.json").write_text(json.dumps(sources[name]))
    return multi.get_nframes()


def relabeled_per_system(dataset: str | os.PathLike, systems: dict[str, int]) -> dict[str, list[int]]:
    """Where the labels went: for each pick_data system with a frame in the delivered dataset, [frames
    relabeled, frames in pick_data], read from the dataset's frame_ids.json."""
    counts: dict[str, int] = {}
    for ids_file in sorted(Path(dataset).glob("*/frame_ids.json")):
        for entry in json.loads(ids_file.read_text()):
            if entry:  # None: a frame whose group carried no frame_ids.json
                counts[entry[0]] = counts.get(entry[0], 0) + 1
    return {key: [n, systems.get(key, 0)] for key, n in sorted(counts.items())}


def step_events(steps, seen: set) -> list[str]:
    """One line per keyed OP step that ended since the last call (`seen` is updated): iteration, stage,
    how many of that stage are done in the iteration, and the frames relabeled so far."""
    keyed = {k: s for k, s in _by_key(steps).items() if getattr(s, "type", "Pod") == "Pod"}
    ended = sorted(k for k, s in keyed.items() if s.phase in ("Succeeded", "Failed", "Error") and k not in seen)
    relabeled = sum(_sliced_int(s.outputs.parameters["n_labeled"].value) for k, s in keyed.items()
                    if "--run-fp-" in k and s.phase == "Succeeded")
    lines = []
    for key in ended:
        seen.add(key)
        prefix, stage = key.split("--", 1)
        kind = re.sub(r"-\d+$", "", stage)
        done = sum(1 for k in keyed if k.startswith(prefix + "--" + kind) and k in seen)
        count = f" ({done} done)" if kind != stage else ""
        lines.append(f"[iteration {iter_index_of(key)}] {stage} {keyed[key].phase.lower()}{count}; "
                     f"frames relabeled so far: {relabeled}")
    return lines


def format_table(rows: list[dict]) -> str:
    head = ("iter", "pool", "cand", "accur", "failed", "select", "probe", "relabel", "fp_fail", "bad_box")
    lines = ["  ".join(f"{h:>7}" for h in head)]
    for r in rows:
        lines.append("  ".join(f"{r.get(c, '') if r.get(c) is not None else '':>7}" for c in ITER_COLUMNS))
    return "\n".join(lines)


def collect_outputs(wf, cfg, output: Path, wall_time: float | None = None) -> dict:
    """Download the final models and dataset of a succeeded workflow, measure the models on the relabeled
    frames (in a process of their own), write report.json, model_errors.json, timing.json and report.html."""
    from dflow import config as dflow_config

    from .build import LOOP_KEY
    from .live_line import live_steps
    from .report_page import ERRORS, TIMING, write_page

    t0, output = time.time(), Path(output)
    with live_steps("report") as step, tempfile.TemporaryDirectory() as tmp:
        step("reading the workflow's steps")
        steps = wf.query_step()
        rows = iteration_rows(steps)
        loop = _by_key(steps).get(LOOP_KEY)
        step("downloading the final models and the relabeled frames")
        models_dir, dataset_dir = output / "models", output / "dataset"
        if models_dir.exists():
            shutil.rmtree(models_dir)
        n_dataset = 0
        if loop is not None and loop.phase == "Succeeded":
            model_paths = download_artifact(loop.outputs.artifacts["models"], path=Path(tmp, "models"))
            models_dir.mkdir(parents=True)
            for i, p in enumerate(sorted(str(p) for p in model_paths)):
                shutil.copy2(p, models_dir / ("graph.%03d%s" % (i, Path(p).suffix)))
            download_artifact(loop.outputs.artifacts["dataset"], path=Path(tmp, "dataset"))
            if "probe_data" in loop.outputs.artifacts:  # relabeled, held out of the last training
                download_artifact(loop.outputs.artifacts["probe_data"], path=Path(tmp, "dataset", "probe"))
            n_dataset = consolidate_dataset(Path(tmp, "dataset"), dataset_dir, cfg.jdata["type_map"])
        last = rows[-1] if rows else {}
        report = {
            "workflow_id": wf.id,
            "converged": bool(rows) and last.get("stopped_by") in (CONVERGED, NOTHING_SELECTED),
            "stopped_by": last.get("stopped_by") or (NOTHING_SELECTED if last.get("n_selected") == 0 else STOP_ITER),
            "n_frames": cfg.n_frames,
            "n_relabeled": sum(r["n_relabeled"] for r in rows),
            "n_in_dataset": n_dataset,
            "n_fp_failed": sum(r["n_fp_failed"] for r in rows),
            "n_bad_box": sum(r["n_bad_box"] for r in rows),
            "n_failed_left": last.get("n_failed", 0) if rows else 0,
            "wall_time_s": None if wall_time is None else round(wall_time, 1),
            "iterations": [{c: r.get(c) for c in ITER_COLUMNS} for r in rows],
            "measured_error": measured_errors(rows),
            "relabeled_per_system": relabeled_per_system(dataset_dir, cfg.systems) if dataset_dir.exists() else {},
            "settings": settings_of(cfg),
            "deviation_histograms": {str(r["iteration"]): r["histograms"] for r in rows if r.get("histograms")},
            "model_errors": {},
            "training_fits": training_fits(steps, Path(tmp, "fits")),
        }
        final_models = sorted(p for p in models_dir.glob("graph.*") if p.suffix in MODEL_SUFFIXES)
        (output / ERRORS).unlink(missing_ok=True)
        if final_models and n_dataset:
            step("evaluating the original, each iteration's and the final models on the relabeled frames")
            picks, by_iteration = picks_per_iteration(steps), iteration_models(steps, Path(tmp, "iterations"))
            last_trained = max(by_iteration, default=last.get("iteration", 0))
            request = evaluation_request(cfg, dataset_dir, final_models, by_iteration, picks, last_trained)
            result = evaluate_in_subprocess(request, output / "logs" / "evaluate-models.log")
            report["model_errors"] = model_error_summary(result, rows, picks, last_trained, cfg.systems)
            final = report["model_errors"].get("final_on_relabeled")
            if final:
                report["final_rmse_on_relabeled"] = {"energy_per_atom": final["rmse_e_per_atom"], "force": final["rmse_f"],
                                                     "n_frames": final["n_frames"]}
            if "error" not in result:
                (output / ERRORS).write_text(json.dumps(result))
        step("writing report.html")
        times = step_times(steps, dflow_config["debug_workdir"] if dflow_config["mode"] == "debug" else None)
        timing = {"stages": per_stage(times), "iterations": {str(k): v for k, v in per_iteration(times).items()},
                  "report_s": round(time.time() - t0, 1)}
        # apart from wall_time_s, report.json is the same for the same run: the times go to a file of their own
        Path(output, TIMING).write_text(json.dumps(timing, indent=2))
        Path(output, "report.json").write_text(json.dumps(report, indent=2))
        page = write_page(output)
    print(format_table(rows))
    for line in summary_lines(report):
        print(line)
    print(f"report: {page}")
    if report["converged"] and report["n_failed_left"]:
        print(f"warning: {report['n_failed_left']} frames stayed above the trust_hi levels (failed) and were never "
              "relabeled; raise model_devi_f_trust_hi / e_trust_hi to include them")
    return report


def summary_lines(report: dict) -> list[str]:
    """The terminal's summary under the table: frames, the stopping rule, the models' errors."""
    from .report_page import number, stop_reason

    n, pool = report["n_relabeled"], report["n_frames"]
    lines = [f"relabeled {n} of {pool} frames ({100 * n / pool if pool else 0:.1f}% of the pool) in "
             f"{len(report['iterations'])} iterations; {stop_reason(report)['text']}"]
    errors = report.get("model_errors") or {}
    orig, final = errors.get("originals_on_relabeled"), errors.get("final_on_relabeled")
    if final:
        before = (lambda key: f"originals {number(orig[key])} -> ") if orig else (lambda key: "")
        lines.append(f"on the {final['n_frames']} relabeled frames: energy RMSE {before('rmse_e_per_atom')}final "
                     f"{number(final['rmse_e_per_atom'])} eV/atom, force RMSE {before('rmse_f')}final "
                     f"{number(final['rmse_f'])} eV/A")
    for name, why in (errors.get("skipped") or {}).items():
        lines.append(f"warning: {name} not evaluated: {why}")
    return lines
