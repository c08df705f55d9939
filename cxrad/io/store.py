"""The prepared-data HDF5 file (``data.h5``): layout, writer, reader.

Layout (one group per set; ``normal`` = Dn, ``unlabeled`` = Du, ``test`` = Dt, ``val`` optional;
``anomaly`` optional: K images labelled abnormal for weakly supervised training, readable only with
``load_split(..., labelled_anomalies=True)``)::

    /                      attrs: schema_version, preprocessing (JSON), image_size
    /<set>/images          (N, H, W) float16 in [0, 1], or uint8 with attrs["scale"] = 1/255
    /<set>/labels          (N,) int8: 0 normal, 1 abnormal, -1 unknown
    /<set>/ids             (N,) str: path relative to SOURCE (never a patient attribute)
    /<set>/source_paths    (N,) str
    /<set>/provenance/{modality, photometric, transfer_syntax} (N,) str,
                      {bits_stored} (N,) int16, {original_shape} (N, 2) int32
    /rejects/{path, reason} (M,) str

Chunks hold one image, so reading a subset touches only its images. Image chunks carry fletcher32
checksums: an overwritten chunk raises on read (cxrad/io/h5files.py), and every read error of the
file becomes one line naming it and the fix (re-run `cxrad prepare --force`).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from cxrad.artifacts import read_manifest
from cxrad.errors import CxradError
from cxrad.io.h5files import CHECKSUM, create_h5, members, open_h5

DATA_FILE = "data.h5"
SET_NAMES = ("normal", "unlabeled", "test", "val")
# Labelled abnormal training images (`cxrad prepare --anomaly-shots K`). Not in SET_NAMES: no stage
# scores, evaluates or trains on it by iterating the sets; only a method that declares it reads
# labelled anomalies loads it (load_split's ``labelled_anomalies``; tests/test_import_graph.py
# checks which modules pass it).
ANOMALY_SET = "anomaly"
STORED_SETS = SET_NAMES + (ANOMALY_SET,)
PROVENANCE_STR = ("modality", "photometric", "transfer_syntax")
_STR = h5py.string_dtype(encoding="utf-8")
_REDO = "re-create it with `cxrad prepare SOURCE --out {folder} --force` (the options it was made with)."


@dataclass
class ImageSet:
    """One set of preprocessed images held in memory.

    ``images``: (N, H, W) float32 in [0, 1]. ``provenance``: name -> (N,) array, see module doc.
    """

    images: np.ndarray
    labels: np.ndarray
    ids: list[str]
    source_paths: list[str]
    provenance: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


def write_prepared_h5(
    path: str | Path,
    sets: dict[str, ImageSet],
    rejects: list[tuple[str, str]],
    preprocessing: dict[str, Any],
    store_dtype: str = "float16",
) -> None:
    """Write ``data.h5`` atomically (temp file + fsync + rename), images and labels checksummed."""
    if store_dtype not in ("float16", "uint8"):
        raise CxradError(f"store dtype {store_dtype!r}: use float16 or uint8.")
    size = next((s.images.shape[1] for s in sets.values() if len(s)), int(preprocessing.get("size", 0)))
    with create_h5(path) as h5:
        h5.attrs["schema_version"] = 1
        h5.attrs["preprocessing"] = json.dumps(preprocessing, sort_keys=True)
        h5.attrs["image_size"] = size
        for name, s in sets.items():
            g = h5.create_group(name)
            n = len(s)
            imgs = np.asarray(s.images, dtype=np.float32).reshape(n, size, size)
            if store_dtype == "uint8":
                data = np.clip(np.rint(imgs * 255.0), 0, 255).astype(np.uint8)
                scale = 1.0 / 255.0
            else:
                data = imgs.astype(np.float16)
                scale = 1.0
            ds = g.create_dataset("images", data=data, chunks=(1, size, size) if n else None,
                                  **(CHECKSUM if n else {}))
            ds.attrs["scale"] = scale
            g.create_dataset("labels", data=np.asarray(s.labels, dtype=np.int8).reshape(n),
                             **(CHECKSUM if n else {}))
            g.create_dataset("ids", data=np.array(s.ids, dtype=object), dtype=_STR)
            g.create_dataset("source_paths", data=np.array(s.source_paths, dtype=object), dtype=_STR)
            pg = g.create_group("provenance")
            for key, values in s.provenance.items():
                arr = np.asarray(values)
                if key in PROVENANCE_STR or arr.dtype.kind in ("U", "O"):
                    pg.create_dataset(key, data=np.array([str(v) for v in values], dtype=object), dtype=_STR)
                else:
                    pg.create_dataset(key, data=arr)
        rg = h5.create_group("rejects")
        rg.create_dataset("path", data=np.array([r[0] for r in rejects], dtype=object), dtype=_STR)
        rg.create_dataset("reason", data=np.array([r[1] for r in rejects], dtype=object), dtype=_STR)


def data_path(folder: str | Path) -> Path:
    return Path(folder) / DATA_FILE


@contextlib.contextmanager
def open_prepared(folder: str | Path) -> Iterator[h5py.File]:
    """A prepared artifact's ``data.h5``, read-only, after checking its manifest (use with ``with``).

    Reading a damaged file (a clobbered superblock, an image chunk whose checksum fails) inside the
    ``with`` block raises one line naming the file and the fix.
    """
    read_manifest(folder, "prepared")
    path = data_path(folder)
    with open_h5(path, _REDO.format(folder=Path(folder))) as h5:
        yield h5


def split_names(folder: str | Path) -> list[str]:
    with open_prepared(folder) as h5:
        return [n for n in SET_NAMES if n in h5]


def _guard(folder: str | Path, split: str, labelled_anomalies: bool) -> None:
    """Refuse the labelled-anomaly set to a caller that did not declare it reads labelled anomalies:
    every method but a weakly supervised one must train without abnormal labels."""
    if split == ANOMALY_SET and labelled_anomalies is not True:
        raise CxradError(f"{folder}: the '{ANOMALY_SET}' set holds labelled abnormal training images; only a "
                         "weakly supervised method may read it (load_split(..., labelled_anomalies=True)).")


def _missing(folder: str | Path, split: str, h5: h5py.File) -> CxradError:
    have = ", ".join(n for n in STORED_SETS if n in h5) or "none"
    return CxradError(f"{folder}: prepared data has no '{split}' set (it has: {have}).")


def load_split(folder: str | Path, split: str, *, labelled_anomalies: bool = False) -> ImageSet:
    """Read one set fully into memory; images as float32 (N, H, W) in [0, 1].

    ``labelled_anomalies``: must be True to read the ``anomaly`` set (:data:`ANOMALY_SET`); only a
    method that trains on labelled abnormal images passes it.
    """
    _guard(folder, split, labelled_anomalies)
    with open_prepared(folder) as h5:
        if split not in h5:
            raise _missing(folder, split, h5)
        images = _read_set(h5[split])
    _check_pixels(folder, split, images.images)
    return images


def load_labels(folder: str | Path, split: str, *, labelled_anomalies: bool = False) -> np.ndarray:
    """Only the (N,) int8 labels of one set (-1 unknown): no image is read (``labelled_anomalies``:
    as :func:`load_split`)."""
    _guard(folder, split, labelled_anomalies)
    with open_prepared(folder) as h5:
        if split not in h5:
            raise _missing(folder, split, h5)
        return h5[split]["labels"][...].astype(np.int8)


def _read_set(g: h5py.Group) -> ImageSet:
    ds = g["images"]
    images = ds[...].astype(np.float32) * np.float32(ds.attrs.get("scale", 1.0))
    prov = {k: (v.asstr()[...] if v.dtype.kind == "O" else v[...]) for k, v in members(g["provenance"])}
    return ImageSet(
        images=images,
        labels=g["labels"][...].astype(np.int8),
        ids=list(g["ids"].asstr()[...]),
        source_paths=list(g["source_paths"].asstr()[...]),
        provenance=prov,
    )


def _check_pixels(folder: str | Path, split: str, images: np.ndarray) -> None:
    """Refuse pixels outside [0, 1] (NaN included): an overwritten file written before checksums."""
    # min and max are NaN when any pixel is: no temporary array of the size of the images
    if images.size and not (images.min() >= 0.0 and images.max() <= 1.0):
        raise CxradError(f"{data_path(folder)}: damaged ('{split}' holds pixels outside [0, 1] or NaN); "
                         f"{_REDO.format(folder=Path(folder))}")


def preprocessing_of(folder: str | Path) -> dict[str, Any]:
    """The preprocessing parameters recorded in ``data.h5`` (what `predict` must repeat)."""
    with open_prepared(folder) as h5:
        return json.loads(h5.attrs["preprocessing"])


def read_rejects(folder: str | Path) -> list[tuple[str, str]]:
    with open_prepared(folder) as h5:
        g = h5["rejects"]
        return list(zip(g["path"].asstr()[...], g["reason"].asstr()[...]))


def summarize_prepared(folder: str | Path) -> dict[str, Any]:
    """Counts per set and label, image size and reject count (used by `cxrad inspect`)."""
    out: dict[str, Any] = {}
    with open_prepared(folder) as h5:
        out["image_size"] = int(h5.attrs["image_size"])
        sets = {}
        for name in STORED_SETS:
            if name not in h5:
                continue
            labels = h5[name]["labels"][...]
            sets[name] = {
                "count": int(labels.size),
                "label_0": int((labels == 0).sum()),
                "label_1": int((labels == 1).sum()),
                "unknown": int((labels == -1).sum()),
            }
        out["sets"] = sets
        out["rejects"] = int(h5["rejects"]["path"].shape[0])
    return out
