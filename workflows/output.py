"""The output folder of a run: checked before anything is written, and held by one live process.

`check_output` refuses a folder that is a file, cannot be written, or lies inside pick_data (or holds it:
the staged inputs would be walked as pick_data). `output_lock` takes `<output>/.lock` with `flock`: the
kernel drops it when its process dies, so a stale lock never blocks a resume, and a second run on the
same folder is refused while the first one lives.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

LOCK = ".lock"


class OutputError(RuntimeError):
    """An output folder a run cannot use; the message names the folder and why."""


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def check_output(output: Path, pick_roots: list[str]) -> None:
    """Raise OutputError, before anything is created, for an output folder this run cannot use."""
    if output.exists() and not output.is_dir():
        raise OutputError(f"-o {output}: is a file; expected a folder (new or a run's output folder)")
    real = os.path.realpath(output)
    for root in pick_roots:
        root_real = os.path.realpath(root)
        if _inside(real, root_real) or _inside(root_real, real):
            where = "inside" if _inside(real, root_real) else "around"
            raise OutputError(f"-o {output}: the output folder is {where} pick_data's {root}; the run would read its "
                              "own files as pick_data. Give an output folder outside pick_data")
    existing = Path(real)
    while not existing.exists():
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"-o {output}: {existing} is not writable")


def _holder(lock_file: Path) -> str:
    try:
        pid = int(lock_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return "another process"
    try:
        import psutil

        return f"process {pid} ({' '.join(psutil.Process(pid).cmdline())[:200]})"
    except Exception:  # gone, or not readable: the pid is what we know
        return f"process {pid}"


@contextmanager
def output_lock(output: Path):
    """Hold `<output>/.lock` for the block; OutputError naming the live holder when another process has it."""
    output.mkdir(parents=True, exist_ok=True)
    lock_file = output / LOCK
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OutputError(f"{output} is in use by the live {_holder(lock_file)}; wait for it to end, `stop` it, "
                          "or give another --output") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
