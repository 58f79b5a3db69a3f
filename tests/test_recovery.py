"""Recovery: a run's processes end with its main process (kill -9 of it alone), dflow's records are never left
half-written, and a stopped run's records are mended before it resumes. The whole loop killed, or run out of
disk space, and resumed: tests/test_loop_wiring.py."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from dflow_simplify.workflows.output import LOCK, output_lock
from dflow_simplify.workflows.processes import RUN_ENV, running
from dflow_simplify.workflows.recovery import NO_PID, _open, mend, mount_point, no_space_message
from tests.conftest import ROOT

# a run's shape: the main process holds the lock, a forked worker (as dflow's pool) starts a program (as an OP's
# script), and the main process starts one of its own (as a step it runs itself)
HOLDER = """
import multiprocessing, subprocess, sys, time
from pathlib import Path
from dflow_simplify.workflows.output import output_lock

SLEEP = [sys.executable, "-c", "import time; time.sleep(120)"]

def worker(queue):
    queue.put(subprocess.Popen(SLEEP).pid)
    time.sleep(120)

with output_lock(Path(sys.argv[1])):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    forked = ctx.Process(target=worker, args=(queue,))
    forked.start()
    program = subprocess.Popen(SLEEP)
    print(forked.pid, queue.get(), program.pid, flush=True)
    time.sleep(120)
"""


def _start_holder(out: Path) -> tuple[subprocess.Popen, list[int]]:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    pids = [int(p) for p in holder.stdout.readline().split()]
    assert len(pids) == 3, pids
    return holder, pids


def _gone(pids: list[int], timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while any(running(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_kill_9_of_the_main_process_alone_ends_all_its_processes_and_frees_the_lock(tmp_path):
    out = tmp_path / "out"
    holder, pids = _start_holder(out)
    try:
        assert all(psutil.pid_exists(p) for p in pids)
        guard = [c for c in psutil.Process(holder.pid).children() if "workflows.processes" in " ".join(c.cmdline())]
        assert len(guard) == 1
        holder.send_signal(signal.SIGKILL)  # the main process alone, as an OOM killer does
        holder.wait()
        assert _gone(pids + [guard[0].pid]), [p for p in pids if running(p)]
        t0 = time.monotonic()
        with output_lock(out):  # a rerun takes the lock at once
            assert (out / LOCK).read_text().split()[0] == str(os.getpid())
        assert time.monotonic() - t0 < 5
    finally:
        for p in [holder.pid, *pids]:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_rerun_ends_what_an_ended_run_left_when_its_guard_died_with_it(tmp_path):
    """kill -9 of the main process and its guard at once: the forked worker dies with its parent, the programs
    started (they carry the run's token) are ended by the rerun before it takes over the folder."""
    out = tmp_path / "out"
    holder, (forked, worker_program, program) = _start_holder(out)
    try:
        (guard,) = [c for c in psutil.Process(holder.pid).children() if "workflows.processes" in " ".join(c.cmdline())]
        guard.kill()  # not waited for: the holder, its parent, reaps it only when it dies
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert _gone([forked])  # the parent-death signal
        assert running(program) and running(worker_program)  # nothing else ended them yet
        with output_lock(out):
            assert _gone([program, worker_program], timeout=1)
    finally:
        for p in [holder.pid, forked, worker_program, program]:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_the_processes_of_a_run_that_ended_normally_are_not_touched(tmp_path):
    """The token is this run's alone: a program started outside the lock, or by another run, lives on."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             env={**os.environ, RUN_ENV: "another-run"})
    try:
        with output_lock(tmp_path / "out"):
            assert os.environ[RUN_ENV] != "another-run"
        assert RUN_ENV not in os.environ and other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_a_record_write_cut_short_keeps_the_old_content(tmp_path):
    phase = tmp_path / "phase"
    phase.write_text("Running")
    with pytest.raises(OSError):
        with _open(phase, "w") as f:
            f.write("Succ")
            raise OSError(28, "No space left on device")
    assert phase.read_text() == "Running" and sorted(p.name for p in tmp_path.iterdir()) == ["phase"]
    with _open(phase, "w") as f:
        f.write("Succeeded")
    assert phase.read_text() == "Succeeded"


def test_mend_removes_step_records_cut_short_and_keeps_everything_else(tmp_path):
    wf = tmp_path / "simplify-x-abcde"
    for name, files in {
        "iter-000001--prep-train": {"phase": "Succeeded", "type": "Pod", "name": "prep-train"},
        "iter-000001--run-fp-000000": {"phase": "Failed", "type": "Pod", "name": "run-fp", "log.txt": "boom"},
        "iter-000002--run-train-0000": {"type": "Pod"},  # its phase was never written (a full disk)
        "iter-000002--model-devi-000000": {"phase": "", "type": "Pod"},  # emptied (old dflow writes)
        "iter-000001--run-train-group": {"checkpoint/model.ckpt.index": "x"},  # a sliced step's outputs
        "iter-000002--iteration": {"phase": "Running", "type": "Steps", "children": '{"0-0": "iter-0'},
    }.items():
        for rel, text in files.items():
            (wf / name / rel).parent.mkdir(parents=True, exist_ok=True)
            (wf / name / rel).write_text(text)
    (wf / "iter-000002--select-confs").mkdir()  # made, nothing written in it
    (wf / "iter-000001--prep-train" / "phase.simplify-tmp-123").write_text("Succ")  # a write killed midway
    (wf / "pid").write_text("")
    removed = mend(wf)
    assert sorted(removed) == ["iter-000002--model-devi-000000", "iter-000002--run-train-0000",
                               "iter-000002--select-confs"]
    assert sorted(p.name for p in wf.iterdir() if p.is_dir()) == [
        "iter-000001--prep-train", "iter-000001--run-fp-000000", "iter-000001--run-train-group",
        "iter-000002--iteration"]
    assert (wf / "iter-000001--run-fp-000000" / "log.txt").read_text() == "boom"
    assert not (wf / "iter-000002--iteration" / "children").exists()  # unreadable: dflow makes it again
    assert not (wf / "iter-000001--prep-train" / "phase.simplify-tmp-123").exists()
    assert (wf / "status").read_text() == "Running" and (wf / "pid").read_text() == str(NO_PID)
    json.dumps(removed)


def test_no_space_names_the_file_system(tmp_path):
    msg = no_space_message(tmp_path / "not-yet" / "out", [])
    assert msg.startswith(f"no space left on {mount_point(tmp_path)} (the file system of the output folder")
    assert "run the same command again to resume" in msg
