"""A live line on a terminal: the step under way and its elapsed time (rich), gone when the work ends; nothing
when the output is not a terminal (a log file, a test)."""

from __future__ import annotations

import sys
from contextlib import contextmanager


@contextmanager
def live_steps(prefix: str, out=None):
    """Yields `step(description)`: call it as each step begins; the line shows `prefix: description  0:00:12`."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(file=out or sys.stdout, highlight=False)
    progress = Progress(SpinnerColumn("line"), TextColumn(f"{prefix}: {{task.description}}"), TimeElapsedColumn(),
                        console=console, transient=True, disable=not console.is_terminal)
    current = []

    def step(description: str) -> None:
        if current:
            progress.remove_task(current.pop())
        current.append(progress.add_task(description, total=None))

    with progress:
        yield step
