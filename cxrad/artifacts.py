"""Artifact folders: manifests, atomic writes, lineage checks (docs/artifacts.md).

Every stage writes a folder whose ``manifest.json`` is written *last*. A folder is a valid artifact
only when its manifest exists, has the expected kind and schema, and every output it lists is
present with the recorded size (and, on request, the recorded sha256). A process killed at any point
therefore leaves either the previous valid artifact or something no stage accepts.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import platform
import re
import socket
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from cxrad import __version__, locks
from cxrad.config import identity_digest, to_jsonable
from cxrad.errors import CxradError
from cxrad.layout import MANIFEST as MANIFEST_NAME
from cxrad.layout import PARTIAL_MARKER

SCHEMA_VERSION = 1

# kind -> the command that makes it; used to tell users which step is missing.
PRODUCER = {
    "prepared": "cxrad prepare",
    "run": "cxrad train-ensemble",   # DDAD-ASR's; a run of another method names its own command
    "ensemble": "cxrad train-ensemble",
    "maps": "cxrad score",
    "synth": "cxrad synthesize",
    "refine": "cxrad refine",
    "model": "cxrad fit",
    "eval": "cxrad evaluate",
    "predictions": "cxrad predict",
    "compare": "cxrad compare",
}


# ---------------------------------------------------------------------------------------------
# atomic writes
# ---------------------------------------------------------------------------------------------
def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# errno -> (what happened, what to do) for the OSErrors the environment causes, never a bug of cxrad
_ENVIRONMENT_ERRORS = {
    errno.ENOSPC: ("no space left on device writing {path}", "free space there or choose another output folder"),
    errno.EDQUOT: ("disk quota exceeded writing {path}", "free space there or choose another output folder"),
    errno.EROFS: ("read-only file system: cannot write {path}", "choose an output folder on a writable file system"),
    errno.EACCES: ("permission denied: {path}", "fix its permissions or choose another path"),
    errno.EPERM: ("operation not permitted: {path}", "fix its permissions or choose another path"),
    errno.ENOTDIR: ("{path}: {blocker} is a file, not a folder", "choose another path"),
    errno.ENAMETOOLONG: ("{path}: file name too long", "choose a shorter path"),
}


def _regular_file_on_path(path: Path) -> Path:
    """The first component of ``path`` that exists and is not a folder (ENOTDIR's cause)."""
    for part in reversed([path, *path.parents]):
        if part.exists() and not part.is_dir():
            return part
    return path.parent


def os_error(exc: OSError, path: str | os.PathLike | None = None) -> CxradError | None:
    """The one-line :class:`CxradError` for an OSError the environment causes (disk full, read-only
    file system, permissions, a file where a folder is expected), naming ``path`` (default: the
    error's file name); None for any other OSError. h5py's errors carry the errno in their text."""
    code = exc.errno
    if code is None and (found := re.search(r"errno = (\d+)", str(exc))):
        code = int(found.group(1))
    if code not in _ENVIRONMENT_ERRORS:
        return None
    where = Path(path if path is not None else (exc.filename or "?"))
    what, fix = _ENVIRONMENT_ERRORS[code]
    blocker = _regular_file_on_path(where) if code == errno.ENOTDIR else None
    return CxradError(f"{what.format(path=where, blocker=blocker)}; {fix}.")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it onto ``path``.

    The temporary file lives in the same folder so ``os.replace`` is atomic. On any exception the
    temporary file is removed and ``path`` is untouched; a full disk, a read-only file system and
    the like become one CxradError line naming ``path`` (:func:`os_error`).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        err = os_error(exc, path)
        if err is None:
            raise
        raise err from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # an earlier process with our pid (containers reuse them): we have not written yet
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # alive, owned by someone else
    return True


def remove_stale_temporaries(folder: str | os.PathLike, names: Iterable[str] | None = None) -> list[Path]:
    """Delete the temporary files (``.NAME.<pid>.tmp``, :func:`atomic_path`) that killed processes left
    in ``folder``: those whose process is not alive on this host; only NAMEs in ``names`` when given
    (a folder shared by processes on several hosts). Call it before writing into ``folder``.
    Returns the deleted paths."""
    folder = Path(folder)
    wanted = set(names) if names is not None else None
    removed = []
    with contextlib.suppress(OSError):
        for p in folder.iterdir():
            m = _TEMPORARY.match(p.name)
            if not m or (wanted is not None and m["name"] not in wanted) or _pid_alive(int(m["pid"])):
                continue
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n").encode())


def write_csv_atomic(path: str | os.PathLike, header: list[str], rows: Iterable[Iterable[Any]]) -> None:
    """A CSV file (header + rows) written atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    write_bytes_atomic(path, buf.getvalue().encode())


CONTENT_DIGEST = "content_sha256"   # key of a checksummed torch file: the digest of everything else in it


def content_digest(obj: Any) -> str:
    """sha256 over a (nested) dict/list of tensors and plain values, in their order: what
    :func:`save_torch_atomic` stores with ``checksum=True`` and :func:`load_torch` recomputes."""
    import torch

    h = hashlib.sha256()

    def walk(key: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{key}/{k!r}", v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(f"{key}/{i}", v)
        elif isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous().reshape(-1)
            h.update(f"{key}:{t.dtype}:{tuple(value.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(f"{key}={value!r}".encode())

    walk("", obj)
    return h.hexdigest()


def save_torch_atomic(obj: Any, path: str | os.PathLike, *, checksum: bool = False) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: a kill never leaves half a file.

    Serialised in memory first: torch reports a failed write (disk full) without its cause, a plain
    write gives the errno, hence one line naming the file (:func:`atomic_path`). ``checksum``: the
    dict ``obj`` is stored with its :func:`content_digest` (torch checks no checksum when it loads),
    so :func:`load_torch` refuses a file overwritten in place; for files no manifest describes,
    such as training checkpoints.
    """
    import torch

    if checksum:
        obj = {**obj, CONTENT_DIGEST: content_digest(obj)}
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes_atomic(path, buf.getbuffer())


def load_torch(path: str | os.PathLike, *, fix: str, map_location: Any = "cpu", sha256: str | None = None) -> Any:
    """``torch.load(weights_only=True)`` of a file cxrad wrote. A missing, truncated or overwritten
    file is one CxradError line naming it and ``fix`` (never torch's advice to load unsafely).

    Overwritten content is found by ``sha256`` (the file's digest recorded in a manifest) or by the
    content digest a checksummed file carries (:func:`save_torch_atomic`), which is removed.
    """
    import torch

    damaged = f"{path}: damaged (cannot be read: truncated or overwritten); {fix}"
    try:
        if sha256 is not None and sha256_file(path) != sha256:
            raise CxradError(f"{path}: damaged (its content differs from the digest in the manifest); {fix}")
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CxradError(f"{path}: missing; {fix}") from None
    except CxradError:
        raise
    except Exception:  # truncated zip, bad pickle, overwritten bytes: all mean the file is damaged
        raise CxradError(damaged) from None
    if isinstance(obj, dict) and CONTENT_DIGEST in obj:
        want = obj.pop(CONTENT_DIGEST)
        if content_digest(obj) != want:
            raise CxradError(f"{path}: damaged (its content differs from the digest it was saved with); {fix}")
    return obj


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# provenance
# ---------------------------------------------------------------------------------------------
def runtime_info(device: str | None = None) -> dict[str, Any]:
    """Host, software versions and scheduler ids, for the manifest."""
    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cxrad": __version__,
    }
    for mod in ("numpy", "torch", "h5py", "pydicom", "PIL"):
        with contextlib.suppress(Exception):
            info[mod if mod != "PIL" else "pillow"] = __import__(mod).__version__
    if device is not None:
        info["device"] = device
    slurm = {k: v for k, v in os.environ.items() if k in (
        "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_NAME", "SLURM_NODELIST")}
    if slurm:
        info["slurm"] = slurm
    return info


def input_record(folder: str | os.PathLike, manifest: dict | None = None) -> dict[str, Any]:
    """How a later stage records an input artifact: absolute path, kind and manifest digest."""
    folder = Path(folder).resolve()
    manifest = manifest if manifest is not None else read_manifest(folder)
    return {
        "path": str(folder),
        "kind": manifest["kind"],
        "manifest_sha256": sha256_file(folder / MANIFEST_NAME),
    }


# ---------------------------------------------------------------------------------------------
# manifests
# ---------------------------------------------------------------------------------------------
def write_manifest(
    folder: str | os.PathLike,
    kind: str,
    config: Any,
    *,
    inputs: dict[str, Any] | None = None,
    outputs: list[str] | None = None,
    timings: dict[str, float] | None = None,
    device: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``folder/manifest.json`` atomically, recording size and sha256 of each output file.

    Call it last, once every file in ``outputs`` (paths relative to ``folder``) is in place.
    """
    folder = Path(folder)
    files = {}
    for rel in outputs or []:
        p = folder / rel
        files[rel] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "cxrad_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": to_jsonable(config),
        "identity": identity_digest(config),
        "inputs": to_jsonable(inputs or {}),
        "outputs": files,
        "timings_s": to_jsonable(timings or {}),
        "runtime": runtime_info(device),
    }
    if extra:
        manifest.update(to_jsonable(extra))
    write_json_atomic(folder / MANIFEST_NAME, manifest)
    return manifest


def read_manifest(
    folder: str | os.PathLike, kind: str | None = None, *, verify: bool = False
) -> dict[str, Any]:
    """Load and check an artifact's manifest; raise :class:`CxradError` naming the fix.

    ``verify`` re-hashes every output; otherwise only presence and size are checked.
    """
    folder = Path(folder)
    want = f"a {kind} artifact" if kind else "a cxrad artifact"
    make = f" (made by `{PRODUCER[kind]}`)" if kind in PRODUCER else ""
    if not folder.exists():
        raise CxradError(f"{folder}: no such folder; expected {want}{make}.")
    if not folder.is_dir():
        raise CxradError(f"{folder}: is a file; expected {want} folder{make}.")
    mpath = folder / MANIFEST_NAME
    if not mpath.is_file():
        step = f"`{PRODUCER[kind]}`" if kind in PRODUCER else "the stage that writes it"
        raise CxradError(f"{folder}: not {want} or not finished (no {MANIFEST_NAME}); run {step} first.")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CxradError(f"{mpath}: unreadable manifest ({exc}); re-run the stage with --force.") from None
    if not isinstance(manifest, dict) or "kind" not in manifest:
        raise CxradError(f"{mpath}: not a cxrad manifest; point to a folder written by cxrad.")
    schema = manifest.get("schema_version")
    if schema != SCHEMA_VERSION:
        raise CxradError(
            f"{folder}: manifest schema {schema}, this cxrad {__version__} reads schema {SCHEMA_VERSION}; "
            "re-create it with this version (--force) or use the cxrad version that wrote it "
            f"({manifest.get('cxrad_version')})."
        )
    if kind is not None and manifest["kind"] != kind:
        raise CxradError(
            f"{folder}: is a {manifest['kind']} artifact, expected {want}{make}."
        )
    for rel, rec in manifest.get("outputs", {}).items():
        p = folder / rel
        if not p.is_file() or p.stat().st_size != rec["bytes"]:
            raise CxradError(f"{p}: missing or changed since the manifest was written; re-run with --force.")
        if verify and sha256_file(p) != rec["sha256"]:
            raise CxradError(f"{p}: content differs from the manifest digest; re-run with --force.")
    return manifest


def is_valid(folder: str | os.PathLike, kind: str | None = None) -> bool:
    try:
        read_manifest(folder, kind)
        return True
    except CxradError:
        return False


def check_input_unchanged(record: dict[str, Any]) -> dict[str, Any]:
    """Re-read an input recorded by :func:`input_record` and refuse if it changed since."""
    folder = Path(record["path"])
    manifest = read_manifest(folder, record["kind"])
    if sha256_file(folder / MANIFEST_NAME) != record["manifest_sha256"]:
        raise CxradError(
            f"{folder}: changed since it was used (manifest digest differs); "
            "re-run the later stages with --force or restore the original."
        )
    return manifest


@locks.locks_output
def begin_output(folder: str | os.PathLike, kind: str, config: Any, *, force: bool) -> bool:
    """Decide what to do with an output folder before a stage writes it, holding its lock
    (cxrad/locks.py: another process writing it is named and refused) from here until
    :func:`finish_output` when the stage writes it.

    Returns ``False`` when a valid artifact of ``kind`` with the same config already exists (the
    stage is a no-op), ``True`` when the stage should (re)write it. Refuses, with the fix, a folder
    holding a different config, another kind of artifact, or unrelated files, unless ``force``.
    With ``force`` the old manifest is removed first, so a crash mid-rewrite never leaves the old
    manifest describing new files.
    """
    folder = Path(folder)
    mpath = folder / MANIFEST_NAME
    if folder.exists() and not folder.is_dir():
        raise CxradError(f"{folder}: exists and is a file; choose another output path.")
    if mpath.is_file():
        if force:
            # marked as ours before the manifest goes: a killed rewrite is redone without --force
            (folder / PARTIAL_MARKER).touch()
            mpath.unlink()
            return True
        try:
            old = json.loads(mpath.read_text())
        except (OSError, json.JSONDecodeError):
            raise CxradError(f"{folder}: holds an unreadable manifest; use --force to overwrite.") from None
        if old.get("kind") != kind:
            raise CxradError(
                f"{folder}: holds a {old.get('kind')} artifact, not {kind}; choose another path or use --force."
            )
        if same_identity(old, config) and is_valid(folder, kind):
            return False
        raise CxradError(
            f"{folder}: already holds a {kind} artifact made with a different configuration; "
            "use --force to replace it or choose another output path."
        )
    if folder.is_dir() and any(folder.iterdir()) and not force:
        names = {p.name for p in folder.iterdir()}
        if not (names <= {PARTIAL_MARKER} or (folder / PARTIAL_MARKER).exists()):
            raise CxradError(
                f"{folder}: exists and holds files that are not a cxrad artifact; choose an empty or new folder, or "
                "use --force."
            )
    folder.mkdir(parents=True, exist_ok=True)
    # Marks a folder as ours while it is being written, so a killed run can be redone without --force.
    (folder / PARTIAL_MARKER).touch()
    return True


def same_identity(manifest: dict[str, Any], config: Any) -> bool:
    """Whether an existing manifest was made with the same identity as ``config`` (operational
    fields such as the device ignored: cxrad.config.identity). Manifests written before identities
    were recorded compare their whole config."""
    if "identity" in manifest:
        return manifest["identity"] == identity_digest(config)
    return manifest.get("config") == to_jsonable(config)


def finish_output(folder: str | os.PathLike) -> None:
    """The stage wrote ``folder`` (manifest last): drop the partial marker and the folder's lock."""
    with contextlib.suppress(FileNotFoundError):
        (Path(folder) / PARTIAL_MARKER).unlink()
    locks.release(folder)
