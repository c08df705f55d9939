"""The FPI recipe file of a run (``RUN/synth/fpi.h5``): writer and readers.

Layout: datasets ``source, donor, cy, cx, half, alpha, patched`` of shape (epochs, n) — row e is
epoch e, in training order; attrs size, n, seed, pool ("normal": sources), space ("maps" or
"image"), donor_pool ("unlabeled" or "normal"). ``preview/images`` (P, H, W) float16 in [0, 1] and
``preview/masks`` (P, H, W) uint8 materialise the first P patched samples of epoch 0, blended in
image space; ``preview/index`` (P,) their rows. Datasets carry fletcher32 checksums; a damaged file is
one line naming it and the fix (cxrad/io/h5files.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cxrad.errors import CxradError
from cxrad.io.h5files import CHECKSUM, create_h5, open_h5
from cxrad.layout import SYNTH_RECIPES as FPI_FILE
from cxrad.methods.ddad.fpi import RECIPE_FIELDS, Recipes


def write_recipes_h5(path: Path, epochs: list[Recipes], preview: np.ndarray, masks: np.ndarray,
                     index: np.ndarray, attrs: dict[str, Any]) -> None:
    """Write every epoch's recipes and the preview atomically."""
    with create_h5(path) as h5:
        h5.attrs.update(attrs)
        for f in RECIPE_FIELDS:
            h5.create_dataset(f, data=np.stack([getattr(r, f) for r in epochs]), compression="gzip", **CHECKSUM)
        has = len(index) > 0
        h5.create_dataset("preview/images", data=preview.astype(np.float16), **(CHECKSUM if has else {}))
        h5.create_dataset("preview/masks", data=masks.astype(np.uint8), **(CHECKSUM if has else {}))
        h5.create_dataset("preview/index", data=index, **(CHECKSUM if has else {}))


def _open(synth_dir: Path):
    return open_h5(Path(synth_dir) / FPI_FILE, f"re-create it with `cxrad synthesize RUN --force` ({synth_dir}).")


def synth_space(synth_dir: Path) -> tuple[str, str]:
    """(space, donor_pool) of a synth artifact; files written before map-space FPI are image/normal."""
    with _open(synth_dir) as h5:
        return str(h5.attrs.get("space", "image")), str(h5.attrs.get("donor_pool", "normal"))


def read_recipes(synth_dir: Path, epoch: int) -> Recipes:
    with _open(synth_dir) as h5:
        if epoch >= h5["source"].shape[0]:
            raise CxradError(
                f"{synth_dir}: holds recipes for {h5['source'].shape[0]} epochs, epoch {epoch + 1} asked; "
                "re-run `cxrad synthesize --epochs N --force` with N at least the refine epochs."
            )
        return Recipes(*(h5[f][epoch] for f in RECIPE_FIELDS))


def synth_epochs(synth_dir: Path) -> int:
    with _open(synth_dir) as h5:
        return int(h5["source"].shape[0])


def verify_recipes(synth_dir: Path) -> None:
    """Read every recipe once (checksums verified): a damaged file is refused before a stage that
    uses it deletes anything."""
    with _open(synth_dir) as h5:
        for f in RECIPE_FIELDS:
            h5[f][...]
