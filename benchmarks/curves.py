"""Learning curves of finished selection runs: each round's models on the held-out new-level frames.

    .venv/bin/python benchmarks/curves.py --methods until_dry true_max_dl default random --seeds 1 2 3

Reads the runs `benchmarks/selection.py` left in --work (nothing is trained): for every training round i of a
run, the four models RunTrain wrote, their energy RMSE per atom on the held-out frames (overall, each
population weighing the same, as selection.py reports it) against the frames relabeled before that round.
Answers where a method's error stops falling, i.e. how many frames a perfect stopping rule would have saved.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.selection import errors  # noqa: E402


def round_models(run: Path) -> dict[int, list[Path]]:
    """Training round (iteration) -> the frozen models its RunTrain steps wrote."""
    out: dict[int, list[Path]] = {}
    for model in sorted(run.glob("work/*/iter-*--run-train-*/workdir/tmp/outputs/artifacts/model/*/graph.pb")):
        iteration = int(model.parts[-8].split("--")[0].removeprefix("iter-"))
        out.setdefault(iteration, []).append(model)
    return out


def curve(run: Path, holdout: Path) -> list[dict]:
    """Per training round: frames relabeled before it (its training set, probe included) and its errors."""
    report = json.loads((run / "report.json").read_text())
    relabeled = [it["n_relabeled"] or 0 for it in report["iterations"]]
    rows = []
    for iteration, models in sorted(round_models(run).items()):
        err = errors(models, holdout)
        rows.append({"iteration": iteration, "frames": sum(relabeled[:iteration]),
                     **{pop: round(e["rmse_e_per_atom"] * 1000, 2) for pop, e in err.items()}})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["until_dry", "true_max_dl", "default", "random"])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--work", default=str(ROOT / "benchmarks" / "runs" / "hetero"))
    args = p.parse_args()
    work = Path(args.work)
    out_file = work / "curves.json"
    curves = json.loads(out_file.read_text()) if out_file.exists() else {}
    for method in args.methods:
        for seed in args.seeds:
            name = f"{method}-seed{seed}"
            if name not in curves and (work / name / "report.json").exists():
                curves[name] = curve(work / name, work / "holdout")
                out_file.write_text(json.dumps(curves, indent=1))
            rows = curves.get(name)
            if rows:
                print(f"{name:<22} " + "  ".join(f"{r['frames']}:{r['all']:.1f}" for r in rows), flush=True)
    print("cells: frames relabeled before the round : held-out energy RMSE meV/atom (overall), mean over 4 models")


if __name__ == "__main__":
    main()
