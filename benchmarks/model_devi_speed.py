"""ModelDevi's speed against DP-GEN's way (`dp model-devi`) and against the floor, same models, same frames, one run.

    .venv/bin/python benchmarks/model_devi_speed.py            # the Ag-Au example's 4 models, 200 frames x 3

Methods (frames per second, best of --repeat):
  ours           ops/model_devi.compute_model_devi + write_model_devi, the 4 models loaded once (what the OP runs)
  ours+load      the same, loading the models included (the whole OP's work)
  dp model-devi  deepmd-kit's `dp --tf model-devi -m ... -s SYSTEM -o FILE`, one call per system, as DP-GEN runs it
                 (a new process: Python, TensorFlow and the models loaded every call)
  make_model_devi  the function `dp model-devi` calls, in this process (its model loading included)
  floor          one DeepPot.eval per model over each system's frames, arrays already in memory, nothing else
Ratios printed: dp model-devi / ours+load, make_model_devi / ours+load (>1: ours is faster), ours / floor (time).
"""

from __future__ import annotations

import argparse
import glob
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "ag-au-emt-d3"


def tiled_data(src: Path, dst: Path, tile: int) -> list[str]:
    """Each system of `src` with its frames repeated `tile` times (deepmd/npy, one set)."""
    import dpdata

    from dflow_simplify.ops.data import find_systems

    out = []
    for rel in find_systems(str(src)):
        s = dpdata.System(str(src / rel), fmt="deepmd/npy")
        big = s.copy()
        for _ in range(tile - 1):
            big.append(s)
        big.to_deepmd_npy(str(dst / rel), set_size=10**9)
        out.append(rel)
    return out


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=str(EXAMPLE / "models" / "00*" / "graph.pb"), help="glob of frozen models")
    p.add_argument("--data", default=str(EXAMPLE / "data" / "pick"), help="deepmd/npy systems")
    p.add_argument("--type-map", default="Ag,Au")
    p.add_argument("--tile", type=int, default=3, help="repeat the frames this many times")
    p.add_argument("--repeat", type=int, default=3, help="timings per method (the best is kept)")
    p.add_argument("--batch-size", type=int, default=256, help="ours: frames per inference batch (the OP's default)")
    args = p.parse_args()
    models = sorted(glob.glob(args.models))
    if not models:
        sys.exit(f"no model matches {args.models}; run examples/ag-au-emt-d3/make_example.py first")
    type_map = args.type_map.split(",")

    import dpdata
    import numpy as np
    from deepmd.infer.model_devi import make_model_devi

    from dflow_simplify.ops.model_devi import compute_model_devi, load_models, write_model_devi

    tmp = Path(tempfile.mkdtemp(prefix="mdspeed-"))
    try:
        systems = tiled_data(Path(args.data), tmp / "data", args.tile)
        ids = {f"0/{rel}": list(range(len(dpdata.System(str(tmp / "data" / rel), fmt="deepmd/npy"))))
               for rel in systems}
        n_frames = sum(len(v) for v in ids.values())
        natoms = {rel: len((tmp / "data" / rel / "type.raw").read_text().split()) for rel in systems}
        roots = [str(tmp / "data")]
        loaded = load_models(models)

        def ours():
            devi = compute_model_devi(loaded, roots, ids, type_map, args.batch_size)
            write_model_devi(tmp / "ours.npz", devi)
            return devi

        def ours_load():
            devi = compute_model_devi(load_models(models), roots, ids, type_map, args.batch_size)
            write_model_devi(tmp / "ours_load.npz", devi)

        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}

        def dp_cli():
            for k, rel in enumerate(systems):
                (tmp / f"dp_cli.{k}.out").unlink(missing_ok=True)  # dp model-devi appends to an existing file
                subprocess.run(["dp", "--tf", "model-devi", "-m", *models, "-s", str(tmp / "data" / rel),
                                "-o", str(tmp / f"dp_cli.{k}.out")], check=True, env=env, capture_output=True)

        def dp_function():
            for k, rel in enumerate(systems):
                make_model_devi(models=models, system=str(tmp / "data" / rel), output=str(tmp / f"dp_fn.{k}.out"),
                                frequency=1)

        arrays = {}
        for rel in systems:
            s = dpdata.System(str(tmp / "data" / rel), fmt="deepmd/npy", type_map=type_map)
            arrays[rel] = (s["coords"].reshape(len(s), -1), s["cells"].reshape(len(s), -1), s["atom_types"])

        def floor():
            for coords, cells, atype in arrays.values():
                for dp in loaded:
                    dp.eval(coords, cells, atype)

        floor()  # warm-up: graph compilation, thread pools
        devi = ours()
        times = {"ours": best_of(args.repeat, ours), "ours+load": best_of(args.repeat, ours_load),
                 "dp model-devi": best_of(args.repeat, dp_cli), "make_model_devi": best_of(args.repeat, dp_function),
                 "floor": best_of(args.repeat, floor)}
        # the same numbers, whichever way: our max_devi_f against dp model-devi's
        ref = np.concatenate([np.loadtxt(tmp / f"dp_cli.{k}.out", ndmin=2)[:, 4] for k in range(len(systems))])
        mine = np.concatenate([devi.values[[k == f"0/{rel}" for k, _ in devi.keys], 3] for rel in systems])
        agree = float(np.max(np.abs(ref - mine)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"deepmd-kit {__import__('deepmd').__version__} (TensorFlow backend)")
    print(f"{len(models)} models, {n_frames} frames ({', '.join(f'{n} atoms' for n in sorted(set(natoms.values())))}), "
          f"best of {args.repeat}; max |max_devi_f(ours) - max_devi_f(dp model-devi)| = {agree:.2e} eV/A")
    print(f"{'method':<18}{'seconds':>10}{'frames/s':>12}")
    for name, t in times.items():
        print(f"{name:<18}{t:>10.2f}{n_frames / t:>12.1f}")
    print(f"ratio dp model-devi / ours+load (time) = {times['dp model-devi'] / times['ours+load']:.2f}")
    print(f"ratio make_model_devi / ours+load (time) = {times['make_model_devi'] / times['ours+load']:.2f}")
    print(f"ratio ours / floor (time) = {times['ours'] / times['floor']:.2f}")
    print(f"ratio ours+load / floor (time) = {times['ours+load'] / times['floor']:.2f}")


if __name__ == "__main__":
    main()
