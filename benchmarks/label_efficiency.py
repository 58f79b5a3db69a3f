"""Label efficiency: simplify's final models against random picks, all frames, and DP-GEN's own simplify.

    .venv/bin/python benchmarks/label_efficiency.py                      # Ag-Au EMT -> EMT+D3, seeds 1 2 3
    .venv/bin/python benchmarks/label_efficiency.py --case mapbi3 --seeds 1

Per seed, all on the same pick_data, original models, training settings and new level (old label + D3(BJ)
with the `dftd3` engine), errors measured on held-out frames labeled at the new level:
  (a) simplify   this project's loop (submit_simplify.py, local mode), the case's config, pick_seed = seed
  (b) random     the same workflow told to pick N(a) random frames at once and train once (trust levels
                 at 1e9: nothing is selected after), N(a) = frames (a) relabeled
  (c) all        the same, with every frame of pick_data relabeled
  (d) dpgen      DP-GEN 0.14's `dpgen simplify` (labeled mode: pick_data given with the new labels,
                 `fp_style: none`), the same config, numpy's global seed = seed, dpdispatcher Shell
(b) and (c) train once for as many steps as (a) trained in all its iterations (numb_steps and the
learning-rate decay scaled by the number of (a)'s training rounds). RMSE: energy per atom and force
components, mean over the 4 models of each method (each model as a user would use it).
Results: a table, the ratios (a)/(c), (a)/(b), (a)/(d), and benchmarks/runs/<case>/results.json.
DP-GEN runs in its own environment (scripts/setup.sh makes .venv-dpgen with dpgen==0.14.0; --dpgen-python);
`dp` is taken from this environment.
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from dflow_simplify.ops.run_train import SINGLE_THREAD

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


# ---- cases: pick_data, held-out frames, original models, config ---------------------------------------------

def case_ag_au(work: Path) -> dict:
    ex = ROOT / "examples" / "ag-au-emt-d3"
    subprocess.run([PY, str(ex / "make_example.py")], check=True)
    cfg = json.loads((ex / "config.json").read_text())
    return {"pick": ex / "data" / "pick", "holdout": ex / "data" / "holdout", "models": sorted((ex / "models").glob("00*")),
            "config": cfg}


def case_mapbi3(work: Path) -> dict:
    from benchmarks.mapbi3_case import prepare

    return prepare(work)


CASES = {"ag-au": case_ag_au, "mapbi3": case_mapbi3}


# ---- the new level ------------------------------------------------------------------------------------------

def relabel_new_level(src: Path, dst: Path, type_map: list[str], fp_params: dict) -> None:
    """Every frame of `src` with old label + D3 (the dftd3 engine the workflow uses), same layout in `dst`."""
    import dpdata

    from dflow_simplify.ops.data import find_systems
    from dflow_simplify.ops.fp.base import get_engine

    if dst.exists():
        return
    engine = get_engine("dftd3")
    for rel in find_systems(str(src)):
        s = dpdata.LabeledSystem(str(src / rel), fmt="deepmd/npy", type_map=type_map)
        out = None
        for j in range(len(s)):
            lab = engine.label(s[j], str(dst), fp_params)
            out = lab if out is None else out + lab
        out.to_deepmd_npy(str(dst / rel), set_size=10**9)


def rmse(models: list[Path], holdout: Path, type_map: list[str]) -> dict:
    """Energy-per-atom and force RMSE of each model on the held-out frames (new level); mean over models."""
    import dpdata
    from deepmd.infer import DeepPot

    from dflow_simplify.ops.data import find_systems

    per_model = []
    systems = [dpdata.LabeledSystem(str(holdout / rel), fmt="deepmd/npy", type_map=type_map)
               for rel in find_systems(str(holdout))]
    for m in models:
        dp = DeepPot(str(m))
        de, df = [], []
        for s in systems:
            n = len(s)
            e, f, _ = dp.eval(s["coords"].reshape(n, -1), s["cells"].reshape(n, -1), s["atom_types"])
            de.append((e.reshape(n) - s["energies"]) / s.get_natoms())
            df.append((f.reshape(n, -1) - s["forces"].reshape(n, -1)).ravel())
        per_model.append((float(np.sqrt(np.mean(np.concatenate(de) ** 2))), float(np.sqrt(np.mean(np.concatenate(df) ** 2)))))
    arr = np.array(per_model)
    return {"rmse_e_per_atom": float(arr[:, 0].mean()), "rmse_f": float(arr[:, 1].mean()),
            "per_model": per_model}


# ---- the methods --------------------------------------------------------------------------------------------

def _write_config(cfg: dict, case: dict, path: Path) -> Path:
    cfg = copy.deepcopy(cfg)
    cfg["pick_data"] = str(case["pick"])
    cfg["training_iter0_model_path"] = [str(m) for m in case["models"]]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg, indent=1))
    return path


def run_ours(cfg: dict, case: dict, out: Path) -> dict:
    """submit_simplify.py in local mode; reuses a finished run in `out`."""
    config = _write_config(cfg, case, out.parent / f"{out.name}.json")
    if not (out / "report.json").exists():
        t0 = time.time()
        proc = subprocess.run([PY, str(ROOT / "submit_simplify.py"), str(config), "-o", str(out)],
                              capture_output=True, text=True)
        (out.parent / f"{out.name}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode:
            raise RuntimeError(f"{out.name} failed, see {out.parent / (out.name + '.log')}")
        rep = json.loads((out / "report.json").read_text())
        rep["bench_wall_s"] = round(time.time() - t0, 1)
        (out / "report.json").write_text(json.dumps(rep, indent=1))
    rep = json.loads((out / "report.json").read_text())
    return {"models": sorted(out.glob("models/graph.*.pb")), "n_relabeled": rep["n_relabeled"],
            "wall_s": rep["bench_wall_s"], "train_rounds": max(0, len(rep["iterations"]) - 1)}


def one_shot_config(cfg: dict, n_pick: int, rounds: int) -> dict:
    """Pick `n_pick` random frames in iteration 0, train once for `rounds` x numb_steps, select nothing after."""
    cfg = copy.deepcopy(cfg)
    cfg["init_pick_number"] = n_pick
    for q in ("f", "e"):
        cfg[f"model_devi_{q}_trust_lo"] = cfg[f"model_devi_{q}_trust_hi"] = 1e9
    for legacy in ("f_trust_lo", "f_trust_hi", "e_trust_lo", "e_trust_hi"):
        cfg.pop(legacy, None)
    tr = cfg["default_training_param"]
    tr["training"]["numb_steps"] *= rounds
    tr["training"]["save_freq"] = tr["training"]["numb_steps"]
    tr["learning_rate"]["decay_steps"] *= rounds
    return cfg


def _trained(record: Path, iteration: int) -> bool:
    """DP-GEN's record says the training of `iteration` is done (task 2, post_train)."""
    return record.exists() and f"{iteration} 2" in record.read_text().splitlines()


def run_dpgen(cfg: dict, case: dict, new_pick: Path, out: Path, seed: int, dpgen_python: str) -> dict:
    """DP-GEN's own simplify, labeled mode, on the pick_data relabeled at the new level."""
    import dpdata

    if not (out / "bench.json").exists():
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        param = copy.deepcopy(cfg)
        stop_iter = param.pop("stop_iter", None)  # not a DP-GEN key: the run is ended after that training round
        for key in ("pick_seed", "step_configs", "fp_params", "_comment", "train_backend"):
            param.pop(key, None)
        param.update(pick_data=[str(new_pick)], labeled=True, fp_style="none", sys_configs=[], init_data_sys=[],
                     init_data_prefix="",
                     training_iter0_model_path=[str(m) for m in case["models"]])
        param["sys_batch_size"] = list(param.get("sys_batch_size") or ["auto"])
        # DP-GEN requires fp_task_min; 0 = train on every relabeled frame, as ours does (a larger value drops
        # smaller picked systems from training)
        param.setdefault("fp_task_min", 0)
        for q in ("e", "f"):  # DP-GEN reads all four trust levels; ours default e to "no limit"
            for level in ("lo", "hi"):
                param.setdefault(f"model_devi_{q}_trust_{level}", 1e10)
        (out / "simplify.json").write_text(json.dumps(param, indent=1))
        venv_bin = str(Path(PY).parent)
        shell = {"batch_type": "Shell", "context_type": "LocalContext", "local_root": "./",
                 "remote_root": str(out / "remote")}
        res = {"number_node": 1, "cpu_per_node": 1, "gpu_per_node": 0, "group_size": 1, "envs": SINGLE_THREAD}
        machine = {"api_version": "1.0"}
        for stage, cmd in (("train", f"{venv_bin}/dp"), ("model_devi", f"{venv_bin}/dp"), ("fp", "true")):
            machine[stage] = {"command": cmd, "machine": shell, "resources": res}
        (out / "machine.json").write_text(json.dumps(machine, indent=1))
        code = ("import sys, numpy as np; np.random.seed(int(sys.argv[1])); "
                "from dpgen.simplify.simplify import run_iter; run_iter('simplify.json', 'machine.json')")
        t0 = time.time()
        with open(out / "bench.log", "w") as log:
            proc = subprocess.Popen([dpgen_python, "-c", code, str(seed)], cwd=out, stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}"},
                                    start_new_session=True)
            while proc.poll() is None:
                if stop_iter is not None and _trained(out / "record.dpgen", stop_iter):
                    os.killpg(proc.pid, signal.SIGTERM)  # DP-GEN has no stop_iter: end it as ours ends
                    proc.wait()
                    break
                time.sleep(1)
        wall = time.time() - t0
        ended = stop_iter is not None and _trained(out / "record.dpgen", stop_iter)  # our SIGTERM: not a failure
        (out / "bench.json").write_text(json.dumps({"wall_s": round(wall, 1), "returncode": 0 if ended else proc.returncode}))
    info = json.loads((out / "bench.json").read_text())
    trained = sorted(glob.glob(str(out / "iter.*" / "00.train" / "graph.00[0-9].pb")))
    last_iter = sorted({Path(p).parents[1] for p in trained})[-1] if trained else None
    models = sorted(Path(last_iter, "00.train").glob("graph.00[0-9].pb")) if last_iter else []
    n_relabeled = 0
    for picked in glob.glob(str(out / "iter.*" / "01.model_devi" / "data.picked")):
        n_relabeled += dpdata.MultiSystems().from_deepmd_npy(picked, labeled=False).get_nframes() \
            if any(Path(picked).iterdir()) else 0
    return {"models": models, "n_relabeled": n_relabeled, "wall_s": info["wall_s"], "returncode": info["returncode"],
            "train_rounds": len({Path(p).parents[1] for p in trained})}


# ---- driver -------------------------------------------------------------------------------------------------

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", choices=sorted(CASES), default="ag-au")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--methods", nargs="+", default=["a", "b", "c", "d"], choices=["a", "b", "c", "d"])
    p.add_argument("--dpgen-python", default=str(ROOT / ".venv-dpgen" / "bin" / "python"),
                   help="a Python with dpgen==0.14.0")
    p.add_argument("--work", default=None, help="default: benchmarks/runs/<case>")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    work = Path(args.work or ROOT / "benchmarks" / "runs" / args.case).resolve()
    work.mkdir(parents=True, exist_ok=True)
    case = CASES[args.case](work)
    cfg, type_map = case["config"], case["config"]["type_map"]
    fp_params = cfg["fp_params"]
    holdout = work / "holdout-new-level"
    relabel_new_level(Path(case["holdout"]), holdout, type_map, fp_params)
    n_frames = sum(len(np.load(f)) for f in Path(case["pick"]).rglob("set.*/box.npy"))
    results = {"case": args.case, "n_frames": n_frames, "machine": f"{platform.node()}, {os.cpu_count()} cores",
               "original": rmse([Path(m, "graph.pb") for m in case["models"]], holdout, type_map), "seeds": {}}
    if "d" in args.methods:
        relabel_new_level(Path(case["pick"]), work / "pick-new-level", type_map, fp_params)
    for seed in args.seeds:
        row = results["seeds"].setdefault(str(seed), {})
        a = run_ours({**cfg, "pick_seed": seed}, case, work / f"a-seed{seed}")
        row["a"] = {**rmse(a["models"], holdout, type_map), **{k: a[k] for k in ("n_relabeled", "wall_s", "train_rounds")}}
        rounds = max(1, a["train_rounds"])
        for m, n_pick in (("b", a["n_relabeled"]), ("c", n_frames)):
            if m in args.methods:
                r = run_ours(one_shot_config({**cfg, "pick_seed": seed}, n_pick, rounds), case, work / f"{m}-seed{seed}")
                row[m] = {**rmse(r["models"], holdout, type_map), **{k: r[k] for k in ("n_relabeled", "wall_s", "train_rounds")}}
        if "d" in args.methods:
            d = run_dpgen(cfg, case, work / "pick-new-level", work / f"d-seed{seed}", seed, args.dpgen_python)
            kept = ("n_relabeled", "wall_s", "train_rounds", "returncode")
            row["d"] = ({**rmse(d["models"], holdout, type_map), **{k: d[k] for k in kept}}
                        if d["models"] else {"error": f"no trained model, see {work / f'd-seed{seed}' / 'bench.log'}"})
        (work / "results.json").write_text(json.dumps(results, indent=1))
    print_results(results)


def print_results(results: dict) -> None:
    o = results["original"]
    print(f"case {results['case']}: {results['n_frames']} frames in pick_data; machine {results['machine']}")
    print(f"original models on the held-out frames (new level): E {o['rmse_e_per_atom']:.4f} eV/atom, F {o['rmse_f']:.4f} eV/A")
    head = f"{'seed':>4} {'method':<9}{'E rmse':>10}{'F rmse':>10}{'relabeled':>11}{'fraction':>10}{'rounds':>8}{'wall s':>9}"
    print(head)
    names = {"a": "simplify", "b": "random", "c": "all", "d": "dpgen"}
    for seed, row in results["seeds"].items():
        for m, r in row.items():
            if "error" in r:
                print(f"{seed:>4} {names[m]:<9} {r['error']}")
                continue
            print(f"{seed:>4} {names[m]:<9}{r['rmse_e_per_atom']:>10.4f}{r['rmse_f']:>10.4f}{r['n_relabeled']:>11}"
                  f"{r['n_relabeled'] / results['n_frames']:>10.2f}{r['train_rounds']:>8}{r['wall_s']:>9.0f}")
        a = row["a"]
        for m in ("c", "b", "d"):
            r = row.get(m)
            if r and "error" not in r:
                print(f"{seed:>4} ratio (a)/({m}): E {a['rmse_e_per_atom'] / r['rmse_e_per_atom']:.2f}  "
                      f"F {a['rmse_f'] / r['rmse_f']:.2f}  frames {a['n_relabeled'] / max(1, r['n_relabeled']):.2f}  "
                      f"wall {a['wall_s'] / r['wall_s']:.2f}")


if __name__ == "__main__":
    main()
