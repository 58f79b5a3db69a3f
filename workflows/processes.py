"""The processes of a local run end with its main process.

A local run is the main process (the CLI), dflow's pool workers (forked, for sliced steps) and the programs
they start (each OP's script, `dp train`, an FP code). When the main process alone is killed (kill -9, an OOM
killer, a closed terminal), nothing tells the others: they would go on writing into the output folder, and the
workers, which inherit the lock's file descriptor, would keep the folder locked. So, while a run holds its
output folder (`run_processes`):

- every process it starts carries the run's token in the environment variable DFLOW_SIMPLIFY_RUN (inherited
  by whatever that process starts in turn);
- a process forked by one of the run's processes (dflow's pool workers, which exec nothing, so that their
  environment as the kernel shows it lacks the token) gets a parent-death signal (prctl PR_SET_PDEATHSIG:
  SIGKILL when its parent ends);
- a guard (`python -m dflow_simplify.workflows.processes PID TOKEN`), holding the lock's file descriptor,
  waits for the main process to end, ends every process still carrying the token (SIGTERM, then SIGKILL),
  and only then exits, which releases the lock: a rerun never overlaps the ended run's processes.

`end_processes(token)` is that sweep; the lock runs it for the previous holder's token as well, in case its
guard was killed with it.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import psutil

RUN_ENV = "DFLOW_SIMPLIFY_RUN"
GRACE = 10.0  # seconds between SIGTERM and SIGKILL when a run's processes are ended
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

_fork = {"on": False, "parent": 0, "registered": False, "prctl": None}


def _before_fork() -> None:
    _fork["parent"] = os.getpid()


def _after_fork_in_child() -> None:
    if _fork["on"]:
        die_with_parent(_fork["parent"])


def _prctl():
    """libc's prctl, looked up in the parent (no dynamic loading in a forked child), or None off Linux."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent (`parent`, the process that forked it) ends; end at once if it
    already has. Linux only (elsewhere nothing happens)."""
    if _fork["prctl"] is None or _fork["prctl"](PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return
    if os.getppid() != parent:
        os._exit(1)


def _carries(proc: psutil.Process, token: str) -> bool:
    try:
        return proc.environ().get(RUN_ENV) == token
    except psutil.Error:  # gone, a zombie, or not ours to read
        return False


def end_processes(token: str, grace: float = GRACE) -> int:
    """End every process (but this one) carrying `token` in DFLOW_SIMPLIFY_RUN: SIGTERM (a batch job's wrapper
    cancels its job on it), SIGKILL for those alive `grace` seconds later; returns how many there were."""
    ended = 0
    for _ in range(10):  # a process may start another one while the first ones are being ended
        found = [p for p in psutil.process_iter() if p.pid != os.getpid() and _carries(p, token)]
        if not found:
            break
        ended += len(found)
        for signal_, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
            for proc in found:
                try:
                    proc.send_signal(signal_)
                except psutil.Error:
                    pass
            found = _wait_gone(found, wait)
            if not found:
                break
    return ended


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Those of `procs` still running after up to `timeout` s (not psutil.wait_procs: it waits for a zombie until
    someone reaps it, which, for the orphans of a killed process, may take long)."""
    deadline = time.monotonic() + timeout
    while procs and time.monotonic() < deadline:
        time.sleep(0.05)
        procs = [p for p in procs if running(p.pid)]
    return procs


def running(pid: int) -> bool:
    """`pid` is a live process (a zombie has ended: its parent may be gone too, and never reap it)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait_for_end(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd (Linux < 5.3): this guard is reparented when `pid` ends
        while os.getppid() == pid:
            time.sleep(0.2)
        return
    try:
        select.select([fd], [], [])
    finally:
        os.close(fd)


def guard(pid: int, token: str) -> None:
    """Wait for the run's main process `pid` to end (or for SIGUSR1: it ended its run normally), then end every
    process of the run left."""
    # Ctrl-C reaches the whole group, `stop` sends SIGTERM to every process of the run: outlive the main process
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def ended(*_):
        raise SystemExit(0)

    signal.signal(signal.SIGUSR1, ended)
    try:
        _wait_for_end(pid)
    except SystemExit:
        pass
    finally:
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        end_processes(token)


@contextmanager
def run_processes(token: str, lock_fd: int):
    """Within the block, the processes this one starts carry `token` and die with it (see the module's doc);
    the guard shares `lock_fd`, so the lock outlives this process until its processes are gone."""
    previous = os.environ.get(RUN_ENV)
    os.environ[RUN_ENV] = token
    if not _fork["registered"]:
        _fork["prctl"] = _prctl()
        os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
        _fork["registered"] = True
    _fork["on"] = True
    guard_proc = subprocess.Popen([sys.executable, "-m", __name__, str(os.getpid()), token], pass_fds=(lock_fd,),
                                  stdin=subprocess.DEVNULL)
    try:
        yield
    finally:
        _fork["on"] = False
        guard_proc.send_signal(signal.SIGUSR1)
        try:
            guard_proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            guard_proc.kill()
            guard_proc.wait()
        if previous is None:
            os.environ.pop(RUN_ENV, None)
        else:
            os.environ[RUN_ENV] = previous


if __name__ == "__main__":
    guard(int(sys.argv[1]), sys.argv[2])
