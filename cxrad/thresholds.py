"""Which images set the abnormal/normal decision threshold: held-out normals when the data have them.

The ensembles fit their training normals (Dn) more tightly than normals they never saw, so the
95th percentile of Dn scores sits inside the unseen normals' range: on ZhangLab-OCSSL-64 R_dual at
that threshold flags 74-85 % of the test normals (specificity 15-26 %, README). Normal images held
out of training (the ``val`` split: ``cxrad prepare --val-normals N``, or a val set the source
names) score like unseen normals, so their percentile is the threshold a user expects.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cxrad.errors import CxradError

if TYPE_CHECKING:
    import numpy as np

HELD_OUT = "val"
CHOICES = ("auto", HELD_OUT, "normal")   # EvaluateConfig.threshold_from
MIN_HELD_OUT_NORMALS = 20   # below this a 95th percentile is the maximum of a handful of scores


def held_out_normals(prepared: Path) -> int:
    """Number of label-0 images in the prepared data's ``val`` split (0 when there is none)."""
    from cxrad.io.store import open_prepared

    with open_prepared(prepared) as h5:
        if HELD_OUT not in h5:
            return 0
        return int((h5[HELD_OUT]["labels"][...] == 0).sum())


def threshold_split(prepared: Path, choice: str = "auto", evaluated: str | None = None) -> str:
    """The split whose normal (label 0) images set the thresholds: ``"val"`` or ``"normal"``.

    ``choice`` "auto": the held-out normals when there are at least :data:`MIN_HELD_OUT_NORMALS`
    and the split being evaluated is not the val split itself, else the training normals.
    """
    if choice not in CHOICES:
        raise CxradError(f"--threshold-from {choice}: use {', '.join(CHOICES[:-1])} or {CHOICES[-1]}.")
    if choice == "normal":
        return "normal"
    n = held_out_normals(prepared)
    if choice == HELD_OUT:
        if n == 0:
            raise CxradError(f"{prepared}: no normal images in a val split to take thresholds from; prepare "
                             "with --val-normals N or use --threshold-from auto.")
        return HELD_OUT
    return HELD_OUT if n >= MIN_HELD_OUT_NORMALS and evaluated != HELD_OUT else "normal"


def normal_rows(split: str, labels: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows of ``split`` that calibrate: every Dn image, the label-0 val images."""
    import numpy as np  # numpy and h5py are imported where used: the CLI reads this module at start-up

    labels = np.asarray(labels)
    return np.ones(len(labels), bool) if split == "normal" else labels == 0


def describe(split: str, count: int, percentile: float) -> str:
    """Human-readable threshold source for metrics.json and predictions."""
    what = "held-out normal images (val split)" if split == HELD_OUT else "normal training images"
    return f"{percentile:g}th percentile of the scores of the {count} {what}"
