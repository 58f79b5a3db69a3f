"""How long each step took, summed per stage and spanned per iteration.

A local step's log holds its OP's time record (ops/op_time.py: start, end, CPU); an Argo step gives only its
start and end (CPU unknown: None), as Argo records them.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from dflow_simplify.ops.op_time import parse_op_time
from dflow_simplify.ops.select_confs import iter_index_of

STAGES = ("prep-train", "run-train", "model-devi", "select-confs", "run-fp")


def stage_of(step_key: str) -> str:
    """`iter-000003--run-train-0001` -> `run-train`."""
    return re.sub(r"-\d+$", "", step_key.split("--", 1)[1])


def _epoch(stamp) -> float | None:
    if stamp in (None, ""):
        return None
    if isinstance(stamp, (int, float)):
        return float(stamp)
    return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()


def local_log(step, workdir: str | None) -> Path | None:
    """The log.txt of a local (dflow debug mode) step, under dflow's debug_workdir."""
    if not workdir:
        return None
    return Path(workdir, getattr(step, "workflow", ""), step.key, "log.txt")


def step_time(step, workdir: str | None = None) -> dict | None:
    """{"start", "end", "cpu"} of one ended step: its OP's record in its local log, else Argo's start and end
    (cpu None); None when neither is known."""
    log = local_log(step, workdir)
    if log is not None and log.is_file():
        record = parse_op_time(log.read_text(errors="replace"))
        if record:
            return record
    start, end = _epoch(getattr(step, "startedAt", None)), _epoch(getattr(step, "finishedAt", None))
    if workdir is None and start is not None and end is not None:
        return {"start": start, "end": end, "cpu": None}
    return None


def step_times(steps, workdir: str | None = None) -> dict[str, dict]:
    """Step key -> time record, for every keyed OP step of the loop that ended."""
    out = {}
    for s in steps:
        key = getattr(s, "key", None) or ""
        if getattr(s, "type", "Pod") != "Pod" or "--" not in key or stage_of(key) not in STAGES:
            continue
        if getattr(s, "phase", "") in ("Succeeded", "Failed", "Error"):
            record = step_time(s, workdir)
            if record:
                out[key] = record
    return out


def _sum(values) -> float | None:
    values = list(values)
    return None if not values or any(v is None for v in values) else round(sum(values), 1)


def per_stage(times: dict[str, dict]) -> list[dict]:
    """Per stage, in the loop's order: steps, wall time summed over its steps (slices that ran side by side
    count each), CPU time summed (None when a step's is unknown)."""
    rows = []
    for stage in STAGES:
        recs = [r for k, r in times.items() if stage_of(k) == stage]
        if recs:
            rows.append({"stage": stage, "steps": len(recs), "wall_s": _sum(r["end"] - r["start"] for r in recs),
                         "cpu_s": _sum(r["cpu"] for r in recs)})
    return rows


def per_iteration(times: dict[str, dict]) -> dict[int, float]:
    """Iteration -> wall time from its first step's start to its last step's end (s)."""
    spans: dict[int, list[float]] = {}
    for key, r in times.items():
        span = spans.setdefault(iter_index_of(key), [r["start"], r["end"]])
        span[0], span[1] = min(span[0], r["start"]), max(span[1], r["end"])
    return {it: round(end - start, 1) for it, (start, end) in sorted(spans.items())}
