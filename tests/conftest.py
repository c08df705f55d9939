"""Shared fixtures: real sample images from sample_data/, prepared once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"
SHARED_DATA = REPO.parent / "shared" / "data"

torch.set_num_threads(2)


@pytest.fixture
def one_thread():
    """Run a test with one torch thread: small models train faster than with spinning OpenMP
    threads on a shared 2-core machine, and timings stay comparable."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


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


TINY_TOML = """
[data]
source = "{sample}"
labels = "{sample}/labels.csv"
name = "sample32"
[run]
name = "{run_name}"
refine_inputs = ["dual", "intra"]
[prepare]
size = 32
[ensemble]
members = 2
epochs = {epochs}
batch_size = 16
checkpoint_every = 1
[synthesize]
epochs = 2
[refine]
epochs = 1
"""


def tiny_config(folder: Path, run_name: str = "tiny", epochs: int = 2) -> Path:
    """A pipeline TOML on sample_data at 32 px with tiny epochs (seconds on 2 CPU cores)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{run_name}.toml"
    path.write_text(TINY_TOML.format(sample=SAMPLE.as_posix(), run_name=run_name, epochs=epochs))
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> dict:
    """A finished tiny pipeline run: {"config", "workdir", "run", "prepared", "result"}."""
    from cxrad.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("tiny")
    config = tiny_config(root)
    result = run_pipeline(config, root / "work")
    return {"config": config, "workdir": root / "work", "run": Path(result["run"]),
            "prepared": Path(result["prepared"]), "result": result}


@pytest.fixture
def cli(capsys):
    """``cli(*args)`` runs `cxrad --no-progress ARGS` in-process -> (exit code, stdout, stderr)."""
    from cxrad.cli import main

    def run(*args) -> tuple[int, str, str]:
        capsys.readouterr()  # drop what earlier steps of the test printed
        try:
            main(["--no-progress", *map(str, args)])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
