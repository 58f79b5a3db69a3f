"""One RunTrain of the example (400 steps, --init-model, one thread): `dp train` and `dp freeze` as two processes
(before ops/dp_train_freeze.py) against one process (RunTrain now).

    .venv/bin/python benchmarks/train_process.py      # after examples/ag-au-emt-d3/make_example.py

Rules, fixed before the run: the example's training input and first original model, the holdout frames as data,
3 repetitions alternating two/one, the median wall time of each, on an otherwise idle machine.
"""
import json
import os
import shutil
import statistics as st
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dflow_simplify.ops.prep_train import PrepTrainParams, gather_iter_data, make_train_input
from dflow_simplify.ops.run_train import SINGLE_THREAD, set_training_data, system_paths

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
        "one": [[py, "-m", "dflow_simplify.ops.dp_train_freeze", "--tf", "graph.pb", "train", "input.json", *init]]}
times = {"two": [], "one": []}
for rep in range(3):
    for name, seq in cmds.items():
        w = root / f"{name}{rep}"
        w.mkdir()
        (w / "input.json").write_text(json.dumps(jinput))
        t = time.perf_counter()
        for c in seq:
            subprocess.run(c, cwd=w, env=env, check=True, capture_output=True)
        times[name].append(time.perf_counter() - t)
        print(name, rep, round(times[name][-1], 1), flush=True)
print({k: round(st.median(v), 1) for k, v in times.items()}, "ratio one/two",
      round(st.median(times["one"]) / st.median(times["two"]), 2))
shutil.rmtree(root)
