"""One RunTrain of the example (400 steps, --init-model, one thread): `dp train` and `dp freeze` as two processes
(before ops/dp_train_freeze.py) against the one process RunTrain runs now (ops/run_train.train_command, with
RunTrain's default for the neighbor statistics), and what the one process spends outside the
training steps (its wall time minus numb_steps x deepmd-kit's own "average training time" per batch).

    .venv/bin/python benchmarks/train_process.py      # after examples/ag-au-emt-d3/make_example.py

Rules, fixed before the run: the example's training input and first original model, the holdout frames as data,
3 repetitions alternating two/one, the median wall time of each, on an otherwise idle machine.
"""
import json
import os
import re
import shutil
import statistics as st
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dflow_simplify.ops.prep_train import PrepTrainParams, gather_iter_data, make_train_input
from dflow_simplify.ops.run_train import (
    SINGLE_THREAD,
    set_training_data,
    skip_neighbor_stat_by_default,
    system_paths,
    train_command,
)

ex = Path(__file__).resolve().parents[1] / "examples" / "ag-au-emt-d3"
root = Path(tempfile.mkdtemp(prefix="train-process-"))
data = root / "data"
gather_iter_data(None, [ex / "data" / "holdout"], data, 1)
template = json.loads((ex / "config.json").read_text())["default_training_param"]
jinput = make_train_input(template, 0, 1, PrepTrainParams(type_map=["Ag", "Au"]))
set_training_data(jinput, system_paths(data), [], "auto", "auto")
env = {**SINGLE_THREAD, **os.environ}
py = sys.executable
init = ["--init-model", str(ex / "models/000/model.ckpt")]
cmds = {"two": [[py, "-m", "deepmd", "--tf", "train", "input.json", *init],
                [py, "-m", "deepmd", "--tf", "freeze", "-o", "graph.pb"]],
        # what RunTrain runs (its defaults: neighbor statistics skipped when the starting model fixes sel)
        "one": [train_command("tensorflow", "init_model", ex / "models/000",
                              skip_neighbor_stat_by_default("init_model", jinput))]}
times, outside = {"two": [], "one": []}, []
steps = jinput["training"]["numb_steps"]
for rep in range(3):
    for name, seq in cmds.items():
        w = root / f"{name}{rep}"
        w.mkdir()
        (w / "input.json").write_text(json.dumps(jinput))
        t = time.perf_counter()
        logs = [subprocess.run(c, cwd=w, env=env, check=True, capture_output=True, text=True) for c in seq]
        times[name].append(time.perf_counter() - t)
        line = f"{name} {rep} {times[name][-1]:.1f}"
        if name == "one":
            per_step = float(re.search(r"average training time: ([0-9.]+) s/batch", logs[0].stderr + logs[0].stdout)[1])
            outside.append(times[name][-1] - steps * per_step)
            line += f"  steps {steps} x {per_step:.4f} s = {steps * per_step:.1f} s, outside {outside[-1]:.2f} s"
        print(line, flush=True)
print({k: round(st.median(v), 1) for k, v in times.items()}, "ratio one/two",
      round(st.median(times["one"]) / st.median(times["two"]), 2),
      f"; one process outside the steps: median {st.median(outside):.2f} s (target <= 5 s)")
shutil.rmtree(root)
