"""Gather what a finished (or running) workflow produced: per-iteration counts, models, one dataset."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import dpdata
from dflow import download_artifact

from dflow_simplify.ops.data import find_systems

ITER_COLUMNS = ("iteration", "n_pool", "n_candidate", "n_accurate", "n_failed", "n_selected", "n_relabeled", "n_fp_failed",
                "n_bad_box")


def _download_json(artifact) -> object:
    with tempfile.TemporaryDirectory() as tmp:
        download_artifact(artifact, path=tmp)
        files = [f for f in Path(tmp).rglob("*.json") if ".dflow" not in f.parts]
        return json.loads(files[0].read_text())


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
        row["fp_done"] = len(fps) == len(fp_keys) == (rep["fp_groups"] if "fp_groups" in rep else len(fp_keys))
        rows.append(row)
    return rows


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


def format_table(rows: list[dict]) -> str:
    head = ("iter", "pool", "cand", "accur", "failed", "select", "relabel", "fp_fail", "bad_box")
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
            n_dataset = consolidate_dataset(Path(tmp, "dataset"), dataset_dir, cfg.jdata["type_map"])
    last = rows[-1] if rows else {}
    report = {
        "workflow_id": wf.id,
        "converged": bool(rows) and last.get("n_selected") == 0,
        "stopped_by": "no frame selected" if last.get("n_selected") == 0 else "stop_iter",
        "n_frames": cfg.n_frames,
        "n_relabeled": sum(r["n_relabeled"] for r in rows),
        "n_in_dataset": n_dataset,
        "n_fp_failed": sum(r["n_fp_failed"] for r in rows),
        "n_bad_box": sum(r["n_bad_box"] for r in rows),
        "n_failed_left": last.get("n_failed", 0) if rows else 0,
        "wall_time_s": None if wall_time is None else round(wall_time, 1),
        "iterations": [{c: r.get(c) for c in ITER_COLUMNS} for r in rows],
    }
    Path(output, "report.json").write_text(json.dumps(report, indent=2))
    print(format_table(rows))
    if report["converged"] and report["n_failed_left"]:
        print(f"warning: {report['n_failed_left']} frames stayed above the trust_hi levels (failed) and were never "
              "relabeled; raise model_devi_f_trust_hi / e_trust_hi to include them")
    return report
