"""What one iteration moves and how long a ModelDevi shard takes, as pick_data grows (issue 15).

    .venv/bin/python benchmarks/handover.py                       # 10^4, 10^5, 10^6 frames

Rules, fixed before the first run:
  * pick_data: 10 deepmd/npy systems of rattled 2-atom fcc Ag-Au cells (benchmarks/overhead.py's), N/10 frames
    each, N = 10^4, 10^5, 10^6; shard_size 10^4, so 1, 10 and 100 ModelDevi slices (pods);
  * bytes: iteration 1 run through the OPs' own functions, without dflow: every shard classified
    (ops/classified.py) from deviations fixed by each frame's id (a hash, as tests/fake_ops.py does), with
    f_trust_lo set so that exactly 500 frames are candidates whatever N, 100 of them picked; counted are the
    files that leave ModelDevi and SelectConfs (the shards' hand-over files and summaries, the new loop state,
    picked.json, the report) plus the loop state that enters (what moves per iteration outside pick_data, the
    models and the relabeled frames, which do not depend on N);
  * time per shard: what a ModelDevi pod does for its shard, in a process of its own (start Python, load the
    Ag-Au example's 4 models, read the shard's frames by id, evaluate, classify, write), for 3 shards (first,
    middle, last) at each N, median; with one pod per shard a cluster would see the slowest shard, plus
    SelectConfs' merge (timed here), plus pod scheduling (not measured here: no cluster). (Two first versions
    timed the shards inside this process, which put TensorFlow's start-up on the first shards timed; changed
    before any result was recorded.)
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.overhead import synthetic_pick_data  # noqa: E402
from dflow_simplify.ops.classified import classify_shard, merge, read_classified, write_classified  # noqa: E402
from dflow_simplify.ops.data import count_frames, find_systems  # noqa: E402
from dflow_simplify.ops.loop_state import LoopState, flatten, select  # noqa: E402
from dflow_simplify.ops.model_devi import COLUMNS, Deviations, compute_model_devi, load_models  # noqa: E402
from dflow_simplify.ops.selection import TrustLevels  # noqa: E402
from dflow_simplify.ops.shards import in_shard, n_shards, shard_ranges  # noqa: E402

SIZES = (10**4, 10**5, 10**6)
N_SYSTEMS, SHARD_SIZE, N_CANDIDATES, N_PICK = 10, 10**4, 500, 100
TYPE_MAP = ["Ag", "Au"]
MODELS = sorted((ROOT / "examples" / "ag-au-emt-d3" / "models").glob("*/graph.pb"))


def pick_data(root: Path, n: int) -> Path:
    for s in range(N_SYSTEMS):
        synthetic_pick_data(root / f"s{s:02d}", n // N_SYSTEMS, seed=s)
    return root


def fake_f(keys: list[tuple[str, int]]) -> np.ndarray:
    return np.array([zlib.crc32(f"{k}:{i}".encode()) / 2**32 for k, i in keys])


def iteration_bytes(root: Path, systems: dict[str, int], work: Path) -> dict:
    state = LoopState.initial(systems)
    state, _, _, _ = select(state, None, None, {"pick_number": 10}, seed=0)  # iteration 0
    state.dump(work / "state_in.json")
    # the level leaving exactly N_CANDIDATES pool frames at or above it
    pool = flatten(state.pool)
    level = float(np.sort(fake_f(pool))[-N_CANDIDATES])
    trust = TrustLevels(f_lo=level, f_hi=10.0)
    files = []
    for s in range(n_shards(systems, SHARD_SIZE)):
        ids = in_shard(state.pool, shard_ranges(systems, SHARD_SIZE, s))
        keys = flatten(ids)
        values = np.zeros((len(keys), len(COLUMNS)))
        values[:, COLUMNS.index("max_devi_f")] = fake_f(keys)
        out = work / f"shard.{s:06d}"
        out.mkdir()
        write_classified(out / "model_devi.npz", classify_shard(Deviations(keys, values), trust))
        (out / "model_devi_summary.json").write_text(json.dumps({"shard": s, "n_frames": len(keys)}))
        files += [out / "model_devi.npz", out / "model_devi_summary.json"]
    t0 = time.perf_counter()
    classified = merge([read_classified(f) for f in files if f.suffix == ".npz"])
    new, picked, _, counts = select(state, classified, trust, {"pick_number": N_PICK}, seed=1)
    merge_s = time.perf_counter() - t0
    assert counts["n_candidate"] == N_CANDIDATES and counts["n_selected"] == N_PICK, counts
    new.dump(work / "state_out.json")
    (work / "picked.json").write_text(json.dumps(picked))
    (work / "report.json").write_text(json.dumps({**counts, "histograms": {q: h.tolist() for q, h in
                                                                           classified.hist.items()}}))
    files += [work / "state_in.json", work / "state_out.json", work / "picked.json", work / "report.json"]
    by = {"hand-over": sum(f.stat().st_size for f in files if f.parent.name.startswith("shard.")),
          "state": (work / "state_in.json").stat().st_size + (work / "state_out.json").stat().st_size,
          "picks+report": (work / "picked.json").stat().st_size + (work / "report.json").stat().st_size}
    return {"bytes": sum(by.values()), "by": by, "merge_s": round(merge_s, 3)}


def one_shard(root: Path, size: int, shard: int) -> None:
    """ModelDevi's work on one shard, as its pod does it (run by shard_times in a process of its own)."""
    systems = {f"0/{rel}": count_frames([str(root)], f"0/{rel}") for rel in find_systems(str(root))}
    ids = in_shard(LoopState.initial(systems).pool, shard_ranges(systems, size, shard))
    devi = compute_model_devi(load_models(MODELS), [str(root)], ids, TYPE_MAP, batch_size=2048)
    with tempfile.TemporaryDirectory() as tmp:
        write_classified(Path(tmp, "model_devi.npz"), classify_shard(devi, TrustLevels(f_lo=0.05, f_hi=10.0)))


def shard_times(root: Path, systems: dict[str, int]) -> list[float]:
    count = n_shards(systems, SHARD_SIZE)
    times = []
    for s in sorted({0, count // 2, count - 1}):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--shard", str(root), str(SHARD_SIZE), str(s)], check=True,
                       capture_output=True)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    for var in ("OMP_NUM_THREADS", "DP_INTRA_OP_PARALLELISM_THREADS", "DP_INTER_OP_PARALLELISM_THREADS"):
        os.environ.setdefault(var, "1")  # one core per shard, as the slices share this machine
    work = ROOT / "benchmarks" / "runs" / "handover"
    rows = []
    for n in SIZES:
        root = pick_data(work / f"pick-{n}", n)
        systems = {f"0/{rel}": count_frames([str(root)], f"0/{rel}") for rel in find_systems(str(root))}
        assert sum(systems.values()) == n
        with tempfile.TemporaryDirectory() as tmp:
            b = iteration_bytes(root, systems, Path(tmp))
        t = shard_times(root, systems)
        rows.append({"n": n, "shards": n_shards(systems, SHARD_SIZE), **b, "shard_s": t})
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]
    print(f"machine: {platform.node()}, {os.cpu_count()} cores; shard_size {SHARD_SIZE}, {N_CANDIDATES} candidates, "
          f"{N_PICK} picked; bytes per iteration outside pick_data, models and relabeled frames")
    print("| frames | shards | bytes | hand-over | state | picks+report | bytes / 10^4's | merge+select s | "
          "shard s (median) | shard s / 10^4's |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        med = float(np.median(r["shard_s"]))
        print(f"| {r['n']:,} | {r['shards']} | {r['bytes']:,} | {r['by']['hand-over']:,} | {r['by']['state']:,} | "
              f"{r['by']['picks+report']:,} | {r['bytes'] / base['bytes']:.2f} | {r['merge_s']:.2f} | {med:.2f} | "
              f"{med / float(np.median(base['shard_s'])):.2f} |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--shard"]:
        one_shard(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
