"""HDF5 files written and read safely: atomic, checksummed, one-line errors (docs/artifacts.md).

Writing (:func:`create_h5`): the file is built at a temporary name and renamed into place
(:func:`cxrad.artifacts.atomic_path`). HDF5 does not write through its own driver but through a
Python file object that records the first failed write (disk full, read-only file system) and
ignores the rest: HDF5 then closes the file normally and the error is raised afterwards. Letting
HDF5 itself see a failed write leaves it unable to close the file, and a second close attempt
(which h5py makes when the object is freed) crashes the interpreter.

Datasets of images and maps are written with ``fletcher32`` checksums (:data:`CHECKSUM`): every
chunk carries its own, so a chunk overwritten on disk raises on read, at no measurable cost; the
file format of HDF5 1.10 (:data:`LIBVER`) checksums the file's own structures as well.

Reading (:func:`open_h5`): the errors HDF5 gives for a damaged file (a clobbered superblock, a chunk
whose checksum fails, a broken object header) become one :class:`~cxrad.errors.CxradError` line
naming the file and how to re-create it. Files written before checksums were added read as before.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Iterator

import h5py

from cxrad.artifacts import atomic_path
from cxrad.errors import CxradError

CHECKSUM = {"fletcher32": True}   # create_dataset options of every image or map dataset
# The HDF5 1.10 file format: superblock, object headers and chunk indices carry checksums too, so an
# overwritten index cannot silently point a chunk at another image. Readable by HDF5 >= 1.10 (2016).
LIBVER = "v110"


class _WriteGuard(io.RawIOBase):
    """A read/write binary file whose first failed write or truncate is kept in ``error`` and
    whose later writes are dropped (reported as done), so HDF5 never sees an I/O error."""

    def __init__(self, path: Path):
        super().__init__()
        self._fh = open(path, "w+b", buffering=0)
        self.error: OSError | None = None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        return self._fh.readinto(buf)

    def write(self, buf) -> int:
        if self.error is None:
            try:
                return self._fh.write(buf)
            except OSError as exc:
                self.error = exc
        return memoryview(buf).nbytes

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._fh.seek(pos, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def truncate(self, size: int | None = None) -> int:
        if self.error is None:
            try:
                return self._fh.truncate(size)
            except OSError as exc:
                self.error = exc
        return self.tell() if size is None else size

    def flush(self) -> None:
        pass  # unbuffered; atomic_path fsyncs the finished file

    def close(self) -> None:
        if not self.closed:
            self._fh.close()
        super().close()


@contextlib.contextmanager
def create_h5(path: str | Path) -> Iterator[h5py.File]:
    """A new HDF5 file at ``path``, written atomically; a failed write (e.g. no space left) raises
    a one-line CxradError naming ``path`` after the file is closed, and the temporary is removed."""
    with atomic_path(path) as tmp:
        raw = _WriteGuard(tmp)
        try:
            with h5py.File(raw, "w", libver=LIBVER) as h5:
                yield h5
        finally:
            raw.close()
            if raw.error is not None:
                raise raw.error  # atomic_path turns it into one line and removes the temporary file


def members(group: h5py.Group) -> Iterator[tuple[str, h5py.Dataset | h5py.Group]]:
    """(name, object) of every member of ``group``. Unlike ``group.items()``, which gives None for an
    object it cannot open, a damaged member raises (and :func:`h5_errors` reports the file)."""
    for name in group:
        yield name, group[name]


def _reason(exc: BaseException) -> str:
    """The first line of an HDF5 error, without h5py's call details."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text[:160]


@contextlib.contextmanager
def h5_errors(path: str | Path, fix: str) -> Iterator[None]:
    """Turn the errors of reading a damaged or foreign HDF5 file into one line naming ``path`` and ``fix``."""
    try:
        yield
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise CxradError(f"{path}: damaged or not a cxrad HDF5 file ({_reason(exc)}); {fix}") from None


@contextlib.contextmanager
def open_h5(path: str | Path, fix: str) -> Iterator[h5py.File]:
    """``path`` opened read-only; errors of a damaged file, while opening it or reading inside the
    ``with`` block, become one line naming the file and ``fix`` (how to re-create it)."""
    with h5_errors(path, fix), h5py.File(path, "r") as h5:
        yield h5
