"""The report's figures (matplotlib, as SVG text for the page to embed).

Plain functions of report.json's numbers and the models' errors (model_errors.py's result): the learning
curve, the deviation distributions with the trust levels, the parity plots. Scatter points are rasterized
inside the SVG, so that a figure of thousands of force components stays small.
"""

from __future__ import annotations

import io

import numpy as np

ENERGY, FORCE = "energy RMSE (eV/atom)", "force RMSE (eV/Å)"


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "simplify", "font.size": 9})
    return plt


def svg(fig) -> str:
    """The figure as SVG text (no timestamp: the same figure gives the same text), closed afterwards."""
    buf = io.StringIO()
    fig.tight_layout()
    fig.savefig(buf, format="svg", dpi=110, metadata={"Date": None})
    _plt().close(fig)
    return buf.getvalue()


def learning_curve(points: list[dict], originals_all: dict | None, final_fit: dict | None, probe: list[dict]) -> str:
    """Error against frames relabeled: per iteration, the models that picked its frames on those frames (not
    seen by them) and the originals on the same frames; the originals on every relabeled frame as the starting
    line; the final models on their own training frames; the probe's measured error."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.4))
    for ax, key, label in ((axes[0], "rmse_e_per_atom", ENERGY), (axes[1], "rmse_f", FORCE)):
        pts = [p for p in points if p["models"].get(key) is not None]
        if originals_all and originals_all.get(key) is not None:
            ax.axhline(originals_all[key], color="0.45", ls="--", lw=1,
                       label=f"original models, all {originals_all['n_frames']} relabeled frames")
        orig = [(p["relabeled_before"], p["originals"][key]) for p in pts if p.get("originals")]
        if orig:
            ax.plot(*zip(*orig), "o", mfc="none", color="0.45", label="original models, same frames")
        if pts:
            x, y = [p["relabeled_before"] for p in pts], [p["models"][key] for p in pts]
            ax.plot(x, y, "o-", color="C0", label="models that picked them (frames unseen)")
            for p in pts:
                ax.annotate(f"it {p['iteration']}: {p['models']['n_frames']}", (p["relabeled_before"], p["models"][key]),
                            textcoords="offset points", xytext=(4, 4), fontsize=7)
        probe_pts = [(m["relabeled_before"], m[key]) for m in probe if m.get(key) is not None]
        if probe_pts:
            ax.plot(*zip(*probe_pts), "s-", color="C2", label="probe (measured, unseen)")
        if final_fit and final_fit.get(key) is not None:
            ax.plot([final_fit["x"]], [final_fit[key]], "*", ms=11, color="C3", label="final models, training frames")
        shown = [v for line in ax.get_lines() for v in np.ravel(line.get_ydata()) if v > 0]
        if shown and max(shown) > 4 * min(shown):  # a log scale only where the errors span a wide range
            ax.set_yscale("log")
        ax.set_xlabel("frames relabeled before the models were trained")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7, loc="best")
    return svg(fig)


def deviation(hists: dict[int, dict[str, list]], trust: dict, relative_f: float | None = None) -> str:
    """Per iteration, the histograms of max force deviation and energy deviation over the pool (counts over
    classified.HIST_EDGES, as ModelDevi's slices made them), with the trust levels (`trust`: f_lo, f_hi, e_lo,
    e_hi; unset ones absent or >= 1e9)."""
    from dflow_simplify.ops.classified import HIST_EDGES

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.4))
    f_unit = "eV/Å" if relative_f is None else f"relative, epsilon {relative_f:g} eV/Å"
    for ax, q, unit in ((axes[0], "f", f_unit), (axes[1], "e", "eV/atom")):
        counts = {it: np.asarray(h[q]) for it, h in sorted(hists.items()) if q in h and np.sum(h[q])}
        used = np.flatnonzero(sum(counts.values(), np.zeros(len(HIST_EDGES) - 1)))
        lo, hi = (used[0], used[-1] + 1) if len(used) else (0, len(HIST_EDGES) - 1)
        for it, c in counts.items():
            ax.stairs(c[lo:hi], HIST_EDGES[lo:hi + 1], lw=1.5, label=f"iteration {it} ({int(c.sum())} frames)")
        for level, style in (("lo", "--"), ("hi", ":")):
            x = trust.get(f"{q}_{level}")
            if x is not None and x < 1e9:
                ax.axvline(x, color="k", ls=style, label=f"trust {level} = {x:g}")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())  # minor-tick labels overlap on short ranges
        ax.set_xlabel(("max force deviation" if q == "f" else "energy deviation") + f" ({unit})")
        ax.set_ylabel("pool frames")
        if counts:
            ax.legend(fontsize=7)
    return svg(fig)


def parity(final: dict, originals: dict | None = None) -> str:
    """Predicted against relabeled energy per atom and force components: the final models (and the originals,
    grey) on the relabeled frames; model_errors' parity arrays (e_ref, e_pred, f_ref, f_pred)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 4.2))
    for ax, q, what in ((axes[0], "e", "energy (eV/atom)"), (axes[1], "f", "force component (eV/Å)")):
        drawn = [(originals, "0.6", "original models"), (final, "C0", "final models")]
        values = []
        for data, colour, label in drawn:
            if data and len(data[f"{q}_ref"]):
                ref, pred = np.asarray(data[f"{q}_ref"]), np.asarray(data[f"{q}_pred"])
                rmse = float(np.sqrt(np.mean((pred - ref) ** 2)))
                ax.plot(ref, pred, ".", ms=2 if q == "f" else 5, alpha=0.6, color=colour, rasterized=True,
                        label=f"{label}: RMSE {rmse:.3g}")
                values += [ref.min(), ref.max(), pred.min(), pred.max()]
        if values:
            lims = [min(values), max(values)]
            ax.plot(lims, lims, "k-", lw=0.8)
            ax.legend(fontsize=7, markerscale=3 if q == "f" else 1)
        ax.set_xlabel(f"relabeled {what}")
        ax.set_ylabel(f"predicted {what}")
        ax.set_aspect("equal", adjustable="datalim")
    return svg(fig)
