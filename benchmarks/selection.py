"""Selection benchmark on a heterogeneous pool (benchmarks/hetero_case.py): which frames to relabel, and when to stop.

    .venv/bin/python benchmarks/selection.py --seeds 1 2 3 [--methods ...]

Every method runs the tool itself (submit_simplify.py, local mode, labeled mode: pick_data carries the new-level
labels) from the same four original models, except `dpgen` (DP-GEN 0.14's `dpgen simplify`). Settings were fixed
before the first run; the rules:
  * trust level: model_devi_f_trust_lo = the originals' median max force deviation on pick_data (f_trust_hi 10);
    true-error levels (method true_max) = the originals' median true errors on pick_data, force and energy;
  * schedule: 20 frames in iteration 0, 20 per iteration, stop_iter 5 (5 training rounds of 600 steps each,
    at most 100 of 400 frames = 25%);
  * random: the same schedule with every frame a candidate (f_trust_lo 0), i.e. random picks of the same number
    of frames per round, trained the same way;
  * all: every frame relabeled, trained once for the same total steps (5 x 600, learning-rate decay scaled);
  * stopping rule (method probe): the default rule without stop_iter, probe_number 10, conv_e_rmse = one tenth of
    the originals' new-level energy RMSE on the held-out frames; `until` is the same without the probe (until
    nothing is selected); both capped at stop_iter 10;
  * cluster_max, max_devi_fe (added 2026-12-05, after the three-seed runs of the others, with no new setting):
    cluster_max = the select_style of that name; max_devi_fe = max_devi with DP-GEN's energy trust level
    model_devi_e_trust_lo set by the same rule as the force level (the originals' median energy deviation per
    atom on pick_data), so that frames whose energy the ensemble disputes count as well; diverse_w1 (added after
    those two) = diverse with select_devi_weight 1 (each distance times the score, the plain product, no other
    weight tried); max_devi_e (added after those three, when their picks showed the force deviation spending a
    third of the budget on the hot cells, whose energies the bulk frames already teach) = max_devi on the
    energy deviation alone, its level by the same median rule (the force levels off); max_devi_each (added
    last, when max_devi served the slabs and max_devi_e the compressed cells) = the new select_style of that
    name with both levels of max_devi_fe: the largest force and energy deviations in turn;
  * true_max_dl (added 2026-12-05 after all of the above, when their picks showed every population's energy
    error falling with the frames it gets, and true_max's energy level, the originals' median new-level error,
    0.63 eV/atom, above every frame once the first round has learned the D3 shift) = true_max with both
    true-error levels set to the originals' median deviations (the `f` and `e` rules): the accuracy the
    originals have at the old level is the one a frame has not yet reached at the new level; no other level
    tried;
  * until_dry (added 2026-12-05 after true_max_dl, when `until` capped at 10 rounds had never run dry, its
    candidates falling by about the 20 picked per round) = `until` with stop_iter 40, to see where DP-GEN's
    "until nothing is selected" ends on this pool;
  * true_each_dl (added 2026-12-05 after true_max_dl, when its picks served the slabs and compressed cells
    and true_max's the slabs and hot cells) = max_devi_each on the two true errors at true_max_dl's levels:
    the largest force and energy errors in turn;
  * probe_dl (added 2026-12-05 after until_dry, the second level tried for the stopping rule, written down
    before its runs; the first, a tenth of the starting error, stopped every seed after one round) =
    true_max_dl with the probe (probe_number 10) and conv_e_rmse = the originals' old-level energy RMSE on
    the held-out frames (0.0186 eV/atom: the accuracy the transfer sets out to recover), capped at stop_iter 40;
    probe_dl_pool (written down with probe_dl) = the same with conv_e_rmse = the originals' old-level energy
    RMSE on pick_data itself, the mix of populations the probe draws from (the held-out set weighs each
    population the same, the probe the pool's shares); both are run and reported;
  * seeds 4 and 5 (added 2026-12-05 after all of the above, for random, default and true_max_dl only, to see
    whether true_max_dl's spread over three seeds holds; reported whatever they give);
  * max_devi_rel (added 2026-12-05 after all of the above, with the new relative_f_epsilon key, when the force
    deviation's picks had gone a third to the hot cells, whose large forces inflate their absolute deviation;
    rule written before its runs) = max_devi with relative_f_epsilon = the median norm of the atomic forces of
    pick_data's labels (`rel_eps`) and model_devi_f_trust_lo = the originals' median relative max force
    deviation on pick_data with that epsilon (`f_rel`, the same median rule); no other epsilon tried. Run
    beside random and max_devi, three seeds, on a case made again from scratch; then (written down after those
    three seeds, before these runs) seeds 4 and 5 for random and max_devi_rel, reported whatever they give;
  * errors: every model of a method on 30 held-out frames per population at the new level, RMSE of energy per
    atom and force components, per population and over all 120 (each population weighs the same), mean over the
    4 models.
Results: a table per seed, ratios against random and all, benchmarks/runs/hetero/results.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.hetero_case import POPULATIONS, TYPE_MAP, population_of, prepare  # noqa: E402
from benchmarks.label_efficiency import one_shot_config, relabel_new_level, rmse, run_dpgen, run_ours  # noqa: E402

D3 = {"method": "pbe", "damping": "d3bj"}
METHODS = ("random", "default", "true_max", "diverse", "max_devi", "cluster_max", "max_devi_fe", "diverse_w1",
           "max_devi_e", "max_devi_each", "true_max_dl", "true_each_dl", "all", "probe", "dpgen", "until", "until_dry",
           "probe_dl", "probe_dl_pool", "max_devi_rel")
OFF = 1e9  # a trust level no frame reaches


def by_population(flat: Path, out: Path) -> Path:
    """out/<population>/<system> links to flat/<system>, so that rmse() can be asked per population."""
    for system in sorted(p for p in flat.iterdir() if p.is_dir()):
        link = out / population_of(system.name) / system.name
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(system.resolve())
    return out


def errors(models: list[Path], holdout: Path) -> dict:
    """Overall and per population: {"all": {...}, "bulk": {...}, ...} with rmse_e_per_atom and rmse_f."""
    out = {"all": rmse(models, holdout, TYPE_MAP)}
    for population in POPULATIONS:
        out[population] = rmse(models, holdout / population, TYPE_MAP)
    for r in out.values():
        r.pop("per_model", None)
    return out


def originals_on_pick(models: list[Path], pick: Path, **kw):
    """The originals' Deviations on every frame of pick_data (compute_model_devi's keywords in `kw`)."""
    from dflow_simplify.ops.data import count_frames, find_systems
    from dflow_simplify.ops.model_devi import compute_model_devi, load_models

    roots = [str(pick)]
    ids = {f"0/{rel}": list(range(count_frames(roots, f"0/{rel}"))) for rel in find_systems(str(pick))}
    return compute_model_devi(load_models(models), roots, ids, TYPE_MAP, **kw)


def trust_rules(models: list[Path], pick: Path) -> dict:
    """The originals' medians on pick_data: max force deviation, energy deviation per atom, true max force error,
    true energy error per atom."""
    devi = originals_on_pick(models, pick, true_error=True)
    q = devi.quantities()
    return {k: round(float(np.median(q[k])), 5) for k in ("f", "e", "f_err", "e_err")}


def relative_rules(models: list[Path], pick: Path) -> dict:
    """max_devi_rel's settings: epsilon = the median norm of pick_data's atomic forces (its labels), and the
    originals' median relative max force deviation on pick_data with it."""
    import dpdata

    from dflow_simplify.ops.data import find_systems

    norms = np.concatenate([np.linalg.norm(dpdata.LabeledSystem(str(pick / rel), fmt="deepmd/npy")["forces"],
                                           axis=-1).ravel() for rel in find_systems(str(pick))])
    eps = round(float(np.median(norms)), 3)
    devi = originals_on_pick(models, pick, relative_f=eps)
    return {"rel_eps": eps, "f_rel": round(float(np.median(devi.quantities()["f"])), 5)}


def method_config(base: dict, method: str, rules: dict, conv_e: float, seed: int, n_frames: int) -> dict:
    cfg = copy.deepcopy(base)
    cfg.update(pick_seed=seed, model_devi_f_trust_lo=rules["f"])
    if method == "random":
        cfg.update(model_devi_f_trust_lo=0.0, model_devi_f_trust_hi=OFF)
    elif method in ("max_devi", "diverse", "cluster_max"):
        cfg.update(select_style=method)
    elif method == "max_devi_rel":
        cfg.update(select_style="max_devi", relative_f_epsilon=rules["rel_eps"], model_devi_f_trust_lo=rules["f_rel"])
    elif method == "max_devi_each":
        cfg.update(select_style="max_devi_each", model_devi_e_trust_lo=rules["e"])
    elif method == "max_devi_e":
        cfg.update(select_style="max_devi", model_devi_f_trust_lo=OFF, model_devi_f_trust_hi=OFF,
                   model_devi_e_trust_lo=rules["e"])
    elif method == "diverse_w1":
        cfg.update(select_style="diverse", select_devi_weight=1.0)
    elif method == "max_devi_fe":
        cfg.update(select_style="max_devi", model_devi_e_trust_lo=rules["e"])
    elif method == "true_max":
        cfg.update(model_devi_f_trust_lo=OFF, model_devi_f_trust_hi=OFF, select_style="max_devi",
                   true_error_f_trust_lo=rules["f_err"], true_error_e_trust_lo=rules["e_err"])
    elif method == "true_max_dl":
        cfg.update(model_devi_f_trust_lo=OFF, model_devi_f_trust_hi=OFF, select_style="max_devi",
                   true_error_f_trust_lo=rules["f"], true_error_e_trust_lo=rules["e"])
    elif method == "true_each_dl":
        cfg.update(model_devi_f_trust_lo=OFF, model_devi_f_trust_hi=OFF, select_style="max_devi_each",
                   true_error_f_trust_lo=rules["f"], true_error_e_trust_lo=rules["e"])
    elif method == "probe":
        cfg.update(stop_iter=10, probe_number=10, conv_e_rmse=conv_e)
    elif method in ("probe_dl", "probe_dl_pool"):
        cfg = method_config(base, "true_max_dl", rules, conv_e, seed, n_frames)
        level = rules["old_e_rmse"] if method == "probe_dl" else rules["old_e_rmse_pool"]
        cfg.update(stop_iter=40, probe_number=10, conv_e_rmse=level)
    elif method == "until":
        cfg.update(stop_iter=10)
    elif method == "until_dry":
        cfg.update(stop_iter=40)
    elif method == "all":
        cfg = one_shot_config(cfg, n_frames, rounds=base["stop_iter"])
        cfg["stop_iter"] = 1
    return cfg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--dpgen-python", default=str(ROOT / ".venv-dpgen" / "bin" / "python"))
    p.add_argument("--work", default=str(ROOT / "benchmarks" / "runs" / "hetero"))
    args = p.parse_args()
    work = Path(args.work).resolve()
    case = prepare(work)
    pick, holdout_flat = work / "pick", work / "holdout-flat"
    relabel_new_level(case["pick_old"], pick, TYPE_MAP, D3)
    relabel_new_level(case["holdout_old"], holdout_flat, TYPE_MAP, D3)
    holdout = by_population(holdout_flat, work / "holdout")
    holdout_old = by_population(case["holdout_old"], work / "holdout-old-by-population")
    originals = [m / "graph.pb" for m in case["models"]]
    n_frames = sum(POPULATIONS.values())
    results_file = work / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    if "original" not in results:
        results.update(machine=f"{platform.node()}, {os.cpu_count()} cores", n_frames=n_frames,
                       original={"old_level": errors(originals, holdout_old), "new_level": errors(originals, holdout)},
                       rules=trust_rules(originals, pick))
        results_file.write_text(json.dumps(results, indent=1))
    if "e" not in results["rules"]:  # results of runs before the energy level was part of the rules
        rules = trust_rules(originals, pick)
        assert all(rules[k] == v for k, v in results["rules"].items()), (rules, results["rules"])
        results["rules"] = rules
        results_file.write_text(json.dumps(results, indent=1))
    if "old_level_pool" not in results["original"]:  # the originals on pick_data at the old level (pool's mix)
        pool_err = rmse(originals, case["pick_old"], TYPE_MAP)
        pool_err.pop("per_model")
        results["original"]["old_level_pool"] = pool_err
        results_file.write_text(json.dumps(results, indent=1))
    if "rel_eps" not in results["rules"] and "max_devi_rel" in args.methods:
        results["rules"].update(relative_rules(originals, pick))
        results_file.write_text(json.dumps(results, indent=1))
    old = results["original"]
    rules = {**results["rules"], "old_e_rmse": round(old["old_level"]["all"]["rmse_e_per_atom"], 5),
             "old_e_rmse_pool": round(old["old_level_pool"]["rmse_e_per_atom"], 5)}
    conv_e = round(0.1 * results["original"]["new_level"]["all"]["rmse_e_per_atom"], 5)
    results["conv_e_rmse"] = conv_e
    run_case = {"pick": pick, "models": case["models"]}
    for seed in args.seeds:
        row = results.setdefault("seeds", {}).setdefault(str(seed), {})
        for method in args.methods:
            if method in row:
                continue
            cfg = method_config(case["config"], method, rules, conv_e, seed, n_frames)
            out = work / f"{method}-seed{seed}"
            if method == "dpgen":
                r = run_dpgen(method_config(case["config"], "default", rules, conv_e, seed, n_frames), run_case, pick,
                              out, seed, args.dpgen_python)
                if not r["models"]:
                    row[method] = {"error": f"no trained model, see {out / 'bench.log'}"}
                    continue
            else:
                r = run_ours(cfg, run_case, out)
                rep = json.loads((out / "report.json").read_text())
                r["stopped_by"] = rep["stopped_by"]
                r["measured_error"] = rep.get("measured_error")
            row[method] = {"errors": errors(r["models"], holdout),
                           **{k: r.get(k) for k in ("n_relabeled", "wall_s", "train_rounds", "stopped_by", "measured_error")}}
            results_file.write_text(json.dumps(results, indent=1))
            e_all = row[method]["errors"]["all"]["rmse_e_per_atom"]
            print(f"seed {seed} {method}: {row[method]['n_relabeled']} frames, E {e_all:.4f}",
                  flush=True)
    print_results(results)
    print_picks(results, work)


def _cell(r: dict, pop: str) -> str:
    e = r["errors"][pop]
    return f"{e['rmse_e_per_atom'] * 1000:7.2f}/{e['rmse_f']:.3f}"


def print_results(results: dict) -> None:
    pops = ["all", *POPULATIONS]
    shares = ", ".join(f"{k} {v}" for k, v in POPULATIONS.items())
    print(f"machine {results['machine']}; pick_data {results['n_frames']} frames ({shares})")
    print(f"trust rules (originals' medians on pick_data): {results['rules']}; conv_e_rmse {results.get('conv_e_rmse')}")
    for level in ("old_level", "new_level"):
        print(f"original models, {level.replace('_', ' ')}: " + "  ".join(
            f"{pop} {_cell({'errors': results['original'][level]}, pop)}" for pop in pops))
    print("cells: energy RMSE meV/atom / force RMSE eV/A on held-out new-level frames, mean over 4 models")
    print(f"{'seed':>4} {'method':<9}{'frames':>7}{'rounds':>7}" + "".join(f"{p:>17}" for p in pops) + "  stopped by")
    for seed, row in results.get("seeds", {}).items():
        for m, r in row.items():
            if "error" in r:
                print(f"{seed:>4} {m:<9} {r['error']}")
                continue
            print(f"{seed:>4} {m:<9}{r['n_relabeled']:>7}{r['train_rounds']:>7}"
                  + "".join(f"{_cell(r, p):>17}" for p in pops) + f"  {r.get('stopped_by') or ''}")
        for ref in ("random", "all"):
            if ref not in row or "error" in row[ref]:
                continue
            for m, r in row.items():
                if m == ref or "error" in r:
                    continue
                ratios = "  ".join(f"{p} E {r['errors'][p]['rmse_e_per_atom'] / row[ref]['errors'][p]['rmse_e_per_atom']:.2f}"
                                   f" F {r['errors'][p]['rmse_f'] / row[ref]['errors'][p]['rmse_f']:.2f}" for p in pops)
                print(f"{seed:>4} {m}/{ref}: frames {r['n_relabeled'] / max(1, row[ref]['n_relabeled']):.2f}  {ratios}")
    print_spread(results, pops)


def ratios_over_seeds(results: dict, method: str, ref: str, pop: str, quantity: str) -> list[float]:
    """method/ref of `quantity` on `pop`, one value per seed where both ran."""
    out = []
    for row in results.get("seeds", {}).values():
        if method in row and ref in row and "error" not in row[method] and "error" not in row[ref]:
            out.append(row[method]["errors"][pop][quantity] / row[ref]["errors"][pop][quantity])
    return out


def picked_by_population(run: Path) -> dict | None:
    """Frames relabeled per population by one of our runs (its last SelectConfs' loop state), or None."""
    from dflow_simplify.ops.loop_state import LoopState

    states = sorted(run.glob("work/*/iter-*--select-confs/outputs/artifacts/state/state.json"))
    if not states:
        return None
    out = dict.fromkeys(POPULATIONS, 0)
    for key, ids in LoopState.load(states[-1]).picked.items():
        out[population_of(key.split("/", 1)[1])] += len(ids)
    return out


def print_picks(results: dict, work: Path) -> None:
    """Mean frames relabeled per population over the seeds, per method: where each style spends its labels."""
    print("frames relabeled per population, mean over seeds (" + ", ".join(POPULATIONS) + ")")
    methods = sorted({m for row in results.get("seeds", {}).values() for m in row}, key=METHODS.index)
    for m in methods:
        counts = [c for seed in results["seeds"] if (c := picked_by_population(work / f"{m}-seed{seed}"))]
        if counts:
            print(f"  {m:<14}" + " ".join(f"{np.mean([c[p] for c in counts]):6.1f}" for p in POPULATIONS)
                  + f"   ({len(counts)} seeds)")


def print_spread(results: dict, pops: list[str]) -> None:
    """Mean and range over the seeds of each ratio: `mean (min-max, n seeds)`."""
    methods = sorted({m for row in results.get("seeds", {}).values() for m in row}, key=METHODS.index)
    print("over seeds: ratio mean (min-max, seeds)")
    for ref in ("random", "all"):
        for m in methods:
            if m == ref:
                continue
            cells = []
            for pop in pops:
                for q, name in (("rmse_e_per_atom", "E"), ("rmse_f", "F")):
                    r = ratios_over_seeds(results, m, ref, pop, q)
                    if r:
                        cells.append(f"{pop} {name} {np.mean(r):.2f} ({min(r):.2f}-{max(r):.2f}, {len(r)})")
            if cells:
                print(f"{m}/{ref}: " + "  ".join(cells))


if __name__ == "__main__":
    main()
