"""The maps file of a scored split (``RUN/maps/<split>.h5``): layout, writer, reader.

Layout::

    /maps/<name>     (N, H, W) float16, one chunk per image
    /scores/<name>   (N,) float32: image score, from the full-precision map
    /ids (N,) str, /labels (N,) int8          attrs: split, method

Names are the method's score names (cxrad/scores.py), e.g. A_rec, A_intra, A_inter, R_dual.
Maps and scores carry fletcher32 checksums; reading a damaged file raises one line naming it and the
fix (cxrad/io/h5files.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from cxrad.io.h5files import CHECKSUM, create_h5, members, open_h5
from cxrad.scores import ScoredImages

_STR = h5py.string_dtype(encoding="utf-8")


@dataclass
class ScoredSplit:
    """A stored split: its scored images plus ids, labels and the file's attributes."""

    scored: ScoredImages
    ids: list[str]
    labels: np.ndarray
    attrs: dict[str, Any]


def write_maps_h5(path: Path, scored: ScoredImages, ids: list[str], labels: np.ndarray,
                  attrs: dict[str, Any]) -> None:
    """Write one split's maps and scores atomically."""
    n = len(ids)
    with create_h5(path) as h5:
        for k, v in attrs.items():
            h5.attrs[k] = v
        for name, arr in scored.maps.items():
            h5.create_dataset(f"maps/{name}", data=arr.astype(np.float16),
                              chunks=(1,) + arr.shape[1:] if len(arr) else None, **(CHECKSUM if len(arr) else {}))
        for name, arr in scored.scores.items():
            h5.create_dataset(f"scores/{name}", data=np.asarray(arr, np.float32), **(CHECKSUM if n else {}))
        h5.create_dataset("ids", data=np.array(ids, dtype=object), dtype=_STR)
        h5.create_dataset("labels", data=np.asarray(labels, np.int8), **(CHECKSUM if n else {}))


def _open(path: Path):
    return open_h5(path, f"re-create it with `cxrad score {Path(path).parent.parent} --force`.")


def read_maps_h5(path: Path, *, maps: bool = True) -> ScoredSplit:
    """Read a split's maps (as float32) and scores; ``maps=False``: the scores only (no map is read)."""
    with _open(path) as h5:
        scored = ScoredImages({k: v[...].astype(np.float32) for k, v in members(h5["maps"])} if maps else {},
                              {k: v[...] for k, v in members(h5["scores"])})
        return ScoredSplit(scored, list(h5["ids"].asstr()[...]), h5["labels"][...], dict(h5.attrs))


def read_labels(path: Path) -> np.ndarray:
    """Only the (N,) labels of a maps file."""
    with _open(path) as h5:
        return h5["labels"][...]


def score_means(path: Path) -> dict[str, Any]:
    """Count and mean image score per name (for `cxrad inspect`)."""
    with _open(path) as h5:
        return {"count": int(h5["labels"].shape[0]),
                **{f"mean {k}": float(np.mean(v[...])) for k, v in members(h5["scores"])}}
