"""Artifact folders: manifests, atomic writes, lineage checks (docs/artifacts.md).

Every stage writes a folder whose ``manifest.json`` is written *last*. A folder is a valid artifact
only when its manifest exists, has the expected kind and schema, and every output it lists is
present with the recorded size (and, on request, the recorded sha256). A process killed at any point
therefore leaves either the previous valid artifact or something no stage accepts.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import platform
import socket
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from cxrad import __version__
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
    "eval": "cxrad evaluate",
    "predictions": "cxrad predict",
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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it onto ``path``.

    The temporary file lives in the same folder so ``os.replace`` is atomic. On any exception the
    temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


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


def save_torch_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: a kill never leaves half a file."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


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


def begin_output(folder: str | os.PathLike, kind: str, config: Any, *, force: bool) -> bool:
    """Decide what to do with an output folder before a stage writes it.

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
    with contextlib.suppress(FileNotFoundError):
        (Path(folder) / PARTIAL_MARKER).unlink()
