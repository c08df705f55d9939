"""`cxrad prepare` end to end on real files: sets, bad inputs, privacy, tar safety, SIGKILL."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import h5py
import numpy as np
import pydicom
import pytest

from cxrad.cli import main
from cxrad.io.store import load_split, read_rejects, summarize_prepared

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"
SHARED = REPO.parent / "shared"
KERMANY_TAR = SHARED / "data" / "kermany-pneumonia-224" / "kermany_pneumonia_224.tar"
ZHANGLAB_CSV = SHARED / "benchmarks" / "zhanglab-ocssl.csv"
CT = SHARED / "data" / "dicom" / "pydicom_CT_small.dcm"
JPEG_DCM = SAMPLE / "dicom" / "txv_siim_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819_chest_CR.dcm"
NORMALS = sorted((SAMPLE / "kermany" / "train" / "NORMAL").glob("*.jpeg"))
ABNORMALS = sorted((SAMPLE / "kermany" / "train" / "PNEUMONIA").glob("*.jpeg"))
needs_shared = pytest.mark.skipif(not KERMANY_TAR.exists(), reason="../shared/data not available")


def cli(*args: str, capsys) -> tuple[int, str, str]:
    """Run `cxrad --no-progress ARGS` in-process; return (exit code, stdout, stderr)."""
    try:
        main(["--no-progress", *map(str, args)])
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def _error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("cxrad: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def bad_tree(tmp_path) -> Path:
    """Folder layout with good images plus one of every per-file problem, made from real files."""
    src = tmp_path / "src"
    dirs = {k: src / k for k in ("train/NORMAL", "train/PNEUMONIA", "test/NORMAL", "test/PNEUMONIA")}
    for d in dirs.values():
        d.mkdir(parents=True)
    for p in NORMALS[:6]:
        shutil.copy(p, dirs["train/NORMAL"])
    for p in ABNORMALS[:4]:
        shutil.copy(p, dirs["train/PNEUMONIA"])
    shutil.copy(NORMALS[6], dirs["test/NORMAL"])
    shutil.copy(ABNORMALS[4], dirs["test/PNEUMONIA"])
    data = NORMALS[7].read_bytes()
    (dirs["train/NORMAL"] / "truncated.jpeg").write_bytes(data[: len(data) // 2])
    (dirs["train/PNEUMONIA"] / "notes.png").write_text("this is a text file, not a PNG\n")
    (dirs["test/PNEUMONIA"] / "zero.dcm").write_bytes(b"")
    if CT.exists():
        shutil.copy(CT, dirs["test/NORMAL"] / "ct.dcm")
    return src


# --------------------------------------------------------------------------------------------
def test_sample_fixture_sets(prepared_sample):
    s = summarize_prepared(prepared_sample)
    assert s["image_size"] == 64 and s["rejects"] == 0
    assert {k: v["count"] for k, v in s["sets"].items()} == {"normal": 30, "unlabeled": 25, "test": 65}
    normal = load_split(prepared_sample, "normal")
    assert normal.images.shape == (30, 64, 64) and 0 <= normal.images.min() and normal.images.max() <= 1
    assert set(normal.provenance) >= {"modality", "photometric", "transfer_syntax", "bits_stored", "original_shape"}


def test_load_labels_reads_only_labels(prepared_sample):
    from cxrad.errors import CxradError
    from cxrad.io.store import load_labels

    labels = load_labels(prepared_sample, "test")
    assert labels.dtype == np.int8 and labels.tolist() == load_split(prepared_sample, "test").labels.tolist()
    assert sorted(np.unique(labels).tolist()) == [0, 1] and int((labels == 0).sum()) == 20   # sample: 20 normal
    with pytest.raises(CxradError, match="no 'val' set"):
        load_labels(prepared_sample, "val")


def test_per_file_problems_are_rejected_with_reasons(bad_tree, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = cli("prepare", bad_tree, "--out", out, "--workers", "2", "--normal-count", "3",
                       "--unlabeled-count", "4", "--anomaly-rate", "0.5", capsys=capsys)
    assert code == 0, err
    reasons = dict(read_rejects(out))
    assert "truncated" in reasons["train/NORMAL/truncated.jpeg"]
    assert "not an image" in reasons["train/PNEUMONIA/notes.png"]
    assert "empty file (0 bytes)" in reasons["test/PNEUMONIA/zero.dcm"]
    if CT.exists():
        assert "wrong modality CT" in reasons["test/NORMAL/ct.dcm"]
    for path in reasons:  # one console line per rejected file
        assert f"rejected {path}: " in err
    s = summarize_prepared(out)["sets"]
    assert (s["normal"]["count"], s["unlabeled"]["label_0"], s["unlabeled"]["label_1"]) == (3, 2, 2)
    assert s["test"]["count"] == 2
    # the same request again is a no-op; a different one is refused without --force
    code, _, err = cli("prepare", bad_tree, "--out", out, "--normal-count", "3", "--unlabeled-count", "4",
                       "--anomaly-rate", "0.5", capsys=capsys)
    assert code == 0 and "nothing to do" in err
    code, _, err = cli("prepare", bad_tree, "--out", out, "--normal-count", "2", "--unlabeled-count", "4",
                       "--anomaly-rate", "0.5", capsys=capsys)
    assert code != 0 and "different configuration" in _error_line(err)


@pytest.mark.skipif(not CT.exists(), reason="../shared/data not available")
def test_allow_modality_accepts_ct(tmp_path, capsys):
    (tmp_path / "s").mkdir()
    shutil.copy(CT, tmp_path / "s" / "ct.dcm")
    shutil.copy(JPEG_DCM, tmp_path / "s" / "cr.dcm")
    csv = tmp_path / "l.csv"
    csv.write_text("path,label,split\nct.dcm,0,test\ncr.dcm,0,normal\n")
    code, _, err = cli("prepare", tmp_path / "s", "--labels", csv, "--out", tmp_path / "o", "--workers", "1",
                       "--allow-modality", "CT", capsys=capsys)
    assert code == 0, err
    assert load_split(tmp_path / "o", "test").provenance["modality"].tolist() == ["CT"]


def test_whole_input_problems_are_one_line_errors(bad_tree, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    bad_label = tmp_path / "seven.csv"
    bad_label.write_text("path,label\ntrain/NORMAL/" + NORMALS[0].name + ",7\n")
    no_col = tmp_path / "nocol.csv"
    no_col.write_text("path,split\ntrain/NORMAL/" + NORMALS[0].name + ",test\n")
    dup = tmp_path / "dup.csv"
    dup.write_text(f"path,label\ntrain/NORMAL/{NORMALS[0].name},0\ntrain/NORMAL/{NORMALS[0].name},0\n")
    cases = [
        ((tmp_path / "missing",), "no such file or folder"),
        ((tmp_path / "empty",), "holds no files"),
        ((bad_tree, "--labels", no_col), "missing column(s) label"),
        ((bad_tree, "--labels", bad_label), "label '7'"),
        ((bad_tree, "--labels", dup), "duplicate path"),
        ((bad_tree, "--normal-count", "5", "--unlabeled-count", "4", "--anomaly-rate", "0.5"), "largest feasible"),
    ]
    for i, (args, match) in enumerate(cases):
        out = tmp_path / f"out{i}"
        code, _, err = cli("prepare", *args, "--out", out, "--workers", "1", capsys=capsys)
        assert code == 2 and match in _error_line(err), (args, err)
        assert not (out / "manifest.json").exists()


def test_patient_name_leaves_no_trace(tmp_path, capsys):
    name, pid = "Zyxquorth^Belvedaine", "PID-7731904"
    src = tmp_path / "src"
    src.mkdir()
    for fname, modality in (("a.dcm", "CR"), ("b.dcm", "CT")):  # b is rejected: its reason must be clean too
        ds = pydicom.dcmread(JPEG_DCM)
        ds.PatientName, ds.PatientID, ds.InstitutionName, ds.Modality = name, pid, "Hospital Qwxv", modality
        ds.save_as(src / fname)
    for p in NORMALS[:2]:
        shutil.copy(p, src)
    csv = tmp_path / "l.csv"
    csv.write_text(f"path,label,split\na.dcm,0,normal\n{NORMALS[0].name},0,normal\nb.dcm,,test\n"
                   f"{NORMALS[1].name},0,test\n")
    out = tmp_path / "out"
    code, stdout, err = cli("prepare", src, "--labels", csv, "--out", out, "--workers", "2", capsys=capsys)
    assert code == 0, err
    assert "a.dcm" in load_split(out, "normal").ids
    secrets = [s.encode() for s in ("Zyxquorth", "Belvedaine", pid, "Qwxv")]
    for f in out.rglob("*"):
        if f.is_file():
            blob = f.read_bytes()
            assert not any(s in blob for s in secrets), f
    assert not any(s.decode() in stdout + err for s in secrets)


def test_tar_member_outside_root_writes_nothing_outside(tmp_path, capsys):
    tar = tmp_path / "work" / "s.tar"
    tar.parent.mkdir()
    with tarfile.open(tar, "w") as tf:
        for i, p in enumerate(NORMALS[:4]):
            tf.add(p, f"data/train/NORMAL/{i}.jpeg")
        for i, p in enumerate(ABNORMALS[:2]):
            tf.add(p, f"data/train/PNEUMONIA/{i}.jpeg")
        tf.add(NORMALS[5], "data/test/NORMAL/t.jpeg")
        for name in ("../evil.jpeg", "../../evil2.jpeg", "/tmp/evil3.jpeg"):
            info = tarfile.TarInfo(name)
            info.size = len(NORMALS[6].read_bytes())
            tf.addfile(info, io.BytesIO(NORMALS[6].read_bytes()))
    before = {p for p in tmp_path.rglob("*")}
    out = tmp_path / "work" / "out"
    code, _, err = cli("prepare", tar, "--out", out, "--normal-count", "2", "--unlabeled-count", "2",
                       "--anomaly-rate", "0.5", "--workers", "1", capsys=capsys)
    assert code == 0, err
    after = {p for p in tmp_path.rglob("*")}
    from cxrad.locks import lock_file

    # nothing outside the output folder but cxrad's own lock file beside it
    assert {p for p in after - before if p != out and out not in p.parents} - {lock_file(out)} == set()
    assert not Path("/tmp/evil3.jpeg").exists()
    assert {r[0] for r in read_rejects(out)} == {"../evil.jpeg", "../../evil2.jpeg", "/tmp/evil3.jpeg"}


def test_folder_layout_same_seed_same_ids(tmp_path, capsys):
    args = ("--normal-count", "20", "--unlabeled-count", "20", "--anomaly-rate", "0.5", "--workers", "2")
    outs = []
    for i, seed in enumerate(("0", "0", "1")):
        outs.append(tmp_path / f"o{i}")
        code, _, err = cli("prepare", SAMPLE / "kermany", "--out", outs[-1], *args, "--seed", seed, capsys=capsys)
        assert code == 0, err
    ids = [load_split(o, "unlabeled").ids + load_split(o, "normal").ids for o in outs]
    assert ids[0] == ids[1] and ids[0] != ids[2]


@needs_shared
def test_zhanglab_benchmark_from_tar_and_csv(tmp_path, capsys):
    out = tmp_path / "zl"
    code, _, err = cli("prepare", KERMANY_TAR, "--labels", ZHANGLAB_CSV, "--out", out, capsys=capsys)
    assert code == 0, err
    code, stdout, _ = cli("inspect", out, "--json", capsys=capsys)
    import json

    sets = json.loads(stdout)["summary"]["sets"]
    got = {k: (v["count"], v["label_0"], v["label_1"]) for k, v in sets.items()}
    # by default 10 % of the named Dn is held out for the threshold ...
    assert got == {"normal": (900, 900, 0), "unlabeled": (853, 341, 512), "test": (624, 234, 390),
                   "val": (100, 100, 0)}
    # ... and --val-normals 0 is the benchmark's protocol, Dn = all 1000
    out = tmp_path / "zl0"
    code, _, err = cli("prepare", KERMANY_TAR, "--labels", ZHANGLAB_CSV, "--out", out, "--val-normals", "0",
                       capsys=capsys)
    assert code == 0, err
    sets = json.loads(cli("inspect", out, "--json", capsys=capsys)[1])["summary"]["sets"]
    got = {k: (v["count"], v["label_0"], v["label_1"]) for k, v in sets.items()}
    assert got == {"normal": (1000, 1000, 0), "unlabeled": (853, 341, 512), "test": (624, 234, 390)}
    with h5py.File(out / "data.h5") as h5:
        assert h5["normal/images"].shape == (1000, 64, 64) and h5["normal/images"].chunks == (1, 64, 64)


@needs_shared
def test_sigkill_leaves_nothing_inspect_accepts(tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "CXRAD_NO_PROGRESS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cxrad.cli", "prepare", str(KERMANY_TAR), "--out", str(out), "--normal-count", "1000",
         "--unlabeled-count", "853", "--anomaly-rate", "0.6", "--workers", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (out / ".cxrad-partial").exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(0.3)  # now decoding
        assert proc.poll() is None, "prepare finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # the stage and its decoding workers
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stderr.close()
    r = subprocess.run([sys.executable, "-m", "cxrad.cli", "inspect", str(out)], capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" not in r.stderr and "cxrad: error:" in r.stderr


def test_default_intensity_is_each_images_percentiles(prepared_sample):
    """The default (decided on the dev split) scales each real radiograph between its own 0.5th and
    99.5th percentiles, then clips; not between its min and max (the default before)."""
    from PIL import Image

    from cxrad.config import PrepareConfig
    from cxrad.io.raster import decode_raster

    assert PrepareConfig().intensity == "percentile" and PrepareConfig().percentiles == (0.5, 99.5)
    normal = load_split(prepared_sample, "normal")
    for stored, src in list(zip(normal.images, normal.source_paths))[:3]:
        path = Path(src) if Path(src).is_absolute() else SAMPLE / src
        img, _ = decode_raster(path.read_bytes(), 50_000_000)
        img = img.astype(np.float64)
        lo, hi = np.percentile(img, [0.5, 99.5])
        by_hand = {name: np.clip((img - a) / (b - a), 0, 1).astype(np.float32)
                   for name, (a, b) in {"percentile": (lo, hi), "minmax": (img.min(), img.max())}.items()}
        resized = {name: np.asarray(Image.fromarray(x, mode="F").resize((64, 64), Image.Resampling.BILINEAR))
                   for name, x in by_hand.items()}
        assert np.abs(stored - resized["percentile"]).max() < 2e-3          # float16 storage
        assert np.abs(stored - resized["minmax"]).max() > 0.02              # and visibly not min-max
