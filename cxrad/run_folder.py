"""The run folder: where `train-ensemble` puts things and how later stages find them.

Layout (written by :mod:`cxrad.stages.train_ensemble`)::

    RUN/manifest.json                    kind "run": config (backbone, members K, modules,
                                         image_size, seeds, the prepared input record and a copy
                                         of its preprocessing), written when the run is created
    RUN/ensemble/manifest.json           kind "ensemble": written once every member is trained
    RUN/ensemble/log.jsonl               one JSON line per (module, member, epoch)
    RUN/ensemble/<module>/member-<i>.pt    final weights (a plain member state dict)
    RUN/ensemble/<module>/member-<i>.json  seed, epochs, final loss, wall time of that member
    RUN/ensemble/<module>/member-<i>.ckpt  checkpoint while training (removed when finished)

Each (module, member) owns its own files, so SLURM array tasks never write the same file,
except the two manifests, which are written atomically with identical content.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cxrad.artifacts import MANIFEST_NAME, read_manifest
from cxrad.errors import CxradError

MODULES = ("ndm", "udm")
ENSEMBLE_DIR = "ensemble"


def ensemble_dir(run: str | Path) -> Path:
    return Path(run) / ENSEMBLE_DIR


def module_dir(run: str | Path, module: str) -> Path:
    return ensemble_dir(run) / module


def member_weights_path(run: str | Path, module: str, i: int) -> Path:
    return module_dir(run, module) / f"member-{i}.pt"


def member_info_path(run: str | Path, module: str, i: int) -> Path:
    return module_dir(run, module) / f"member-{i}.json"


def member_checkpoint_path(run: str | Path, module: str, i: int) -> Path:
    return module_dir(run, module) / f"member-{i}.ckpt"


def log_path(run: str | Path) -> Path:
    return ensemble_dir(run) / "log.jsonl"


def read_run(run: str | Path) -> dict[str, Any]:
    """Check that ``run`` is a cxrad run and return its manifest (a dict).

    ``manifest["config"]`` holds ``backbone`` ("ae" | "memae" | "aeu"), ``members`` (K),
    ``modules`` (e.g. ["ndm", "udm"]), ``image_size``, ``seeds`` ({module: [seed per member]}),
    the training hyper-parameters, ``prepared`` (the input record of the prepared data:
    path, kind, manifest_sha256) and ``preprocessing`` (a copy of the prepared data's
    preprocessing parameters, so `predict` needs only RUN).
    Raises CxradError when ``run`` is not a run. The run's ensemble may still be training; use
    :func:`read_ensemble` to require it finished.
    """
    run = Path(run)
    if not (run / MANIFEST_NAME).is_file():
        raise CxradError(
            f"{run}: not a cxrad run (no run manifest); create it with `cxrad train-ensemble PREPARED --run {run}`."
        )
    return read_manifest(run, "run")


def read_ensemble(run: str | Path) -> dict[str, Any]:
    """The ensemble manifest of a run whose requested members are all trained.

    Its ``config`` equals the run's config; ``members`` lists, per module, each member's
    seed, epochs, final loss and wall time.
    """
    run = Path(run)
    manifest = read_run(run)
    folder = ensemble_dir(run)
    if not (folder / MANIFEST_NAME).is_file():
        raise CxradError(
            f"{run}: the ensemble is not finished (no {ENSEMBLE_DIR}/{MANIFEST_NAME}); finish it with "
            f"`cxrad train-ensemble PREPARED --run {run} --resume`."
        )
    ens = read_manifest(folder, "ensemble")
    if ens["config"] != manifest["config"]:
        raise CxradError(
            f"{folder}: trained with another configuration than {run}/{MANIFEST_NAME}; "
            f"re-train with `cxrad train-ensemble PREPARED --run {run} --force`."
        )
    return ens


def backbone_of(run: str | Path) -> str:
    """The run's backbone name: "ae", "memae" or "aeu"."""
    return read_run(run)["config"]["backbone"]


def read_json(path: Path) -> dict[str, Any] | None:
    """A small JSON file, or None when missing or unreadable (a member not finished)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
