"""A run, opened once: its manifest, method and prepared input, handed to every later step.

Stages call :func:`open_run` once and pass the :class:`RunInfo` down instead of re-reading
``RUN/manifest.json`` wherever a detail is needed. Paths come from :class:`cxrad.layout.RunLayout`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from cxrad.artifacts import MANIFEST_NAME, check_input_unchanged, read_manifest, sha256_file, to_jsonable
from cxrad.errors import CxradError
from cxrad.layout import RunLayout

DEFAULT_METHOD = "ddad"   # runs written before the method was recorded were DDAD-ASR runs


@dataclass(frozen=True)
class RunInfo:
    """What later stages need to know about a run, read from RUN/manifest.json once.

    ``config``: the run's configuration as recorded (method-specific keys); ``preprocessing``: the
    prepared data's preprocessing parameters, so `predict` can read new files exactly as
    `prepare` read the training data without the prepared folder.
    """

    layout: RunLayout
    manifest: dict[str, Any]
    # manifests of the run's artifacts read so far (folder -> manifest or the error): each is read
    # from disk once per opened run, however many checks ask for it
    _artifacts: dict[Path, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def root(self) -> Path:
        return self.layout.root

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest.get("config", {})

    @property
    def method(self) -> str:
        return str(self.manifest.get("method") or self.config.get("method") or DEFAULT_METHOD)

    @property
    def preprocessing(self) -> dict[str, Any]:
        return self.config["preprocessing"]

    @property
    def prepared_record(self) -> dict[str, Any]:
        rec = (self.manifest.get("inputs") or {}).get("prepared")
        if not isinstance(rec, dict) or not rec.get("path"):
            raise CxradError(f"{self.root}: the run manifest names no prepared input; re-create the run.")
        return rec

    @property
    def prepared(self) -> Path:
        """Path of the prepared data the run was trained on (not checked)."""
        return Path(self.prepared_record["path"])

    @cached_property
    def prepared_checked(self) -> Path:
        """The prepared data, refused when it changed since the run was trained on it."""
        check_input_unchanged(self.prepared_record)
        return self.prepared


    def artifact(self, folder: Path, kind: str) -> dict[str, Any]:
        """The manifest of one of the run's artifact folders (checked as read_manifest does), read once."""
        key = Path(folder)
        if key not in self._artifacts:
            try:
                self._artifacts[key] = read_manifest(key, kind)
            except CxradError as exc:
                self._artifacts[key] = exc
        got = self._artifacts[key]
        if isinstance(got, CxradError):
            raise got
        return got

    def has_artifact(self, folder: Path, kind: str) -> bool:
        try:
            self.artifact(folder, kind)
            return True
        except CxradError:
            return False

    def input_record(self, folder: Path, kind: str) -> dict[str, Any]:
        """How a later artifact records one of the run's artifacts as its input (see artifacts.input_record)."""
        manifest = self.manifest if Path(folder) == self.root else self.artifact(folder, kind)
        return {"path": str(Path(folder).resolve()), "kind": manifest["kind"],
                "manifest_sha256": sha256_file(Path(folder) / MANIFEST_NAME)}


def open_run(path: str | Path) -> RunInfo:
    """Check that ``path`` is a run (``RUN/manifest.json`` of kind "run") and read it once."""
    layout = RunLayout(Path(path))
    if not layout.manifest.is_file():
        raise CxradError(f"{layout.root}: not a cxrad run (no run manifest); create it with `cxrad train-ensemble "
                         f"PREPARED --run {layout.root}` (DDAD-ASR) or another method's training command.")
    return RunInfo(layout, read_manifest(layout.root, "run"))


def _differences(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(keys) or "unknown"


def _what_differs(old: dict, new: dict) -> str:
    """Why an existing run's configuration is not this one, for the refusal."""
    differs = _differences(old, new)
    was, now = old.get("prepared") or {}, new.get("prepared") or {}
    if differs == "prepared" and was.get("path") == now.get("path"):
        return (f"already holds a run trained on {now.get('path')} as it was before it was prepared again (its "
                "manifest changed since)")
    return f"already holds a run with a different configuration (differs in: {differs})"


def check_run_folder(run: Path, config: dict, *, force: bool, resume: bool) -> bool:
    """Decide, before a training stage writes anything, whether RUN/manifest.json must be (re)written.

    Returns True when it must be written: a new run, or ``force`` over a different config. Refuses a
    file, a folder that is not a run, another configuration (without ``force``) and a resume that
    cannot be one. Used by every method's training stage (`train-ensemble`, `fit`).
    """
    if run.exists() and not run.is_dir():
        raise CxradError(f"{run}: exists and is a file; choose a folder for --run.")
    mpath = run / MANIFEST_NAME
    if not mpath.is_file():
        if resume:
            raise CxradError(f"{run}: nothing to resume (not a cxrad run: no run manifest); start it without --resume.")
        if run.is_dir() and not force:
            # Dot files are other processes' temporary manifests (SLURM tasks creating the run).
            foreign = sorted(p.name for p in run.iterdir() if not p.name.startswith("."))
            if foreign:
                raise CxradError(
                    f"{run}: not a cxrad run (no run manifest) and not empty (holds {foreign[0]}"
                    f"{' …' if len(foreign) > 1 else ''}); choose a new or empty folder for --run."
                )
        return True
    try:
        old = json.loads(mpath.read_text())
    except (OSError, json.JSONDecodeError):
        old = None
    if old is None or old.get("kind") != "run":
        kind = (old or {}).get("kind", "unreadable")
        raise CxradError(f"{run}: holds a {kind} artifact, not a cxrad run; choose another folder for --run.")
    read_manifest(run, "run")  # schema check
    if old["config"] == to_jsonable(config):
        return False
    if not force:
        raise CxradError(f"{run}: {_what_differs(old['config'], to_jsonable(config))}; use --force to retrain it, "
                         "or choose another --run.")
    if resume:
        raise CxradError(f"{run}: the run's configuration differs, so it cannot be resumed; drop --resume.")
    return True
