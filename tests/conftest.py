"""Shared fixtures: real sample images from sample_data/, prepared once per session."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrad.artifacts import write_manifest
from cxrad.io.store import ImageSet, write_prepared_h5

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"
SHARED_DATA = REPO.parent / "shared" / "data"

torch.set_num_threads(2)


def _build_prepared(folder: Path, size: int) -> Path:
    # TEMPORARY builder (decodes with PIL directly) until `cxrad.stages.prepare` lands; then this
    # fixture calls the real stage.
    from PIL import Image

    rows = list(csv.DictReader(open(SAMPLE / "labels.csv")))
    sets = {}
    for name in ("normal", "unlabeled", "test"):
        sel = [r for r in rows if r["split"] == name]
        imgs = []
        for r in sel:
            im = Image.open(SAMPLE / r["path"]).convert("L").resize((size, size), Image.BILINEAR)
            a = np.asarray(im, dtype=np.float32)
            imgs.append((a - a.min()) / max(a.max() - a.min(), 1e-6))
        labels = np.array([int(r["label"]) if name != "unlabeled" else int(r["label"]) for r in sel], np.int8)
        sets[name] = ImageSet(np.stack(imgs), labels, [r["path"] for r in sel], [r["path"] for r in sel], {})
    folder.mkdir(parents=True, exist_ok=True)
    write_prepared_h5(folder / "data.h5", sets, [], {"size": size})
    write_manifest(folder, "prepared", {"size": size}, outputs=["data.h5"])
    return folder


@pytest.fixture(scope="session")
def prepared_sample(tmp_path_factory) -> Path:
    """A prepared artifact of sample_data at 64 px: normal 30, unlabeled 25, test 65."""
    return _build_prepared(tmp_path_factory.mktemp("prepared") / "sample64", 64)


@pytest.fixture(scope="session")
def prepared_sample32(tmp_path_factory) -> Path:
    """The same at 32 px, for fast training tests."""
    return _build_prepared(tmp_path_factory.mktemp("prepared") / "sample32", 32)
