"""Deliberately FAKE OPs, for tests of the workflow's wiring only: they keep the real OPs' signatures
(they subclass them) but train and evaluate nothing, so that the real super-OP runs several iterations
of the loop in seconds. PrepTrain, SelectConfs and RunFP stay real.

- FakeRunTrain writes a "model" (model.fake, JSON): the number of frames it was "trained" on.
- FakeModelDevi gives each pool frame of its shard a force deviation that shrinks as the training set grows,
  devi(frame) = 0.3 * u(frame) * exp(-n_train / 8) with u in [0, 1) fixed by the frame's id, so the loop
  runs out of candidates after a few iterations; on the probe it reports rmse_f = 0.5 * exp(-n_train / 8).

Environment (set by the tests): FAKE_OPS_LOG, a file each fake execution appends one line to;
FAKE_TRAIN_FAIL_ABOVE, fail RunTrain when its training set has more than this many frames.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from pathlib import Path

import numpy as np
from dflow.python import OPIO, FatalError

from dflow_simplify.ops.classified import classify_shard
from dflow_simplify.ops.data import find_systems
from dflow_simplify.ops.loop_state import LoopState
from dflow_simplify.ops.model_devi import COLUMNS, Deviations, ModelDevi, write_shard_outputs
from dflow_simplify.ops.run_train import RunTrain
from dflow_simplify.ops.selection import SelectParams
from dflow_simplify.ops.shards import in_shard, shard_ranges


def count_frames_in(root) -> int:
    if root is None or not Path(root).is_dir():
        return 0
    return sum(np.load(box).shape[0] for rel in find_systems(str(root))
               for box in Path(root, rel).glob("set.*/box.npy"))


def _log(line: str) -> None:
    if os.environ.get("FAKE_OPS_LOG"):
        with open(os.environ["FAKE_OPS_LOG"], "a") as f:
            f.write(line + "\n")


def fake_scale(n_train: int) -> float:
    return math.exp(-n_train / 8)


class FakeRunTrain(RunTrain):
    """FAKE: "trains" by writing down the size of its training set."""

    def execute(self, ip: OPIO) -> OPIO:
        n_train = count_frames_in(ip["iter_data"])
        _log(f"run-train {ip['task_name']} n_train={n_train}")
        print("FAKE TRAINER NOTICE: a line a real trainer would print", flush=True)  # for the quiet-terminal test
        limit = os.environ.get("FAKE_TRAIN_FAIL_ABOVE")
        if limit and n_train > int(limit):
            raise FatalError(f"fake training failure: {n_train} frames > {limit}")
        work = Path(ip["task_name"])
        work.mkdir(exist_ok=True)
        (work / "model.fake").write_text(json.dumps({"n_train": n_train, "task": ip["task_name"],
                                                   "init_mode": ip["config"]["init_mode"]}))
        ckpt = work / "checkpoint_files"
        ckpt.mkdir(exist_ok=True)
        (ckpt / "model.ckpt.index").write_text(str(n_train))
        (work / "lcurve.out").write_text("# step rmse_trn\n0 1.0\n")
        (work / "train.log").write_text("fake training\n")
        return OPIO({"model": work / "model.fake", "checkpoint": ckpt, "lcurve": work / "lcurve.out",
                     "log": work / "train.log"})


class FakeModelDevi(ModelDevi):
    """FAKE: deviations from a formula of the frame's id and the models' training-set size."""

    def execute(self, ip: OPIO) -> OPIO:
        sizes = {json.loads(Path(m).read_text())["n_train"] for m in ip["models"]}
        if len(sizes) != 1:
            raise FatalError(f"the fake models disagree on their training sets: {sorted(sizes)}")
        n_train = sizes.pop()
        _log(f"model-devi n_train={n_train}")
        state = LoopState.load(ip["state"])
        shard = in_shard(state.pool, shard_ranges(state.systems, ip["shard_size"], ip["shard_index"]))
        keys = [(k, i) for k in sorted(shard) for i in shard[k]]
        values = np.zeros((len(keys), len(COLUMNS)))
        u = np.array([zlib.crc32(f"{k}:{i}".encode()) / 2**32 for k, i in keys])
        values[:, COLUMNS.index("max_devi_f")] = 0.3 * u * fake_scale(n_train)
        trust = SelectParams.from_dict(ip["select_params"]).trust
        summary = {"shard": ip["shard_index"], "n_frames": len(keys)}
        n_probe = count_frames_in(ip["probe_data"]) if ip["shard_index"] == 0 else 0
        if n_probe:
            summary["probe"] = {"rmse_e_per_atom": 0.01 * fake_scale(n_train), "rmse_f": 0.5 * fake_scale(n_train),
                                "n_frames": n_probe}
        return OPIO(write_shard_outputs(ip["shard_index"], classify_shard(Deviations(keys, values), trust), summary))


def fake_stages():
    from dflow_simplify.workflows.superop import StageOps

    return StageOps(run_train=FakeRunTrain, model_devi=FakeModelDevi)

