"""The machinery's own cost per iteration, as pick_data grows: time outside training and labeling, and the
bytes every step would move through S3 on Argo.

    .venv/bin/python benchmarks/overhead.py                    # 10^3, 10^4, 10^5 frames

Each size runs the real workflow in local mode (submit_simplify.py) on a synthetic pick_data: 2-atom Ag-Au
cells with random labels (`labeled: true`, so labeling costs nothing), the Ag-Au example's 4 models,
20 training steps, 10 frames picked per iteration, two training iterations (`stop_iter`).
From the step folders of the run:
  time     per iteration: its span (first step start to the next iteration's start), minus the spans of
           RunTrain (the slices) and RunFP; the rest split into ModelDevi, SelectConfs, PrepTrain and
           dflow's own scheduling (what is left)
  bytes    per iteration: every step's input and output artifacts (on Argo each is an S3 download or upload):
           pick_data reads, index files (loop state, deviations: .json/.npz), the rest (models, checkpoints, frames)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from dflow_simplify.ops.select_confs import iter_index_of

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "ag-au-emt-d3"


def synthetic_pick_data(root: Path, n_frames: int, seed: int = 0) -> None:
    """One deepmd/npy system of `n_frames` rattled 2-atom fcc Ag-Au cells with random labels."""
    if (root / "AgAu" / "set.000" / "box.npy").exists():
        return
    rng = np.random.default_rng(seed)
    a = 4.12
    cell = 0.5 * a * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]], float)
    cells = np.repeat(cell[None], n_frames, 0) * (1 + rng.uniform(-0.02, 0.02, (n_frames, 1, 1)))
    coords = np.stack([np.zeros((n_frames, 3)), 0.5 * (cells[:, 0] + cells[:, 1])], axis=1)
    coords += rng.normal(0, 0.1, coords.shape)
    d = root / "AgAu" / "set.000"
    d.mkdir(parents=True)
    (root / "AgAu" / "type.raw").write_text("0\n1\n")
    (root / "AgAu" / "type_map.raw").write_text("Ag\nAu\n")
    np.save(d / "box.npy", cells.reshape(n_frames, 9))
    np.save(d / "coord.npy", coords.reshape(n_frames, 6))
    np.save(d / "energy.npy", rng.normal(-6.0, 0.1, n_frames))
    np.save(d / "force.npy", rng.normal(0, 0.5, (n_frames, 6)))
    np.save(d / "virial.npy", rng.normal(0, 0.1, (n_frames, 9)))


def config(pick: Path, volume: bool) -> dict:
    cfg = json.loads((EXAMPLE / "config.json").read_text())
    cfg.update(pick_data=str(pick), labeled=True, training_iter0_model_path=[str(EXAMPLE / "models" / "00*")],
               init_pick_number=10, iter_pick_number=10, model_devi_f_trust_lo=0.0, model_devi_f_trust_hi=1e9,
               stop_iter=2)
    if volume:  # read in place (on Argo: a mounted claim), not an artifact
        cfg["dflow_config"] = {"pick_data_volume": {"claim_name": "datasets", "mount_path": str(pick)}}
    cfg.pop("fp_params", None)
    tr = cfg["default_training_param"]["training"]
    tr.update(numb_steps=20, disp_freq=10, save_freq=20)
    return cfg


def artifact_bytes(step: Path) -> dict[str, int]:
    """Bytes of a step's input and output artifacts: pick_data (inputs), index files (the loop state and the
    deviations: .json, .npz) and the rest (models, checkpoints, frames). Debug mode links step inputs to other
    steps' folders: the links are followed."""
    out = {"pick_data": 0, "index": 0, "other": 0}
    for top in (step / "inputs" / "artifacts", step / "outputs" / "artifacts"):
        for d, _, names in os.walk(top, followlinks=True):
            rel = Path(d).relative_to(top).parts
            if ".dflow" in rel:
                continue
            for f in names:
                kind = ("pick_data" if top.parent.name == "inputs" and rel[:1] == ("pick_data",)
                        else "index" if Path(f).suffix in (".json", ".npz") else "other")
                out[kind] += Path(d, f).stat().st_size
    return out


def step_records(wf_dir: Path) -> list[dict]:
    """Each OP step's key, start (its script written), end (its phase written), input/output artifact bytes."""
    out = []
    for step in sorted(p for p in wf_dir.glob("iter-*") if (p / "type").exists() and (p / "type").read_text().strip() == "Pod"):
        if not (step / "script").exists():
            continue
        out.append({"key": step.name, "start": (step / "script").stat().st_mtime, "end": (step / "phase").stat().st_mtime,
                    **artifact_bytes(step)})
    return out


def per_iteration(records: list[dict]) -> list[dict]:
    by_iter = defaultdict(list)
    for r in records:
        by_iter[iter_index_of(r["key"])].append(r)
    its = sorted(by_iter)
    rows = []
    for k, it in enumerate(its):
        steps = by_iter[it]
        start = min(s["start"] for s in steps)
        end = min(s["start"] for s in by_iter[its[k + 1]]) if k + 1 < len(its) else max(s["end"] for s in steps)

        def span(kind):
            sel = [s for s in steps if f"--{kind}" in s["key"]]
            return (max(s["end"] for s in sel) - min(s["start"] for s in sel)) if sel else 0.0

        total, train, fp = end - start, span("run-train"), span("run-fp")
        parts = {kind: span(kind) for kind in ("model-devi", "select-confs", "prep-train")}
        rows.append({"iteration": it, "total_s": total, "train_s": train, "fp_s": fp, "overhead_s": total - train - fp,
                     **{f"{k}_s": v for k, v in parts.items()},
                     "scheduling_s": total - train - fp - sum(parts.values()),
                     **{f"{c}_bytes": sum(s[c] for s in steps) for c in ("pick_data", "index", "other")}})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--work", default=str(ROOT / "benchmarks" / "runs" / "overhead"))
    args = p.parse_args()
    if not list(EXAMPLE.glob("models/00*/model.ckpt.index")):
        subprocess.run([sys.executable, str(EXAMPLE / "make_example.py")], check=True)
    work = Path(args.work).resolve()
    results = {}
    for mode in ("artifact", "volume"):
        for n in args.sizes:
            pick = work / f"pick-{n}"
            synthetic_pick_data(pick, n)
            name = f"{mode}-{n}"
            (work / f"{name}.json").write_text(json.dumps(config(pick, mode == "volume"), indent=1))
            out = work / name
            if not (out / "report.json").exists():
                proc = subprocess.run([sys.executable, str(ROOT / "submit_simplify.py"), str(work / f"{name}.json"),
                                       "-o", str(out)], capture_output=True, text=True)
                (work / f"{name}.log").write_text(proc.stdout + proc.stderr)
                if proc.returncode:
                    sys.exit(f"the run {name} failed; see {work / f'{name}.log'}")
            wf_id = json.loads((out / "workflow.json").read_text())["workflow_id"]
            results[name] = per_iteration(step_records(out / "work" / wf_id))
    (work / "results.json").write_text(json.dumps(results, indent=1))
    print(f"machine: {platform.node()}, {os.cpu_count()} cores; local mode, 4 models, 20 steps, 10 frames per pick")
    print("artifact: pick_data handed to the steps as an artifact (on Argo: downloaded by ModelDevi and SelectConfs);"
          " volume: dflow_config.pick_data_volume (read in place)")
    print(f"{'run':>14}{'iter':>5}{'total s':>9}{'train s':>9}{'fp s':>7}{'outside':>9}{'devi s':>8}{'select':>8}"
          f"{'prep':>7}{'sched':>7}{'pick_data MB':>14}{'index MB':>10}{'other MB':>10}")
    for n, rows in results.items():
        for r in rows:
            print(f"{n:>14}{r['iteration']:>5}{r['total_s']:>9.1f}{r['train_s']:>9.1f}{r['fp_s']:>7.1f}{r['overhead_s']:>9.1f}"
                  f"{r['model-devi_s']:>8.1f}{r['select-confs_s']:>8.1f}{r['prep-train_s']:>7.1f}{r['scheduling_s']:>7.1f}"
                  f"{r['pick_data_bytes'] / 1e6:>14.2f}{r['index_bytes'] / 1e6:>10.2f}{r['other_bytes'] / 1e6:>10.2f}")
    for mode in ("artifact", "volume"):
        last = {n: next(r for r in results[f"{mode}-{n}"] if r["iteration"] == 1) for n in args.sizes}
        base = last[args.sizes[0]]
        for n in args.sizes[1:]:
            r = last[n]
            print(f"{mode}: ratio {n} / {args.sizes[0]} frames, iteration 1: outside-training time "
                  f"{r['overhead_s'] / base['overhead_s']:.2f} (ModelDevi {r['model-devi_s'] / base['model-devi_s']:.2f}, "
                  f"the rest {(r['overhead_s'] - r['model-devi_s']) / (base['overhead_s'] - base['model-devi_s']):.2f}); "
                  f"bytes: models+frames {r['other_bytes'] / base['other_bytes']:.2f}, index "
                  f"{r['index_bytes'] / base['index_bytes']:.2f}, pick_data {r['pick_data_bytes'] / 1e6:.2f} MB "
                  f"vs {base['pick_data_bytes'] / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
