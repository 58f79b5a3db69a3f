"""report.html: one self-contained page (figures embedded as SVG, no script, nothing fetched) built from
report.json and the models' errors (model_errors.json), with a Jinja2 template (templates/report.html.j2).

Its first screen answers: how many frames were relabeled of how many, in how many iterations, why the loop
stopped, how the final models compare with the originals, how many labels failed, what it cost per stage.
The functions below turn the report's numbers into what the template prints; each is a plain function.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import numpy as np

from dflow_simplify.ops.loop_state import CONVERGED, NOTHING_SELECTED, STOP_ITER

from . import figures

PAGE, ERRORS, TIMING = "report.html", "model_errors.json", "timing.json"


def seconds(value: float | None) -> str:
    """`95.3` -> `1 min 35 s`, `0.25` -> `0.2 s`; None -> `–`."""
    if value is None:
        return "–"
    if value < 9.95:
        return f"{value:.1f} s"
    value = round(value)
    if value < 60:
        return f"{value} s"
    if value < 3600:
        return f"{value // 60} min {value % 60:02d} s"
    return f"{value // 3600} h {value % 3600 // 60:02d} min"


def number(value, digits: int = 3) -> str:
    """A measured value to `digits` significant digits; None -> `–`."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}g}"


def frames(n) -> str:
    return f"{n} frame" if n == 1 else f"{n} frames"


def histogram_quantile(counts, q: float) -> float | None:
    """The q-quantile of the values counted over classified.HIST_EDGES, interpolated geometrically in its bin."""
    from dflow_simplify.ops.classified import HIST_EDGES

    counts = np.asarray(counts, float)
    total = counts.sum()
    if not total:
        return None
    cum = np.cumsum(counts)
    b = int(np.searchsorted(cum, q * total))
    below = cum[b - 1] if b else 0.0
    frac = (q * total - below) / counts[b] if counts[b] else 0.0
    lo, hi = HIST_EDGES[b], HIST_EDGES[b + 1]
    return float(lo * (hi / lo) ** frac)


def stop_reason(report: dict) -> dict:
    """{"rule", "text"}: which stopping rule ended the loop, with its figures."""
    rows, s = report.get("iterations") or [], report.get("settings") or {}
    last = rows[-1] if rows else {}
    it, rule = last.get("iteration"), report.get("stopped_by")
    f_lo, f_hi = (s.get("trust") or {}).get("f_lo"), (s.get("trust") or {}).get("f_hi")
    if rule == CONVERGED:
        probe = (report.get("measured_error") or [{}])[-1]
        parts = [f"{what} RMSE {number(probe.get(key))} {unit} ≤ {conv} {s.get(conv)}"
                 for key, what, unit, conv in (("rmse_e_per_atom", "energy", "eV/atom", "conv_e_rmse"),
                                               ("rmse_f", "force", "eV/Å", "conv_f_rmse")) if s.get(conv) is not None]
        text = (f"Converged in iteration {it}: on the {probe.get('n_frames', '?')} probe frames (relabeled, not seen by "
                f"its models) {' and '.join(parts)}.")
    elif rule == NOTHING_SELECTED and not last.get("n_pool"):
        accurate = sum(r.get("n_accurate") or 0 for r in rows)
        text = (f"No frame left to select in iteration {it}: each of the {report.get('n_frames')} frames was relabeled "
                f"({report.get('n_relabeled')}) or retired as accurate ({accurate}: max force deviation below "
                f"f_trust_lo {f_lo} eV/Å).")
    elif rule == NOTHING_SELECTED:
        picked_none = (f"{last.get('n_candidate')} candidates, of which the selection rules picked none"
                       if last.get("n_candidate") else "no candidate")
        text = (f"No frame selected in iteration {it}: of the {frames(last.get('n_pool'))} left in the pool, "
                f"{last.get('n_accurate')} accurate (max force deviation < {f_lo} eV/Å), {last.get('n_failed')} failed "
                f"(≥ f_trust_hi {f_hi} eV/Å: never relabeled), {picked_none}.")
    elif rule == STOP_ITER:
        text = (f"Stopped at stop_iter = {s.get('stop_iter')} (iteration {it}) with {last.get('n_candidate')} "
                f"candidates still in the pool of {last.get('n_pool')}: not converged.")
    else:
        text = "The loop has not finished."
    return {"rule": rule or "unfinished", "text": text}


def error_change(errors: dict, key: str, unit: str) -> dict | None:
    """The originals' and the final models' RMSE on the relabeled frames, as a fact of the summary."""
    orig, final = errors.get("originals_on_relabeled"), errors.get("final_on_relabeled")
    if not final:
        return None
    value = f"{number(final[key])} {unit}" if not orig else f"{number(orig[key])} → {number(final[key])} {unit}"
    return {"value": value, "ratio": None if not orig or not orig[key] else final[key] / orig[key]}


def summary_facts(report: dict) -> list[dict]:
    """The first screen's facts: label, value, detail, and an id the browser test finds."""
    n, pool = report.get("n_relabeled", 0), report.get("n_frames", 0)
    rows, errors, timing = report.get("iterations") or [], report.get("model_errors") or {}, report.get("timing") or {}
    systems = len((report.get("settings") or {}).get("systems") or {}) or "?"
    stop = stop_reason(report)
    facts = [
        {"id": "frames-relabeled", "label": "frames relabeled", "value": f"{n}",
         "detail": f"{100 * n / pool:.1f}% of the pool" if pool else ""},
        {"id": "pool-size", "label": "pool (pick_data)", "value": f"{pool} frames", "detail": f"in {systems} system(s)"},
        {"id": "iterations", "label": "iterations", "value": f"{len(rows)}",
         "detail": f"{max(0, len(rows) - 1)} training rounds of {(report.get('settings') or {}).get('numb_models', '?')} models"},
        {"id": "fp-failures", "label": "FP failures", "value": f"{report.get('n_fp_failed', 0)}",
         "detail": f"{report.get('n_bad_box', 0)} bad boxes skipped; {frames(report.get('n_failed_left', 0))} left "
                   "above the trust_hi levels, never relabeled"},
        {"id": "stop-rule", "label": "stopped by", "value": stop["rule"], "detail": stop["text"], "wide": True},
    ]
    for key, unit, label in (("rmse_e_per_atom", "eV/atom", "energy RMSE"), ("rmse_f", "eV/Å", "force RMSE")):
        change = error_change(errors, key, unit)
        if change:
            n_err = errors["final_on_relabeled"]["n_frames"]
            detail = (f"originals → final models on the {n_err} relabeled frames (the final models' training set)"
                      if errors.get("originals_on_relabeled") else f"final models on the {n_err} relabeled frames")
            facts.append({"id": f"error-{key}", "label": label, "value": change["value"], "detail": detail})
    for p in (errors.get("learning_curve") or [])[-1:]:
        if p["iteration"] > 0 and p.get("originals"):
            facts.append({"id": "error-unseen", "label": "energy RMSE, frames not seen",
                          "value": f"{number(p['originals']['rmse_e_per_atom'])} → {number(p['models']['rmse_e_per_atom'])}"
                                   " eV/atom",
                          "detail": f"originals → iteration {p['iteration']}'s models on the {p['models']['n_frames']} "
                                    "frames those models picked"})
    cpu = [r["cpu_s"] for r in timing.get("stages", [])]
    facts.append({"id": "time", "label": "wall time", "value": seconds(report.get("wall_time_s")),
                  "detail": "CPU " + (seconds(sum(cpu)) if cpu and None not in cpu else "unknown") + " in the steps; "
                            f"report {seconds(timing.get('report_s'))}"})
    return [{"wide": False, **f} for f in facts]


def iteration_table(report: dict) -> list[dict]:
    """Per iteration: the counts, the pool's max force deviation quantiles, the error of the models that picked
    its frames on them, the wall time."""
    hists = report.get("deviation_histograms") or {}
    times = (report.get("timing") or {}).get("iterations") or {}
    curve = {p["iteration"]: p for p in (report.get("model_errors") or {}).get("learning_curve") or []}
    rows = []
    for r in report.get("iterations") or []:
        it = r["iteration"]
        f = (hists.get(str(it)) or {}).get("f")
        q = [histogram_quantile(f, x) if f else None for x in (0.5, 0.9)]
        err = (curve.get(it) or {}).get("models") or {}
        rows.append({**r, "devi_f_median": number(q[0], 2), "devi_f_p90": number(q[1], 2),
                     "error_e": number(err.get("rmse_e_per_atom")), "error_f": number(err.get("rmse_f")),
                     "time": seconds(times.get(str(it)))})
    return rows


def fit_table(report: dict) -> list[dict]:
    """Per iteration, the exact output-layer fits (train_style exact): ranges over the models."""
    rows = []
    for it, fits in sorted((report.get("training_fits") or {}).items(), key=lambda kv: int(kv[0])):
        def span(key, digits=3):
            values = [f[key] for f in fits if f.get(key) is not None]
            return "–" if not values else f"{min(values):.{digits}g}–{max(values):.{digits}g}"

        rows.append({"iteration": it, "models": len(fits), "frames": span("frames", 6),
                     "computed": span("frames_computed", 6), "loss_ratio": span("loss_ratio", 4),
                     "effective": span("effective_parameters"), "parameters": span("parameters", 6)})
    return rows


def system_table(report: dict) -> list[dict]:
    """Per pick_data system: frames, relabeled (and %), the originals' and final models' errors on its relabeled
    frames; the systems that drove the labels first."""
    systems = (report.get("settings") or {}).get("systems") or {}
    relabeled = report.get("relabeled_per_system") or {}
    errors = (report.get("model_errors") or {}).get("per_system") or {}
    rows = []
    for key in sorted(systems, key=lambda k: (-(relabeled.get(k) or [0])[0], k)):
        n = (relabeled.get(key) or [0])[0]
        e = errors.get(key) or {}
        rows.append({"system": key, "frames": systems[key], "relabeled": n,
                     "share": f"{100 * n / systems[key]:.0f}%" if systems[key] else "–",
                     "orig_e": number((e.get("originals") or {}).get("rmse_e_per_atom")),
                     "final_e": number((e.get("final") or {}).get("rmse_e_per_atom")),
                     "orig_f": number((e.get("originals") or {}).get("rmse_f")),
                     "final_f": number((e.get("final") or {}).get("rmse_f"))})
    return rows


def stage_table(report: dict) -> list[dict]:
    return [{**r, "wall": seconds(r["wall_s"]), "cpu": seconds(r["cpu_s"])}
            for r in (report.get("timing") or {}).get("stages") or []]


def output_links(output: Path, report: dict) -> list[dict]:
    """Relative links to the outputs that exist next to the page."""
    links = [{"href": f"models/{p.name}", "text": f"models/{p.name}", "what": "a final model"}
             for p in sorted(Path(output, "models").glob("graph.*"))]
    if Path(output, "dataset").is_dir():
        links.append({"href": "dataset/", "text": "dataset/",
                      "what": "every relabeled frame, deepmd/npy, one system per formula"})
        links += [{"href": str(p.relative_to(output)), "text": str(p.relative_to(output)),
                   "what": "the pick_data system and frame of each frame of this system"}
                  for p in sorted(Path(output, "dataset").glob("*/frame_ids.json"))]
    for name, what in (("report.json", "the numbers of this page"), (ERRORS, "the models' errors per relabeled frame"),
                       (TIMING, "each stage's and iteration's time"),
                       ("logs/evaluate-models.log", "the log of the models' evaluation for this page")):
        if Path(output, name).exists():
            links.append({"href": name, "text": name, "what": what})
    work = Path(output, "work", str(report.get("workflow_id")))
    if work.is_dir():
        links.append({"href": f"work/{work.name}/", "text": f"work/{work.name}/",
                      "what": "every step's inputs, outputs and log.txt (steps keyed iter-NNNNNN--stage)"})
    return links


def settings_list(report: dict) -> list[tuple[str, str]]:
    s = report.get("settings") or {}
    trust = s.get("trust") or {}
    levels = ", ".join(f"{k} {v:g}" for k, v in trust.items() if v is not None and v < 1e9)
    rows = [("new level (fp_style)", s.get("fp_style")), ("models", f"{s.get('numb_models')} ({s.get('train_backend')}, "
            f"start: {s.get('init_mode')}, training: {s.get('train_style', 'sgd')})"),
            ("picks", f"{s.get('init_pick_number')} at random, then at most "
            f"{s.get('iter_pick_number')} per iteration ({s.get('select_style')})"), ("trust levels", levels or "–"),
            ("relative force deviation epsilon", s.get("relative_f_epsilon")), ("probe frames", s.get("probe_number")),
            ("conv_e_rmse / conv_f_rmse", f"{s.get('conv_e_rmse')} / {s.get('conv_f_rmse')}"),
            ("stop_iter", s.get("stop_iter"))]
    return [(k, str(v)) for k, v in rows if v not in (None, "None / None")]


def _data_uri(svg_text: str) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg_text.encode()).decode()


def page_figures(report: dict, errors: dict | None) -> list[dict]:
    """The figures with their alt text and captions (what each shows, how to read it)."""
    out, model_errors = [], report.get("model_errors") or {}
    curve, probe = model_errors.get("learning_curve") or [], report.get("measured_error") or []
    final_fit = model_errors.get("final_on_relabeled")
    if curve or probe:
        fit = dict(final_fit, x=report.get("n_relabeled", 0)) if final_fit else None
        out.append({"id": "learning-curve", "title": "Learning curve",
                    "src": _data_uri(figures.learning_curve(curve, model_errors.get("originals_on_relabeled"), fit, probe)),
                    "alt": "Energy and force RMSE against the number of frames relabeled, one point per iteration, "
                           "with the original models' error as a dashed line.",
                    "caption": "Each blue point: the ensemble of an iteration on the frames it picked, before they were "
                               "relabeled (frames it had not seen; labels give the count), placed at the number of frames "
                               "it was trained on. Picked frames are those the models disagreed on, so these errors are "
                               "higher than on the pool at large. Hollow grey: the original models on the same frames; "
                               "dashed: the originals on every relabeled frame, where the run started. Red star: the "
                               "final models on their own training frames (a fit, not a test). Green squares: the probe "
                               "(random unseen frames) when probe_number is set. Log scale where the errors span a "
                               "factor 4 or more."})
    hists = {int(k): v for k, v in (report.get("deviation_histograms") or {}).items()}
    if hists:
        s = report.get("settings") or {}
        out.append({"id": "deviation", "title": "Deviation of the ensemble on the pool",
                    "src": _data_uri(figures.deviation(hists, s.get("trust") or {}, s.get("relative_f_epsilon"))),
                    "alt": "Histograms of the maximum force deviation and the energy deviation of the pool frames, per "
                           "iteration, with the trust levels as vertical lines.",
                    "caption": "How much the models of each iteration disagree on the frames still in the pool (log "
                               "scale). Frames left of the dashed line (trust lo) are accurate and retired; between "
                               "the dashed and the dotted line (trust hi) they are candidates to relabel; right of "
                               "the dotted line they are failed, never relabeled. A curve moving left from one "
                               "iteration to the next: the models agree more."})
    sets = (errors or {}).get("sets") or {}
    final = (sets.get("final") or {}).get("parity")
    if final:
        original = (sets.get("originals") or {}).get("parity")
        out.append({"id": "parity", "title": "Parity on the relabeled frames",
                    "src": _data_uri(figures.parity(final, original)),
                    "alt": "Predicted against relabeled energy per atom and force components, final models in blue and "
                           "original models in grey.",
                    "caption": "Each point a relabeled frame (energy per atom) or a force component; on the diagonal the "
                               "prediction equals the new label. Blue: the final models, trained on these frames (how "
                               "well they fit them); grey: the original models, which never saw them (how far the old "
                               "level is from the new one)."
                               + ("" if len(final["f_ref"]) < 20000 else " Forces: a random sample of 20000 components.")})
    return out


def render(output: Path, report: dict, errors: dict | None) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("dflow_simplify.workflows", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined)
    return env.get_template("report.html.j2").render(
        report=report, facts=summary_facts(report), iterations=iteration_table(report), systems=system_table(report),
        fits=fit_table(report), stages=stage_table(report), figures=page_figures(report, errors),
        links=output_links(output, report),
        settings=settings_list(report), skipped=(report.get("model_errors") or {}).get("skipped") or {})


def write_page(output: str | Path) -> Path:
    """report.html from the report.json (and model_errors.json, timing.json, when there) in `output`."""
    output = Path(output)
    report = json.loads((output / "report.json").read_text())
    if (output / TIMING).exists():
        report["timing"] = json.loads((output / TIMING).read_text())
    errors = json.loads((output / ERRORS).read_text()) if (output / ERRORS).exists() else None
    path = output / PAGE
    path.write_text(render(output, report, errors))
    return path
