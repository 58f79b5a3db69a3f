"""A local run that stopped half-way (kill -9, a full disk) resumes; nothing half-written passes for finished.

dflow's debug mode keeps each step's record in small files (`phase`, `children`, parameters) that it
rewrites in place, and reads them all again when a run resumes: a write cut short (the disk full, the
process killed) left an empty or missing `phase`, and every later resume stopped on it. So:

- `atomic_dflow_writes` makes dflow write those files under a temporary name and rename it: a file is its old
  content or its new one, never a part (log.txt, which dflow streams a step's output into, is left alone);
- `mend` runs before a resume: a step folder without a valid `phase` (its set-up was cut short: nothing in it
  ran) is removed, to be set up again, and the workflow's `status` and `pid` are made readable;
- `SpaceWatch` and `no_space_message`: a run that stopped for want of space says so, naming the file system.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import re
import shutil
from pathlib import Path

PHASES = {"Pending", "Running", "Succeeded", "Failed", "Error", "Skipped", "Omitted"}
NO_SPACE_ERRNO = (errno.ENOSPC, errno.EDQUOT)
NO_SPACE = re.compile(r"No space left on device|Disk quota exceeded")
NO_SPACE_PATH = re.compile(r"(?:No space left on device|Disk quota exceeded): '([^']+)'")
NO_PID = 4194305  # above Linux's largest pid_max (2^22): the ended run's process, which no process can be
STREAMED = {"log.txt"}
TMP = ".simplify-tmp-"  # infix of the temporary names
STEP_FILES = ("phase", "type", "name")  # what makes a folder a step's (a sliced step's gathered outputs are not)


class _AtomicFile:
    """A text file written under a temporary name in the same folder and renamed over `path` on a clean close;
    on an error (a full disk) the temporary file is removed and `path` keeps its old content."""

    def __init__(self, path, **kwargs):
        self.path = os.fspath(path)
        self.tmp = f"{self.path}{TMP}{os.getpid()}"
        self.file = builtins.open(self.tmp, "w", **kwargs)

    def write(self, text: str) -> int:
        return self.file.write(text)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            self.file.close()
            if exc_type is None:
                os.replace(self.tmp, self.path)
        finally:
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)
        return False


def _open(file, mode="r", *args, **kwargs):
    if mode == "w" and not args and os.path.basename(os.fspath(file)) not in STREAMED:
        return _AtomicFile(file, **kwargs)
    return builtins.open(file, mode, *args, **kwargs)


def atomic_dflow_writes() -> None:
    """dflow's step and workflow records written whole or not at all (module-level `open` of dflow.step and
    dflow.workflow, where dflow's debug mode writes them with `with open(path, "w")`)."""
    import dflow.step
    import dflow.workflow

    dflow.step.open = _open
    dflow.workflow.open = _open


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def mend(wf_dir: Path) -> list[str]:
    """Make a stopped local workflow's records readable before dflow resumes it; returns the step folders
    removed. Only unfinished steps are touched: a step whose phase is Succeeded is never changed."""
    removed = []
    for folder in sorted(p for p in wf_dir.iterdir() if p.is_dir()):
        if not any(folder.iterdir()):  # made, then nothing written in it
            folder.rmdir()
            removed.append(folder.name)
        elif any((folder / f).exists() for f in STEP_FILES) and _read(folder / "phase") not in PHASES:
            shutil.rmtree(folder)  # a step's record cut short in its set-up: nothing in it ran
            removed.append(folder.name)
    for pattern in ("*", "*/*", "*/*/parameters/*", "*/*/parameters/.dflow/*"):  # a write cut short by kill -9
        for tmp in wf_dir.glob(pattern + TMP + "*"):
            tmp.unlink()
    for children in [p for p in [wf_dir / "children", *wf_dir.glob("*/children")] if p.exists()]:
        try:
            json.loads(_read(children) or "")
        except ValueError:
            children.unlink()
    if _read(wf_dir / "status") in (None, ""):
        (wf_dir / "status").write_text("Running")
    # the ended run's process is gone (its guard saw to it): a reused pid must not look like it to dflow
    (wf_dir / "pid").write_text(str(NO_PID))
    return removed


class SpaceWatch(io.TextIOBase):
    """A text stream passed through to `stream`, noting whether a full-disk error went by (dflow prints the
    tracebacks of failed steps, its own writes' too, to stderr)."""

    def __init__(self, stream):
        self.stream, self.seen, self.paths = stream, False, []

    def write(self, text: str) -> int:
        if NO_SPACE.search(text):
            self.seen = True
            self.paths += NO_SPACE_PATH.findall(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def fileno(self) -> int:
        return self.stream.fileno()

    def isatty(self) -> bool:
        return self.stream.isatty()

    @property
    def encoding(self):
        return getattr(self.stream, "encoding", None)


def is_no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNO


def mount_point(path: str | os.PathLike) -> Path:
    """The mount point of the file system holding `path` (or its deepest existing folder)."""
    p = Path(os.path.realpath(path))
    while not p.exists():
        p = p.parent
    dev = p.stat().st_dev
    while p != p.parent and p.parent.stat().st_dev == dev:
        p = p.parent
    return p


def no_space_message(output: Path, paths: list[str] = ()) -> str:
    """"no space left on <file system>" with what it holds and its free space, and what to do."""
    where = [mount_point(p) for p in paths] or [mount_point(output)]
    mount = where[-1]
    free = shutil.disk_usage(mount).free
    holds = f"the file system of {paths[-1]}" if paths else f"the file system of the output folder {output}"
    return (f"no space left on {mount} ({holds}; {free / 2**20:.1f} MiB free now): free space there, then run the "
            "same command again to resume (every finished step is kept)")
