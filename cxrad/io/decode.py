"""Decoding many image files in parallel, as `prepare` and `predict` both need it.

Each worker process returns one small (size, size) float16 array per file, so memory grows with the
output, not the source. A file that cannot be read becomes a reject with its reason, never an error.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from typing import Any, Optional

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


def decode_all(entries: list[Entry], cfg: PrepareConfig, workers: int, label: str = "prepare: decoding"
               ) -> tuple[list[Optional[np.ndarray]], list[Any]]:
    """Decode and preprocess ``entries`` in ``workers`` processes.

    Returns, in the order of ``entries``, each image ((size, size) float16 in [0, 1], or None when
    rejected) and its provenance dict (or the reject reason). Rejects are logged as they come.
    """
    images: list[Optional[np.ndarray]] = [None] * len(entries)
    info: list[Any] = [None] * len(entries)
    tasks = list(enumerate(entries))
    pool = None
    if workers > 1 and len(entries) > 1:
        # fork: workers start in milliseconds and inherit the imports; started before any progress
        # thread exists.
        pool = mp.get_context("fork").Pool(workers, initializer=_init_worker, initargs=(cfg,))
        results = pool.imap_unordered(_decode, tasks, chunksize=max(1, min(32, len(tasks) // (8 * workers))))
    else:
        _init_worker(cfg)
        results = map(_decode, tasks)
    try:
        with progress.task(label, len(tasks)) as bar:
            for i, img, what in results:
                images[i], info[i] = img, what
                if img is None:
                    progress.log(f"rejected {entries[i].id}: {what}")
                bar.advance(1)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return images, info
