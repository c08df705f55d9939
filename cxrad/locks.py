"""Advisory locks: one writer per artifact folder at a time (docs/artifacts.md, "Concurrent use").

A stage holds an exclusive ``flock`` on a lock file *beside* the folder it writes
(``<parent>/.<name>.cxrad-lock``) from the moment it looks at the folder to decide what to do
until its manifest is written (:func:`cxrad.artifacts.begin_output` takes it, ``finish_output``
releases it). Another process that wants to write the same folder is refused at once with one
line naming the folder and the holder (host, pid, command, since when), exit code 75 — or, with
``CXRAD_LOCK_WAIT=SECONDS`` in the environment, first waits that long for the holder to finish.
Readers never lock.

The lock belongs to the process: it ends with it, ``kill -9`` included, so a lock is never stale
and there is nothing to clean up. The lock file stays (deleting it would race with the next
process opening it); while a process holds the lock it holds that process's host and pid, else
nothing. ``flock`` works on local file systems and on NFS (Linux maps it to NFS byte-range locks);
Lustre needs its ``flock`` mount option (with ``localflock`` only processes on one node exclude
each other). Where the file system refuses locks, cxrad warns once and writes without them.

DDAD-ASR's `train-ensemble` locks finer, so that SLURM array tasks training different members of
one run never wait for each other: the run folder only while it checks or creates the run manifest
and while it writes the ensemble manifest, and each (module, member) while it trains
(cxrad/methods/ddad/train_ensemble.py).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from cxrad import progress
from cxrad.errors import CxradError

LOCK_SUFFIX = ".cxrad-lock"
WAIT_ENV = "CXRAD_LOCK_WAIT"
EXIT_BUSY = 75          # EX_TEMPFAIL: another process is writing; try again later
_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


@dataclass
class _Held:
    fd: int
    path: Path           # the folder (or file) locked
    locked: bool         # False where the file system does not support locks


_held: dict[Path, _Held] = {}    # lock file -> what this process holds
_warned_unsupported: set[Path] = set()


def lock_file(path: str | os.PathLike) -> Path:
    """The lock file of a folder (or file): ``.<name>.cxrad-lock`` beside it, one per real path."""
    target = Path(path).resolve()
    return target.parent / f".{target.name}{LOCK_SUFFIX}"


def wait_seconds() -> float:
    value = os.environ.get(WAIT_ENV, "").strip()
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        raise CxradError(f"{WAIT_ENV}={value}: not a number of seconds; unset it or give e.g. {WAIT_ENV}=600.") \
            from None
    if not seconds >= 0:
        raise CxradError(f"{WAIT_ENV}={value}: must be 0 or more seconds.")
    return seconds


def _me() -> dict[str, Any]:
    argv = [Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]]
    command = " ".join(argv).replace("\n", " ")
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": command if len(command) <= 200 else command[:197] + "..."}


def _holder(fd: int) -> dict[str, Any]:
    """Who holds the lock, as its holder wrote it (empty for a moment after it took the lock)."""
    for _ in range(5):
        with contextlib.suppress(OSError, ValueError):
            text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            if text:
                found = json.loads(text)
                if isinstance(found, dict):
                    return found
        time.sleep(0.05)
    return {}


def describe_holder(holder: dict[str, Any]) -> str:
    if not holder:
        return "another cxrad process (it has not recorded its host and pid yet)"
    text = f"another cxrad process (pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
    if holder.get("since"):
        text += f", since {holder['since']}"
    if holder.get("command"):
        text += f": `{holder['command']}`"
    return text + ")"


def acquire(path: str | os.PathLike, what: str = "written", *, min_wait: float = 0.0) -> bool:
    """Take the exclusive lock of ``path`` (a folder, or a member's files); refuse, or wait up to
    ``CXRAD_LOCK_WAIT`` seconds (at least ``min_wait``: for locks held only for a moment), while
    another process holds it. ``what``: how the refusal names the holder's work ("written",
    "trained"). Returns False when this process already held it (the lock is then not taken twice),
    True when it was taken now."""
    lock = lock_file(path)
    if lock in _held:
        return False
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o664)
    except OSError as exc:
        raise CxradError(f"{path}: cannot create its lock file {lock} ({exc.strerror}); check that "
                         f"{lock.parent} is a writable folder.") from None
    try:
        locked = _wait_for(fd, lock, Path(path), what, max(wait_seconds(), min_wait))
    except BaseException:
        os.close(fd)
        raise
    if locked:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(_me()) + "\n").encode(), 0)
    _held[lock] = _Held(fd, Path(path), locked)
    return True


def _wait_for(fd: int, lock: Path, path: Path, what: str, wait: float) -> bool:
    """flock ``fd``, waiting up to ``wait`` seconds; False when the file system has no locks."""
    start = time.monotonic()
    deadline, told = start + wait, False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in _BUSY:
                if lock.parent not in _warned_unsupported:
                    _warned_unsupported.add(lock.parent)
                    progress.log(f"warning: {lock.parent}: the file system refuses locks ({exc.strerror}); "
                                 "writing without them, so do not run two cxrad processes on one folder here.")
                return False
        holder = _holder(fd)
        left = deadline - time.monotonic()
        if left <= 0:
            raise CxradError(f"{path}: being {what} by {describe_holder(holder)}; wait until it ends (or set "
                             f"{WAIT_ENV}=SECONDS to wait for it), or write elsewhere.", exit_code=EXIT_BUSY)
        if not told and time.monotonic() - start > 1:
            progress.log(f"{path}: being {what} by {describe_holder(holder)}; waiting up to {left:.0f} s.")
            told = True
        time.sleep(min(0.2, max(left, 0.01)))


def release(path: str | os.PathLike) -> None:
    """Give up this process's lock of ``path`` (nothing when it holds none)."""
    _release(lock_file(path))


def _release(lock: Path) -> None:
    held = _held.pop(lock, None)
    if held is None:
        return
    with contextlib.suppress(OSError):
        if held.locked:
            os.ftruncate(held.fd, 0)   # nobody holds it: no stale host/pid for the next refusal to show
            fcntl.flock(held.fd, fcntl.LOCK_UN)
    with contextlib.suppress(OSError):
        os.close(held.fd)


def release_all() -> None:
    """Give up every lock this process holds (the CLI calls it when a command ends, however it ends)."""
    for lock in list(_held):
        _release(lock)


def _forget_in_child() -> None:
    """In a forked child (a decoding worker): close the inherited lock files without unlocking them,
    so the locks stay the parent's and end with it, not with a worker that outlives it."""
    for held in _held.values():
        with contextlib.suppress(OSError):
            os.close(held.fd)
    _held.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def holds(path: str | os.PathLike) -> bool:
    return lock_file(path) in _held


@contextlib.contextmanager
def holding(path: str | os.PathLike, what: str = "written", *, min_wait: float = 0.0) -> Iterator[None]:
    """The lock of ``path`` for the duration of a ``with`` block (kept when it was held before)."""
    taken = acquire(path, what, min_wait=min_wait)
    try:
        yield
    finally:
        if taken:
            release(path)


def locks_output(begin: Callable[..., bool]) -> Callable[..., bool]:
    """Decorates :func:`cxrad.artifacts.begin_output`: the folder's lock is taken before it is looked
    at, kept when the stage goes on to write it (``finish_output`` releases it) and released when
    the stage has nothing to write or is refused."""

    @functools.wraps(begin)
    def wrapper(folder: str | os.PathLike, *args: Any, **kwargs: Any) -> bool:
        taken = acquire(folder)
        try:
            writes = begin(folder, *args, **kwargs)
        except BaseException:
            if taken:
                release(folder)
            raise
        if not writes and taken:
            release(folder)
        return writes

    return wrapper
