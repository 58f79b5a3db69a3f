"""Gather what a finished (or running) workflow produced: per-iteration counts, models, one dataset."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import dpdata
from dflow import download_artifact

from dflow_simplify.ops.data import find_systems
from dflow_simplify.ops.loop_state import CONVERGED, NOTHING_SELECTED, STOP_ITER
from dflow_simplify.ops.select_confs import iter_index_of

ITER_COLUMNS = ("iteration", "n_pool", "n_candidate", "n_accurate", "n_failed", "n_selected", "n_probe", "n_relabeled",
                "n_fp_failed", "n_bad_box")


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


def training_curves(steps, tmp: Path) -> dict:
    """Per iteration, every model's lcurve."""
    from .figures import read_lcurve

    lcurves = {}
    for key, step in sorted(_by_key(steps).items()):
        if step.phase == "Succeeded" and re.search(r"--run-train-\d+$", key):
            # a slice's artifact may show its siblings' files too (debug mode): one curve per distinct file
            for f in _download_files(step.outputs.artifacts["lcurve"], tmp, key, "lcurve.out"):
                lcurves.setdefault(iter_index_of(key), {})[hashlib.sha256(f.read_bytes()).hexdigest()] = read_lcurve(f)
    return {it: list(curves.values()) for it, curves in lcurves.items()}


def write_figures(steps, cfg, output: Path, report: dict, rows: list[dict]) -> list[str]:
    """The PNGs and report.html next to report.json; adds the final models' RMSE on the relabeled frames."""
    from . import figures
    from .build import select_parameters

    written = []
    with tempfile.TemporaryDirectory() as tmp:
        lcurves = training_curves(steps, Path(tmp))
    # the pool's deviations per iteration, as ModelDevi's slices histogrammed them (SelectConfs' report)
    devi = {r["iteration"]: r["histograms"] for r in rows if r.get("histograms")}
    if devi:
        params = select_parameters(cfg)
        figures.plot_deviation(devi, params.trust, output / "deviation.png", params.relative_f_epsilon)
        written.append("deviation.png")
    if report["iterations"]:
        figures.plot_counts(report["iterations"], output / "counts.png")
        written.append("counts.png")
    if lcurves:
        figures.plot_lcurves(lcurves, output / "lcurves.png")
        written.append("lcurves.png")
    if report.get("measured_error"):
        figures.plot_learning_curve(report["measured_error"], output / "learning_curve.png")
        written.append("learning_curve.png")
    models = sorted(p for p in Path(output, "models").glob("graph.*") if p.suffix in (".pb", ".pth"))
    err = figures.final_errors(models, output / "dataset", cfg.jdata["type_map"]) if models else {}
    if err:
        figures.plot_final_error(err, output / "final_error.png")
        written.append("final_error.png")
        report["final_rmse_on_relabeled"] = {"energy_per_atom": round(err["rmse_e_per_atom"], 6),
                                             "force": round(err["rmse_f"], 6), "n_frames": err["n_frames"]}
    figures.write_html(output, report, written)
    return written


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
    """Download the final models and dataset of a succeeded workflow and write report.json."""
    from .build import LOOP_KEY

    steps = wf.query_step()
    rows = iteration_rows(steps)
    loop = _by_key(steps).get(LOOP_KEY)
    models_dir, dataset_dir = Path(output, "models"), Path(output, "dataset")
    if models_dir.exists():
        shutil.rmtree(models_dir)
    n_dataset = 0
    with tempfile.TemporaryDirectory() as tmp:
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
    }
    figs = write_figures(steps, cfg, Path(output), report, rows)
    Path(output, "report.json").write_text(json.dumps(report, indent=2))
    print(format_table(rows))
    print(f"figures: {', '.join(figs) or '-'} and report.html in {output}")
    if report["converged"] and report["n_failed_left"]:
        print(f"warning: {report['n_failed_left']} frames stayed above the trust_hi levels (failed) and were never "
              "relabeled; raise model_devi_f_trust_hi / e_trust_hi to include them")
    return report
