"""The FPI recipe file of a run (``RUN/synth/fpi.h5``): writer and readers.

Layout: datasets ``source, donor, cy, cx, half, alpha, patched`` of shape (epochs, n) — row e is
epoch e, in training order; attrs size, n, seed, pool ("normal": sources), space ("maps" or
"image"), donor_pool ("unlabeled" or "normal"). ``preview/images`` (P, H, W) float16 in [0, 1] and
``preview/masks`` (P, H, W) uint8 materialise the first P patched samples of epoch 0, blended in
image space; ``preview/index`` (P,) their rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from cxrad.artifacts import atomic_path
from cxrad.errors import CxradError
from cxrad.layout import SYNTH_RECIPES as FPI_FILE
from cxrad.methods.ddad.fpi import RECIPE_FIELDS, Recipes


def write_recipes_h5(path: Path, epochs: list[Recipes], preview: np.ndarray, masks: np.ndarray,
                     index: np.ndarray, attrs: dict[str, Any]) -> None:
    """Write every epoch's recipes and the preview atomically."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as h5:
            h5.attrs.update(attrs)
            for f in RECIPE_FIELDS:
                h5.create_dataset(f, data=np.stack([getattr(r, f) for r in epochs]), compression="gzip")
            h5.create_dataset("preview/images", data=preview.astype(np.float16))
            h5.create_dataset("preview/masks", data=masks.astype(np.uint8))
            h5.create_dataset("preview/index", data=index)


def synth_space(synth_dir: Path) -> tuple[str, str]:
    """(space, donor_pool) of a synth artifact; files written before map-space FPI are image/normal."""
    with h5py.File(Path(synth_dir) / FPI_FILE, "r") as h5:
        return str(h5.attrs.get("space", "image")), str(h5.attrs.get("donor_pool", "normal"))


def read_recipes(synth_dir: Path, epoch: int) -> Recipes:
    with h5py.File(Path(synth_dir) / FPI_FILE, "r") as h5:
        if epoch >= h5["source"].shape[0]:
            raise CxradError(
                f"{synth_dir}: holds recipes for {h5['source'].shape[0]} epochs, epoch {epoch + 1} asked; "
                "re-run `cxrad synthesize --epochs N --force` with N at least the refine epochs."
            )
        return Recipes(*(h5[f][epoch] for f in RECIPE_FIELDS))


def synth_epochs(synth_dir: Path) -> int:
    with h5py.File(Path(synth_dir) / FPI_FILE, "r") as h5:
        return int(h5["source"].shape[0])
