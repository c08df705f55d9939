"""Progress reporting: a rich bar on a TTY, plain periodic log lines otherwise.

Off when stderr is not a terminal, with `--no-progress`, or with CXRAD_NO_PROGRESS=1; then a line
is logged at most every ``log_every`` seconds so batch logs (SLURM) still show life.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

_disabled_by_flag = False
err_console = Console(stderr=True, highlight=False)


def disable() -> None:
    """Called by the CLI for --no-progress."""
    global _disabled_by_flag
    _disabled_by_flag = True


def enabled() -> bool:
    if _disabled_by_flag or os.environ.get("CXRAD_NO_PROGRESS", "") not in ("", "0"):
        return False
    return sys.stderr.isatty()


def log(message: str) -> None:
    """One plain line on stderr."""
    err_console.print(message, markup=False, soft_wrap=True)


class _Task:
    def __init__(self, progress: Progress | None, task_id, label: str, total: int, log_every: float):
        self._p, self._id, self._label, self._total = progress, task_id, label, total
        self._done, self._last, self._t0, self._log_every = 0, 0.0, time.monotonic(), log_every
        self._base = 0   # steps done before this process started (a resume): not part of the rate
        self.info = ""

    def advance(self, n: int = 1, info: str = "", resumed: bool = False) -> None:
        """``n`` more steps done; ``resumed``: they were done by an earlier run (the rate ignores them)."""
        self._done += n
        if resumed:
            self._base, self._t0 = self._done, time.monotonic()
        if info:
            self.info = info
        if self._p is not None:
            self._p.update(self._id, advance=n, info=self.info)
            return
        now = time.monotonic()
        if self._log_every == float("inf"):
            return
        if now - self._last >= self._log_every or self._done >= self._total:
            self._last = now
            rate = (self._done - self._base) / max(now - self._t0, 1e-9)
            extra = f" {self.info}" if self.info else ""
            log(f"{self._label}: {self._done}/{self._total} ({rate:.1f}/s){extra}")


@contextmanager
def task(label: str, total: int, log_every: float = 10.0, quiet: bool = False) -> Iterator[_Task]:
    """Context manager yielding an object with ``advance(n, info="")``; ``quiet``: show nothing."""
    if quiet:
        yield _Task(None, None, label, total, float("inf"))
    elif enabled():
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=err_console, transient=False) as progress:
            tid = progress.add_task(label, total=total, info="")
            yield _Task(progress, tid, label, total, log_every)
    else:
        yield _Task(None, None, label, total, log_every)
