"""The run's figures (matplotlib PNGs) and `report.html`, written next to report.json.

Pure functions of already downloaded data: per-iteration deviations, per-iteration counts, the
training curves (`lcurve.out`), and the final models' predictions on the relabeled frames.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

FIGURES = ("deviation.png", "counts.png", "lcurves.png", "final_error.png", "learning_curve.png")


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path, title: str) -> None:
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _plt().close(fig)


def read_lcurve(path) -> dict[str, np.ndarray]:
    """deepmd-kit's lcurve.out as columns by name (`step`, `rmse_e_trn`, `rmse_f_trn`, `lr`, ...)."""
    lines = Path(path).read_text().splitlines()
    header = next((ln for ln in lines if ln.startswith("#")), None)
    data = np.loadtxt([ln for ln in lines if ln.strip() and not ln.startswith("#")], ndmin=2)
    names = header.lstrip("#").split() if header else [f"c{i}" for i in range(data.shape[1])]
    return {n: data[:, i] for i, n in enumerate(names[: data.shape[1]])}


def plot_deviation(hists: dict[int, dict[str, list]], trust, path, relative_f: float | None = None) -> None:
    """Per iteration, the histograms of max_devi_f and devi_e over the pool (counts over
    classified.HIST_EDGES, as ModelDevi's slices made them) with the trust levels (`trust`:
    selection.TrustLevels, as SelectConfs gets them); `relative_f`: the force deviation is relative."""
    from dflow_simplify.ops.classified import HIST_EDGES

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    f_unit = "eV/A" if relative_f is None else f"relative, epsilon {relative_f:g} eV/A"
    for ax, q, unit in ((axes[0], "f", f_unit), (axes[1], "e", "eV/atom")):
        counts = {it: np.asarray(h[q]) for it, h in sorted(hists.items()) if q in h}
        used = np.flatnonzero(sum(counts.values(), np.zeros(len(HIST_EDGES) - 1)))
        lo, hi = (used[0], used[-1] + 1) if len(used) else (0, len(HIST_EDGES) - 1)
        for it, c in counts.items():
            ax.stairs(c[lo:hi], HIST_EDGES[lo:hi + 1], lw=1.5, label=f"iter {it} ({int(c.sum())} frames)")
        for level, style in (("lo", "--"), ("hi", ":")):
            x = getattr(trust, f"{q}_{level}")
            if x is not None and x < 1e9:
                ax.axvline(x, color="k", ls=style, label=f"{q}_trust_{level} = {x:g}")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())  # minor-tick labels overlap on short ranges
        ax.set_xlabel(("max force deviation" if q == "f" else "energy deviation") + f" ({unit})")
        ax.set_ylabel("frames")
        ax.legend(fontsize=8)
    _save(fig, path, "Ensemble deviation on the pool, per iteration")


def plot_counts(rows: list[dict], path) -> None:
    plt = _plt()
    keys = ("n_candidate", "n_accurate", "n_failed", "n_selected", "n_relabeled", "n_fp_failed")
    its = [r["iteration"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(keys)
    for k, key in enumerate(keys):
        ax.bar(np.arange(len(its)) + (k - len(keys) / 2 + 0.5) * width, [r.get(key) or 0 for r in rows], width,
               label=key[2:])
    ax.plot(np.arange(len(its)), [r.get("n_pool") or 0 for r in rows], "k.-", label="pool")
    ax.set_xticks(np.arange(len(its)), [str(i) for i in its])
    ax.set_xlabel("iteration")
    ax.set_ylabel("frames")
    ax.legend(fontsize=8, ncol=2)
    _save(fig, path, "Frames per iteration")


def plot_lcurves(lcurves: dict[int, list[dict]], path) -> None:
    """Training RMSE (energy, force) against the step, one line per model, one colour per iteration."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, max(1, len(lcurves))))
    for (it, curves), colour in zip(sorted(lcurves.items()), colours):
        for m, lc in enumerate(curves):
            for ax, name in ((axes[0], "rmse_e_trn"), (axes[1], "rmse_f_trn")):
                if name in lc and "step" in lc:
                    ax.plot(lc["step"], lc[name], color=colour, lw=1, label=f"iter {it}" if m == 0 else None)
    for ax, what in ((axes[0], "energy RMSE (eV/atom)"), (axes[1], "force RMSE (eV/A)")):
        ax.set_xlabel("training step (within the iteration)")
        ax.set_ylabel(what + ", training batch")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    _save(fig, path, "Training curves (lcurve.out), every model of every iteration")


def final_errors(models, dataset_dir, type_map: list[str]) -> dict:
    """The final ensemble (mean prediction) against every relabeled frame: per-frame arrays and RMSEs."""
    from dflow_simplify.ops.model_devi import ensemble_errors, load_models

    return ensemble_errors(load_models(models), dataset_dir, type_map)


def plot_learning_curve(rows: list[dict], path) -> None:
    """The measured new-level error (the probe: frames the models had not seen) against the frames relabeled so
    far (the models' training set plus the probe)."""
    plt = _plt()
    points = [(r["relabeled_before"], r["probe_error"]) for r in rows if r.get("probe_error")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, what in ((axes[0], "rmse_e_per_atom", "energy RMSE (eV/atom)"), (axes[1], "rmse_f", "force RMSE (eV/A)")):
        ax.plot([x for x, _ in points], [e[key] for _, e in points], "o-")
        for x, e in points:
            ax.annotate(str(e["n_frames"]), (x, e[key]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel("frames relabeled so far (training set + probe)")
        ax.set_ylabel(what + ", probe")
    _save(fig, path, "Learning curve: the models' error on the probe (point labels: probe frames)")


def plot_final_error(err: dict, path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, q, what in ((axes[0], "e", "energy (eV/atom)"), (axes[1], "f", "force component (eV/A)")):
        ref, pred = err[f"{q}_ref"], err[f"{q}_pred"]
        ax.plot(ref, pred, ".", ms=3 if q == "f" else 5, alpha=0.6)
        lims = [min(ref.min(), pred.min()), max(ref.max(), pred.max())]
        ax.plot(lims, lims, "k-", lw=0.8)
        rmse = err["rmse_e_per_atom"] if q == "e" else err["rmse_f"]
        ax.set_title(f"RMSE {rmse:.4g}")
        ax.set_xlabel(f"relabeled {what}")
        ax.set_ylabel(f"final ensemble mean {what}")
    _save(fig, path, f"Final models against the {err['n_frames']} relabeled frames (training set)")


def write_html(output, report: dict, figures: list[str]) -> Path:
    """report.html: the report's numbers and the figures, one self-contained page next to them."""
    rows = report.get("iterations", [])
    cols = [c for c in (rows[0] if rows else {})]
    table = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in cols) + "</tr>" for r in rows)
    summary = {k: v for k, v in report.items() if k != "iterations"}
    wf_id = html.escape(str(report.get("workflow_id")))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>simplify report {wf_id}"
            "</title><style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;text-align:right}</style></head><body>"
            f"<h1>simplify: {wf_id}</h1><pre>{html.escape(json.dumps(summary, indent=1))}</pre>"
            f"<table><tr>{''.join(f'<th>{html.escape(c)}</th>' for c in cols)}</tr>{table}</table>"
            + "".join(f"<p><img src='{html.escape(f)}' alt='{html.escape(f)}'></p>" for f in figures)
            + "</body></html>")
    path = Path(output, "report.html")
    path.write_text(page)
    return path
