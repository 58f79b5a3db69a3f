"""Where a command writes: checked before anything is written, and held by one live run.

`check_output` refuses a folder that is a file, cannot be written, or lies inside one of the run's inputs
(pick_data, init data, the starting models) or holds one (the staged inputs would be walked as pick_data;
the run's models/ and dataset/ would mix with them): `run`, `--check` and `download` call it. `output_lock`
takes `<output>/.lock` with `flock` on an open file, so the kernel drops it when its holders die; its
processes end with the main process (processes.py), so a rerun after kill -9 takes it and resumes, and a
second run on the same folder is refused while the first one lives.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

LOCK = ".lock"
RELEASE_WAIT = 30.0  # seconds a rerun waits for an ended run's guard to end its processes and free the lock


class OutputError(RuntimeError):
    """An output folder a run cannot use; the message names the folder and why."""


def workflow_name(config_path: Path) -> str:
    """simplify-<config name>, or simplify-<folder> for generic names like config.json: the workflow's name and
    its default output folder."""
    stem = config_path.stem
    if stem.lower() in ("config", "simplify", "input", "param", "params"):
        stem = config_path.resolve().parent.name
    stem = "".join(c if c.isascii() and c.isalnum() else "-" for c in stem.lower()).strip("-") or "run"
    return f"simplify-{stem}"[:40].rstrip("-")


def run_inputs(cfg) -> dict[str, list[str]]:
    """What a run of `cfg` (a SimplifyConfig) reads and so must never write into, as check_output takes it."""
    return {"pick_data": cfg.pick_roots, "init data (init_data_sys)": cfg.init_data,
            "the starting models": cfg.iter0_models}


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def check_output(output: Path, inputs: dict[str, list[str]], flag: str = "-o") -> None:
    """Raise OutputError, before anything is created, for an output folder this run cannot use. `inputs`:
    what the run reads, by the name the message gives it ("pick_data", "init data", ...): local paths (an
    s3:// URI is no place on this machine)."""
    if output.exists() and not output.is_dir():
        raise OutputError(f"{flag} {output}: is a file; expected a folder (new or a run's output folder)")
    real = os.path.realpath(output)
    for what, paths in inputs.items():
        for path in paths:
            if path.startswith("s3://"):
                continue
            path_real = os.path.realpath(path)
            if _inside(real, path_real) or _inside(path_real, real):
                where = "inside" if _inside(real, path_real) else "around"
                raise OutputError(f"{flag} {output}: the output folder is {where} {what} {path}, which no command "
                                  f"writes into; give an output folder outside {what}")
    _check_writable(output, Path(real), flag)


def _check_writable(output: Path, real: Path, flag: str) -> None:
    """Make and remove a folder in the deepest existing folder on the way (os.access says yes to root
    everywhere, /proc included)."""
    existing = real
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{flag} {output}: {existing} is a file; expected a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".simplify-probe-", dir=existing))
    except OSError as e:
        raise OutputError(f"{flag} {output}: cannot write in {existing}: {e.strerror}") from None


def _read_lock(lock_file: Path) -> tuple[int | None, float | None, str | None]:
    """(pid, start time, token) of the lock's last holder, as it wrote them (None for what is not there)."""
    try:
        fields = lock_file.read_text().split()
    except OSError:
        return None, None, None
    pid = int(fields[0]) if fields and fields[0].isdigit() else None
    try:
        started = float(fields[1]) if len(fields) > 1 else None
    except ValueError:
        started = None
    return pid, started, fields[2] if len(fields) > 2 else None


def _alive(pid: int | None, started: float | None) -> bool:
    import psutil

    if pid is None:
        return False
    try:
        proc = psutil.Process(pid)
        return started is None or abs(proc.create_time() - started) < 0.01
    except psutil.Error:
        return False


def _holder(lock_file: Path) -> str:
    pid, _, _ = _read_lock(lock_file)
    if pid is None:
        return "another process"
    try:
        import psutil

        return f"process {pid} ({' '.join(psutil.Process(pid).cmdline())[:200]})"
    except Exception:  # gone, or not readable: the pid is what we know
        return f"process {pid}"


def _take(fd: int, output: Path, lock_file: Path) -> None:
    """flock `fd`; when the last holder ended but the lock is still held (its guard ending its processes, or
    processes of a run whose guard was killed too), end them and wait for the lock."""
    from .processes import end_processes

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pid, started, token = _read_lock(lock_file)
        if _alive(pid, started):
            raise OutputError(f"{output} is in use by the live {_holder(lock_file)}; wait for it to end, `stop` it, "
                              "or give another --output") from None
    if token:
        end_processes(token)
    deadline = time.monotonic() + RELEASE_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise OutputError(f"{output} is still locked by processes of the run {pid}, which ended; wait for "
                                  "them to end, or give another --output") from None
            time.sleep(0.2)


@contextmanager
def output_lock(output: Path):
    """Hold `<output>/.lock` for the block, the run's processes ending with this one (processes.py);
    OutputError naming the live holder when another process has it."""
    import psutil

    from .processes import end_processes, run_processes

    lock_file = output / LOCK
    try:
        output.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise OutputError(f"{output}: cannot create the output folder or its lock: {e.strerror}") from None
    try:
        _take(fd, output, lock_file)
        _, _, previous = _read_lock(lock_file)
        if previous:  # processes of an ended run whose guard was killed with it: they hold no lock, but write
            end_processes(previous)
        token = uuid.uuid4().hex
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {psutil.Process().create_time()} {token}\n".encode(), 0)
        with run_processes(token, fd):
            yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
