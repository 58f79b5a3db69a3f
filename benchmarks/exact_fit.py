"""The exact output layer against SGD on the Ag-Au example (issue 29), side by side in one run.

    .venv/bin/python benchmarks/exact_fit.py [--work benchmarks/runs/exact-fit]

Settings, fixed before the first run: the example's config (examples/ag-au-emt-d3/config.json, pick_seed 1,
four original models, 400 steps per iteration for SGD), new level EMT + D3(BJ) (the dftd3 engine), errors on
the example's 40 held-out frames relabeled at the new level:
  exact      the config as is: fitting_net.trainable [F, F, F, T], train_style auto -> exact
  sgd        the config as it was before (main 06b866b): trainable [F, F, T, T], dp train, 400 steps
  sgd-ffft   trainable [F, F, F, T] trained by dp train (train_style sgd), 400 steps: the same freezing, SGD
  exact@sgd  the exact fit (from the same originals) on the frames the `sgd` run relabeled: the training
             alone, with the frames fixed
Printed per method: frames relabeled, every model's held-out energy RMSE (meV/atom) and force RMSE (eV/A),
the ensemble mean's, and, for the exact runs, each RunTrain's compute (rows, solve, write and check; the
process start-up and imports excluded) from the fits' own records.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.label_efficiency import case_ag_au, relabel_new_level, rmse, run_ours  # noqa: E402


def with_trainable(cfg: dict, trainable: list[bool], style: str) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg["default_training_param"]["model"]["fitting_net"]["trainable"] = trainable
    cfg["train_style"] = style
    return cfg


def ensemble_rmse(models: list[Path], holdout: Path, type_map: list[str]) -> tuple[float, float]:
    from deepmd.infer import DeepPot

    from dflow_simplify.ops.model_devi import ensemble_errors

    err = ensemble_errors([DeepPot(str(m)) for m in models], holdout, type_map)
    return err["rmse_e_per_atom"], err["rmse_f"]


def exact_on_frames(dataset: Path, originals: list[Path], cfg: dict, out: Path) -> list[Path]:
    """Each original's output layer fitted exactly on the frames of `dataset` (a run's consolidated dataset)."""
    from dflow_simplify.ops.exact_fit import exact_train
    from dflow_simplify.ops.exact_train import systems_with_ids
    from dflow_simplify.ops.output_layer import load_model_dict
    from dflow_simplify.ops.run_train import system_paths

    systems = systems_with_ids(system_paths(dataset), [], [], [1] * len(system_paths(dataset)))
    models = []
    for i, original in enumerate(originals):
        folder = out / ("%03d" % i)
        if not (folder / "graph.pb").exists():
            folder.mkdir(parents=True, exist_ok=True)
            exact_train(load_model_dict(original / "graph.pb"), None, systems, cfg["type_map"],
                        cfg["default_training_param"]["loss"], folder, "graph.pb")
        models.append(folder / "graph.pb")
    return models


def fit_seconds(run: Path) -> list[dict]:
    """The records of every exact RunTrain of a run (one per model and iteration)."""
    found = {f.read_text() for f in run.glob("work/*/iter-*--run-train-*/**/fit.json")}  # dflow keeps copies
    return [json.loads(text) for text in sorted(found)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(ROOT / "benchmarks" / "runs" / "exact-fit"))
    args = p.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    case = case_ag_au(work)
    cfg, type_map = case["config"], case["config"]["type_map"]
    holdout = work / "holdout-new-level"
    relabel_new_level(Path(case["holdout"]), holdout, type_map, cfg["fp_params"])
    runs = {
        "exact": cfg,
        "sgd": with_trainable(cfg, [False, False, True, True], "sgd"),
        "sgd-ffft": with_trainable(cfg, [False, False, False, True], "sgd"),
    }
    rows = {}
    for name, c in runs.items():
        r = run_ours(c, case, work / name)
        rows[name] = {"models": r["models"], "n": r["n_relabeled"], "wall": r["wall_s"]}
    sgd_run = work / "sgd"
    rows["exact@sgd"] = {"models": exact_on_frames(sgd_run / "dataset", case["models"], cfg, work / "exact-at-sgd"),
                         "n": rows["sgd"]["n"], "wall": float("nan")}
    original = rmse([Path(m, "graph.pb") for m in case["models"]], holdout, type_map)
    print(f"original models on the 40 held-out frames (EMT + D3): E {1e3 * original['rmse_e_per_atom']:.1f} meV/atom, "
          f"F {original['rmse_f']:.3f} eV/A (mean of 4)")
    print(f"{'method':<10}{'frames':>7}{'wall s':>8}  per-model E (meV/atom)        per-model F (eV/A)"
          f"              ensemble E / F")
    results = {}
    for name, r in rows.items():
        per = rmse(r["models"], holdout, type_map)["per_model"]
        ens = ensemble_rmse(r["models"], holdout, type_map)
        results[name] = {"n": r["n"], "wall": r["wall"], "per_model": per, "ensemble": ens}
        es = " ".join(f"{1e3 * e:5.1f}" for e, _ in per)
        fs = " ".join(f"{f:.3f}" for _, f in per)
        print(f"{name:<10}{r['n']:>7}{r['wall']:>8.0f}  {es:<28}  {fs:<26}  {1e3 * ens[0]:5.1f} / {ens[1]:.3f}")
    best_sgd = max(e for e, _ in results["sgd"]["per_model"])
    worst_exact = max(e for e, _ in results["exact"]["per_model"])
    print(f"exact vs sgd, worst model's E: {1e3 * worst_exact:.1f} vs {1e3 * best_sgd:.1f} meV/atom "
          f"({best_sgd / worst_exact:.1f}x lower); best sgd model / worst exact model")
    for name in ("exact",):
        records = fit_seconds(work / name)
        compute = [sum(v for k, v in r["seconds"].items() if k != "load") for r in records]
        loads = [r["seconds"]["load"] for r in records]
        ratios = [r["loss_ratio"] for r in records]
        print(f"{name}: {len(records)} RunTrain fits; compute per fit (rows + solve + write + check) median "
              f"{np.median(compute):.2f} s (max {max(compute):.2f}); loading the starting model {np.median(loads):.2f} s; "
              f"loss / optimum {min(ratios):.4f}-{max(ratios):.4f}; frames with rows computed per fit "
              f"{sorted({r['frames_computed'] for r in records})}")
        parts = {k: float(np.median([r["seconds"][k] for r in records])) for k in records[0]["seconds"]}
        print("  median seconds by part: " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))
    (work / "results.json").write_text(json.dumps({k: {**v, "per_model": v["per_model"]} for k, v in results.items()},
                                                  indent=1, default=str))


if __name__ == "__main__":
    main()
