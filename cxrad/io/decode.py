"""Decoding many image files in parallel, as `prepare` and `predict` both need it.

Each worker process returns one small (size, size) float16 array per file, so memory grows with the
output, not the source. A file that cannot be read becomes a reject with its reason, never an error.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
from typing import Any, Iterable, Iterator, NamedTuple, Optional

import numpy as np

from cxrad import progress
from cxrad.config import PrepareConfig
from cxrad.io.images import load_image
from cxrad.io.raster import RejectedImage
from cxrad.io.sources import Entry, read_bytes

_CFG: Optional[PrepareConfig] = None  # per worker process, set by the pool initializer


def default_workers() -> int:
    """CPUs this process may use (respects taskset / cgroup cpusets, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _init_worker(cfg: PrepareConfig) -> None:
    global _CFG
    _CFG = cfg
    # One BLAS/Pillow thread per process: the processes already use every CPU.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _decode(task: tuple[int, Entry]) -> tuple[int, Optional[np.ndarray], Any]:
    """Worker: (index, entry) -> (index, (size, size) float16 or None, provenance or reject reason)."""
    i, entry = task
    try:
        data = read_bytes(entry.loc)
        img, prov = load_image(data, entry.id, _CFG)
        return i, img.astype(np.float16), prov
    except RejectedImage as exc:
        return i, None, str(exc)
    except MemoryError:
        return i, None, "image too large to decode in memory"
    except OSError as exc:
        return i, None, f"cannot read file ({exc.strerror or type(exc).__name__})"


class DecodedChunk(NamedTuple):
    """Consecutive ``entries`` and, per entry, the image ((size, size) float16 in [0, 1], or None
    when rejected) and its provenance dict (or the reject reason)."""

    entries: list[Entry]
    images: list[Optional[np.ndarray]]
    info: list[Any]


class DecodePool:
    """One pool of ``workers`` decoding processes, reused for every batch of entries given to it.

    `predict` decodes its calibration normals and then its inputs chunk by chunk through one pool:
    the processes are forked once, at construction, before any torch or progress thread exists.
    Use it as a context manager; leaving it terminates the processes. ``workers`` <= 1 decodes in
    this process.
    """

    def __init__(self, cfg: PrepareConfig, workers: int):
        self.cfg, self.workers = cfg, workers
        self._pool = None
        if workers > 1:
            # fork: workers start in milliseconds and inherit the imports
            self._pool = mp.get_context("fork").Pool(workers, initializer=_init_worker, initargs=(cfg,))
        else:
            _init_worker(cfg)

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def _start(self, entries: list[Entry]) -> Iterator[tuple[int, Optional[np.ndarray], Any]]:
        """Hand ``entries`` to the workers now; the results come back (in any order) from the iterator."""
        tasks = list(enumerate(entries))
        if self._pool is None:
            return map(_decode, tasks)  # lazy: decoded here as the results are read
        return self._pool.imap_unordered(_decode, tasks,
                                         chunksize=max(1, min(32, len(tasks) // (8 * self.workers))))

    @staticmethod
    def _collect(entries: list[Entry], results: Iterator, bar: Any = None) -> DecodedChunk:
        images: list[Optional[np.ndarray]] = [None] * len(entries)
        info: list[Any] = [None] * len(entries)
        for i, img, what in results:
            images[i], info[i] = img, what
            if img is None:
                progress.log(f"rejected {entries[i].id}: {what}")
            if bar is not None:
                bar.advance(1)
        return DecodedChunk(entries, images, info)

    def decode(self, entries: list[Entry], label: str = "decoding") -> DecodedChunk:
        """Every entry at once, with a progress bar ``label``."""
        entries = list(entries)
        with progress.task(label, len(entries)) as bar:
            return self._collect(entries, self._start(entries), bar)

    def chunks(self, entries: Iterable[Entry], size: int) -> Iterator[DecodedChunk]:
        """``entries`` decoded ``size`` at a time, yielded in input order.

        While the caller works on one chunk the workers already decode the next, so at most two
        chunks of images are held, whatever the number of entries. ``entries`` may be a generator.
        """
        if size < 1:
            raise ValueError(f"chunk size {size}: must be at least 1")
        it = iter(entries)
        pending: Optional[tuple[list[Entry], Iterator]] = None
        while True:
            batch = list(itertools.islice(it, size))
            started = (batch, self._start(batch)) if batch else None
            if pending is not None:
                yield self._collect(*pending)
            if started is None:
                return
            pending = started


def decode_iter(entries: Iterable[Entry], cfg: PrepareConfig, workers: int, chunk: int) -> Iterator[DecodedChunk]:
    """Decode ``entries`` ``chunk`` at a time in ``workers`` processes (one pool for all chunks),
    yielding :class:`DecodedChunk` in input order. Rejects are logged as they come.

    The processes are forked at the first ``next()``; a caller that starts threads first (torch,
    CUDA, a progress bar) or decodes other files too should hold a :class:`DecodePool` instead."""
    with DecodePool(cfg, workers) as pool:
        yield from pool.chunks(entries, chunk)


def decode_all(entries: list[Entry], cfg: PrepareConfig, workers: int, label: str = "prepare: decoding"
               ) -> tuple[list[Optional[np.ndarray]], list[Any]]:
    """Decode and preprocess ``entries`` in ``workers`` processes.

    Returns, in the order of ``entries``, each image ((size, size) float16 in [0, 1], or None when
    rejected) and its provenance dict (or the reject reason). Rejects are logged as they come.
    """
    # no pool for a single file; the pool is started before any progress thread exists
    with DecodePool(cfg, workers if len(entries) > 1 else 1) as pool:
        got = pool.decode(entries, label)
    return got.images, got.info
