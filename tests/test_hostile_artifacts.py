"""Damaged artifacts and a hostile file system (issue 19): every case ends in one line naming the file
and the fix, a non-zero exit code, no traceback, and nothing that a later stage would accept.

Damaged files: data.h5 overwritten mid-file or with a clobbered superblock, a truncated member
checkpoint (plain, --resume and --force), refine's checkpoint, asr.pt, member-<i>.pt, maps and
fpi.h5. File system: disk full (a small tmpfs), read-only (a tmpfs remounted ro), an output path
under a regular file. The tmpfs cases need root and are skipped where mounting is not permitted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from cxrad.artifacts import is_valid, save_torch_atomic
from cxrad.io.store import load_split
from cxrad.layout import RunLayout

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
PREPARE = ["--labels", SAMPLE / "labels.csv", "--size", "32", "--workers", "2"]  # = the prepared_sample32 fixture
TRAIN = ["--module", "ndm", "--members", "2", "--epochs", "1", "--batch-size", "16", "--device", "cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CXRAD_NO_PROGRESS": "1"}


def _error_line(code: int, out: str, err: str, *names: str) -> str:
    """The one error line of a refused command; it names every string of ``names``."""
    assert code not in (0, None) and code > 0, (code, out, err)   # a negative code is a signal (crash)
    text = out + err
    assert "Traceback" not in text and "HDF5-DIAG" not in text, text
    assert "weights_only" not in text, text                    # never torch's advice to load unsafely
    errors = [line for line in err.splitlines() if line.startswith("cxrad: error:")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    for name in names:
        assert str(name) in errors[0], (name, errors[0])
    return errors[0]


def _cxrad(*args) -> tuple[int, str, str]:
    """`cxrad ARGS` in a subprocess: a crash (segfault) shows as a negative code, not a dead test run."""
    r = subprocess.run([sys.executable, "-m", "cxrad.cli", *map(str, args)], env=ENV, capture_output=True,
                       text=True, timeout=300)
    return r.returncode, r.stdout, r.stderr


def _overwrite(path: Path, offset: int, n: int, seed: int = 0) -> None:
    """Overwrite n bytes at offset with random bytes; the file keeps its size (the manifest check passes)."""
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(np.random.default_rng(seed).integers(0, 256, min(n, size - offset), dtype=np.uint8).tobytes())
    assert path.stat().st_size == size


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.tmp")]


@pytest.fixture
def prepared_copy(prepared_sample32, tmp_path) -> Path:
    return Path(shutil.copytree(prepared_sample32, tmp_path / "prepared"))


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """A copy of the finished tiny run (its prepared input stays the shared one, unchanged)."""
    return Path(shutil.copytree(tiny_run["run"], tmp_path / "run"))


# ---------------------------------------------------------------------------------------------
# item 3: damaged HDF5 files
# ---------------------------------------------------------------------------------------------
def test_data_h5_overwritten_mid_file_is_refused_before_training(prepared_copy, tmp_path, cli):
    data = prepared_copy / "data.h5"
    _overwrite(data, data.stat().st_size // 2 - 32768, 65536)
    run = tmp_path / "run"
    line = _error_line(*cli("train-ensemble", prepared_copy, "--run", run, *TRAIN), data)
    assert "--force" in line and "cxrad prepare" in line
    assert not (run / "manifest.json").exists()     # nothing written: no run a later stage would accept


def test_data_h5_with_a_clobbered_superblock(prepared_copy, cli):
    data = prepared_copy / "data.h5"
    _overwrite(data, 0, 512)
    _error_line(*cli("inspect", prepared_copy), data)
    _error_line(*cli("train-ensemble", prepared_copy, "--run", prepared_copy.parent / "run", *TRAIN), data)


def test_data_h5_is_checksummed_and_files_without_checksums_still_read(prepared_copy, tmp_path):
    with h5py.File(prepared_copy / "data.h5", "r") as h5:
        assert h5["normal/images"].fletcher32 and h5["normal/labels"].fletcher32
        assert h5["normal/images"].chunks == (1, 32, 32)
    want = load_split(prepared_copy, "normal")
    # the same file as an older cxrad wrote it: no filters, default file format
    old = tmp_path / "old.h5"
    with h5py.File(prepared_copy / "data.h5", "r") as src, h5py.File(old, "w") as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value

        def copy(name, obj):
            if isinstance(obj, h5py.Dataset):
                ds = dst.create_dataset(name, data=obj[...], dtype=obj.dtype,
                                        chunks=obj.chunks if name.endswith("images") else None)
                ds.attrs.update(obj.attrs)
        src.visititems(copy)
    shutil.copy(old, prepared_copy / "data.h5")   # same size or not: the manifest check is not the point here
    manifest = json.loads((prepared_copy / "manifest.json").read_text())
    manifest["outputs"]["data.h5"]["bytes"] = (prepared_copy / "data.h5").stat().st_size
    (prepared_copy / "manifest.json").write_text(json.dumps(manifest))
    got = load_split(prepared_copy, "normal")
    assert np.array_equal(got.images, want.images) and got.ids == want.ids


def test_unchecksummed_data_h5_with_nan_pixels_is_refused(prepared_copy, cli):
    """A file written before checksums, overwritten in place: its pixels are out of range or NaN."""
    data = prepared_copy / "data.h5"
    with h5py.File(data, "r+") as h5:   # stands for the damage: NaN in an image, size unchanged
        h5["normal/images"][3, 5] = np.nan
    manifest = json.loads((prepared_copy / "manifest.json").read_text())
    manifest["outputs"]["data.h5"]["bytes"] = data.stat().st_size
    (prepared_copy / "manifest.json").write_text(json.dumps(manifest))
    line = _error_line(*cli("train-ensemble", prepared_copy, "--run", prepared_copy.parent / "run", *TRAIN), data)
    assert "NaN" in line


def test_damaged_maps_file(tiny_run, run_copy, cli):
    # the copy's maps stay current: their manifest names the copy's run (the digests are unchanged)
    mpath = RunLayout(run_copy).maps / "manifest.json"
    mpath.write_text(mpath.read_text().replace(str(tiny_run["run"].resolve()), str(run_copy.resolve())))
    maps = RunLayout(run_copy).maps_file("test")
    _overwrite(maps, maps.stat().st_size // 3, maps.stat().st_size // 3)
    line = _error_line(*cli("evaluate", run_copy), maps)
    assert "cxrad score" in line and "--force" in line
    assert not is_valid(RunLayout(run_copy).eval, "eval")


def test_damaged_fpi_file(run_copy, cli):
    fpi = RunLayout(run_copy).synth / "fpi.h5"
    with h5py.File(fpi, "r") as h5:   # the recipes refine reads (the preview, most of the file, it does not)
        chunk = h5["source"].id.get_chunk_info(0)
    _overwrite(fpi, chunk.byte_offset + chunk.size // 2, 8)
    line = _error_line(*cli("refine", run_copy, "--inputs", "intra", "--epochs", "1", "--force"), fpi)
    assert "cxrad synthesize" in line
    assert is_valid(RunLayout(run_copy).refine("intra"), "refine")   # refused before --force deleted anything


# ---------------------------------------------------------------------------------------------
# item 5: damaged checkpoints and weights
# ---------------------------------------------------------------------------------------------
def test_damaged_member_checkpoint_plain_resume_and_force(prepared_sample32, tmp_path, cli):
    run = tmp_path / "run"
    assert cli("train-ensemble", prepared_sample32, "--run", run, *TRAIN)[0] == 0
    layout = RunLayout(run)
    weights, ckpt = layout.member_weights("ndm", 0), layout.member_checkpoint("ndm", 0)
    # member 0 interrupted after epoch 1: its checkpoint as training writes it (with its content digest)
    digest = json.loads(layout.manifest.read_text())["identity"]
    state = {"epoch": 1, "model": torch.load(weights, weights_only=True), "config_sha256": digest}
    save_torch_atomic(state, ckpt, checksum=True)
    weights.unlink()
    layout.member_info("ndm", 0).unlink()
    (layout.ensemble / "manifest.json").unlink()
    # overwritten in place: torch would load it (it checks no checksum); the content digest differs
    _overwrite(ckpt, ckpt.stat().st_size // 2, 8)   # inside a tensor's data
    line = _error_line(*cli("train-ensemble", prepared_sample32, "--run", run, *TRAIN, "--resume"), ckpt)
    assert "differs" in line and "--force" in line
    # cut short: not even a zip file
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    for extra in ([], ["--resume"]):
        line = _error_line(*cli("train-ensemble", prepared_sample32, "--run", run, *TRAIN, *extra), ckpt)
        assert "--force" in line and "delete it" in line
        assert not is_valid(layout.ensemble, "ensemble")
    code, out, err = cli("train-ensemble", prepared_sample32, "--run", run, *TRAIN, "--force")
    assert code == 0, err
    assert is_valid(layout.ensemble, "ensemble") and not ckpt.exists()


def test_damaged_refine_checkpoint(run_copy, cli):
    folder = RunLayout(run_copy).refine("intra")
    ckpt = folder / "checkpoint.ckpt"
    # an interrupted refine (no manifest, marked unfinished) whose checkpoint is damaged
    (folder / "manifest.json").unlink()
    (folder / ".cxrad-partial").touch()
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    args = ("refine", run_copy, "--inputs", "intra", "--epochs", "1")
    line = _error_line(*cli(*args, "--resume"), ckpt)
    assert "without --resume" in line
    code, out, err = cli(*args)   # the documented recovery: a plain run starts over
    assert code == 0, err
    assert is_valid(folder, "refine")


@pytest.mark.parametrize("damaged", ["asr", "member"])
def test_damaged_weights_stop_the_scorer(run_copy, cli, damaged):
    layout = RunLayout(run_copy)
    path = layout.refine("dual") / "asr.pt" if damaged == "asr" else layout.member_weights("ndm", 0)
    maps_before = (layout.maps / "manifest.json").read_bytes()
    _overwrite(path, path.stat().st_size // 4, path.stat().st_size // 2)
    line = _error_line(*cli("score", run_copy, "--force"), path)
    assert ("cxrad refine" if damaged == "asr" else "cxrad train-ensemble") in line and "--force" in line
    # the models are loaded before anything is deleted: the maps made from the intact models stay
    assert (layout.maps / "manifest.json").read_bytes() == maps_before and is_valid(layout.maps, "maps")



def test_predict_force_with_damaged_weights_keeps_the_old_predictions(run_copy, cli, tmp_path):
    """`predict --force` loads the models before it replaces anything (it used to delete the old
    predictions manifest first, so damaged weights cost the previous, valid predictions)."""
    from conftest import SAMPLE

    out = tmp_path / "pred"
    images = sorted((SAMPLE / "kermany" / "test").rglob("*.jpeg"))[:3]
    code, _, err = cli("predict", run_copy, *images, "--out", out, "--no-overlays")
    assert code == 0, err
    before = (out / "manifest.json").read_bytes()
    path = RunLayout(run_copy).refine("dual") / "asr.pt"
    _overwrite(path, path.stat().st_size // 4, path.stat().st_size // 2)
    _error_line(*cli("predict", run_copy, *images, "--out", out, "--no-overlays", "--force"), path)
    assert (out / "manifest.json").read_bytes() == before and is_valid(out, "predictions")

# ---------------------------------------------------------------------------------------------
# item 6: disk full, read-only file system, an output path under a regular file
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) -> a fresh tmpfs of that size (unmounted afterwards); skipped without permission."""
    mounted = []

    def mount(size: str, read_only: bool = False) -> Path:
        where = tmp_path / f"tmpfs{len(mounted)}"
        where.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
        mounted.append(where)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True, capture_output=True)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_prepare_on_a_full_disk(tmpfs):
    disk = tmpfs("128k")
    out = disk / "prepared"
    # in a subprocess: before the fix HDF5's failed close crashed the interpreter (SIGSEGV)
    line = _error_line(*_cxrad("prepare", SAMPLE, "--out", out, *PREPARE), out / "data.h5")
    assert "no space left on device" in line
    assert _temporaries(disk) == [] and not is_valid(out, "prepared")


def test_train_ensemble_on_a_full_disk(prepared_sample32, tmpfs, cli):
    disk = tmpfs("1m")   # room for the run manifest and the log, not for a member's weights
    run = disk / "run"
    line = _error_line(*cli("train-ensemble", prepared_sample32, "--run", run, *TRAIN), run / "ensemble")
    assert "no space left on device" in line
    assert _temporaries(disk) == [] and not is_valid(run / "ensemble", "ensemble")


def test_read_only_file_system(prepared_sample32, tmpfs, cli):
    disk = tmpfs("1m", read_only=True)
    line = _error_line(*cli("prepare", SAMPLE, "--out", disk / "prepared", *PREPARE), disk / "prepared")
    assert "read-only" in line.lower()
    line = _error_line(*cli("train-ensemble", prepared_sample32, "--run", disk / "run", *TRAIN), disk / "run")
    assert "read-only" in line.lower()


def test_output_under_a_regular_file(prepared_sample32, tmp_path, cli):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for args in (("prepare", SAMPLE, "--out", blocker / "sub" / "prepared", *PREPARE),
                 ("train-ensemble", prepared_sample32, "--run", blocker / "run", *TRAIN)):
        _error_line(*cli(*args), blocker)   # the wording is the lock's or os_error's: both name the file
    assert blocker.read_text() == "not a folder"
