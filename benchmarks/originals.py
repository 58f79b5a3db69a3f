"""Original (old-level) DeePMD models for the benchmark cases: `dp train` + `dp freeze` in a folder of their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dflow_simplify.ops.run_train import SINGLE_THREAD


def train_dp(out: Path, train_input: dict) -> Path:
    """Train and freeze one TensorFlow model into `out/graph.pb` (skipped when it exists); one thread."""
    if (out / "graph.pb").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    (out / "input.json").write_text(json.dumps(train_input, indent=1))
    env = {**os.environ, **SINGLE_THREAD, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(out / "train.log", "w") as log:
        for cmd in (["train", "input.json"], ["freeze", "-o", "graph.pb"]):
            subprocess.run([sys.executable, "-m", "deepmd", "--tf", *cmd], cwd=out, env=env, stdout=log,
                           stderr=subprocess.STDOUT, check=True)
    return out
