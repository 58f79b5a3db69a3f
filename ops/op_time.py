"""Each OP's wall and CPU time, printed as one tagged line into its step's log when it ends (params.fatal_errors
wraps every OP's `execute` with `op_timer`): the report reads them back to tell the time of each stage. The CPU
time counts the OP's own process and the children it waited for (`dp train`, an FP code)."""

from __future__ import annotations

import json
import resource
import sys
import time
from contextlib import contextmanager

TAG = "dflow-simplify op time:"


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@contextmanager
def op_timer(out=None):
    """Print `TAG {"start": ..., "end": ..., "cpu": ...}` (epoch seconds, CPU seconds) when the block ends,
    whether it succeeds or raises."""
    start, cpu = time.time(), _cpu_seconds()
    try:
        yield
    finally:
        record = {"start": round(start, 3), "end": round(time.time(), 3), "cpu": round(_cpu_seconds() - cpu, 3)}
        print(f"{TAG} {json.dumps(record)}", file=out or sys.stdout, flush=True)


def parse_op_time(log_text: str) -> dict | None:
    """The last time record in a step's log, or None."""
    for line in reversed(log_text.splitlines()):
        if line.startswith(TAG):
            try:
                return json.loads(line[len(TAG):])
            except ValueError:
                return None
    return None
