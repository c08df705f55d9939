"""Shared fixtures: real sample images from sample_data/, prepared once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"
SHARED_DATA = REPO.parent / "shared" / "data"

torch.set_num_threads(2)


def _build_prepared(folder: Path, size: int) -> Path:
    """Prepare sample_data with the real stage (labels.csv names normal / unlabeled / test)."""
    from cxrad.config import PrepareConfig
    from cxrad.stages.prepare import prepare

    return prepare(SAMPLE, folder, PrepareConfig(size=size, workers=2), labels=SAMPLE / "labels.csv")


@pytest.fixture(scope="session")
def prepared_sample(tmp_path_factory) -> Path:
    """A prepared artifact of sample_data at 64 px: normal 30, unlabeled 25, test 65."""
    return _build_prepared(tmp_path_factory.mktemp("prepared") / "sample64", 64)


@pytest.fixture(scope="session")
def prepared_sample32(tmp_path_factory) -> Path:
    """The same at 32 px, for fast training tests."""
    return _build_prepared(tmp_path_factory.mktemp("prepared") / "sample32", 32)
