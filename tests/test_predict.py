"""`cxrad predict` on real DICOMs and PNGs with a finished run; rejects and exit codes."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
from conftest import SAMPLE, SHARED_DATA
from PIL import Image


def cli(*args):
    return subprocess.run([sys.executable, "-m", "cxrad.cli", *map(str, args)], capture_output=True, text=True)


def _pngs(folder: Path, n: int = 4) -> Path:
    folder.mkdir(parents=True)
    for i, f in enumerate(sorted((SAMPLE / "kermany" / "test" / "PNEUMONIA").glob("*.jpeg"))[:n]):
        Image.open(f).convert("L").save(folder / f"study{i}.png")
    return folder


def test_predict_dicoms_and_pngs(tiny_run, tmp_path):
    pngs = _pngs(tmp_path / "pngs")
    out = tmp_path / "pred"
    r = cli("predict", tiny_run["run"], SAMPLE / "dicom", pngs, "--out", out)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 2 + 4
    assert {Path(r["path"]).suffix for r in rows} == {".dcm", ".png"}
    for row in rows:
        assert row["decision_score"] == "R_dual"
        assert 0.0 <= float(row["R_dual"]) <= 1.0
        assert row["abnormal"] == str(int(float(row["R_dual"]) > float(row["threshold"])))
        overlay = Image.open(out / row["overlay"])
        assert overlay.size[0] > overlay.size[1] > 0
    # threshold comes from the evaluation (normal training images), not recomputed differently
    import json

    metrics = json.loads((tiny_run["run"] / "eval" / "metrics.json").read_text())
    assert float(rows[0]["threshold"]) == metrics["scores"]["R_dual"]["threshold"]


def test_predict_same_preprocessing_as_prepare(tiny_run, tmp_path):
    """A test image scored by predict gets the same A_rec as in the run's own test maps."""
    from cxrad.io.maps_store import read_maps_h5
    from cxrad.layout import RunLayout

    test = read_maps_h5(RunLayout(tiny_run["run"]).maps_file("test"))
    idx = 0
    rel = test.ids[idx]
    out = tmp_path / "pred"
    r = cli("predict", tiny_run["run"], SAMPLE / rel, "--out", out, "--no-overlays")
    assert r.returncode == 0, r.stderr
    row = next(csv.DictReader(open(out / "predictions.csv")))
    np.testing.assert_allclose(float(row["A_rec"]), float(test.scored.scores["A_rec"][idx]), rtol=2e-2)



def test_a_run_prepared_with_min_max_is_read_with_min_max():
    """Runs prepared before percentile became the default keep their scaling at predict: the
    recorded parameters, not today's default, rebuild the reader (the test above checks that
    predict uses that reader)."""
    from cxrad.config import PrepareConfig
    from cxrad.io.preprocess import config_from_parameters, parameters

    old = PrepareConfig(size=32, intensity="minmax", percentiles=(1.0, 99.0))
    rebuilt = config_from_parameters(parameters(old))
    assert PrepareConfig().intensity == "percentile"
    assert (rebuilt.intensity, rebuilt.percentiles, rebuilt.size) == ("minmax", (1.0, 99.0), 32)

def _ct_dicom(tmp_path: Path) -> Path:
    """The real CT slice from ../shared when this checkout has it; else a chest CR relabelled CT."""
    real = SHARED_DATA / "dicom" / "pydicom_CT_small.dcm"
    if real.exists():
        return real
    ds = pydicom.dcmread(SAMPLE / "dicom" / "pydicom-data_RG1_UNCR_chest_CR.dcm")
    ds.Modality = "CT"
    path = tmp_path / "pydicom_CT_small.dcm"
    ds.save_as(path)
    return path


def test_predict_rejects_bad_inputs(tiny_run, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    out = tmp_path / "pred"
    r = cli("predict", tiny_run["run"], _ct_dicom(tmp_path), text,
            tmp_path / "missing.dcm", SAMPLE / "dicom", "--out", out)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    rejects = {Path(row["path"]).name: row["reason"] for row in csv.DictReader(open(out / "rejects.csv"))}
    assert "modality CT" in rejects["pydicom_CT_small.dcm"]
    assert "not an image" in rejects["notes.png"]
    assert "no such file" in rejects["missing.dcm"]
    assert len(list(csv.DictReader(open(out / "predictions.csv")))) == 2


def test_predict_shards_partition_the_inputs(tiny_run, tmp_path):
    pngs = _pngs(tmp_path / "pngs", n=5)
    seen = []
    for k in range(2):
        r = cli("predict", tiny_run["run"], pngs, "--out", tmp_path / "pred", "--num-shards", 2,
                "--shard-id", k, "--no-overlays")
        assert r.returncode == 0, r.stderr
        seen += [row["path"] for row in csv.DictReader(open(tmp_path / "pred" / f"shard-{k}-of-2" / "predictions.csv"))]
    assert sorted(seen) == sorted(str(p) for p in pngs.glob("*.png"))


def test_predict_refuses_incomplete_run(prepared_sample32, tmp_path):
    from cxrad.methods.ddad.config import EnsembleConfig
    from cxrad.methods.ddad.train_ensemble import train_ensemble

    run = tmp_path / "run"
    train_ensemble(prepared_sample32, run, EnsembleConfig(members=2, epochs=1, batch_size=16))
    r = cli("predict", run, SAMPLE / "dicom", "--out", tmp_path / "pred")
    assert r.returncode == 2
    assert "cxrad refine" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "pred").exists()


def _copy(files, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for f in files:
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


def test_predict_threshold_from_local_normals(tiny_run, tmp_path):
    """--calibrate-on: the threshold is the 95th percentile of the local normals' own scores."""
    import json

    normals = SAMPLE / "kermany" / "test" / "NORMAL"          # 20 images: the minimum
    out = tmp_path / "pred"
    r = cli("predict", tiny_run["run"], normals, "--out", out, "--no-overlays", "--calibrate-on", normals)
    assert r.returncode == 0, r.stderr
    assert "20 local normal images" in r.stdout
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    scored = np.array([float(row["R_dual"]) for row in rows])
    thr = float(rows[0]["threshold"])
    # the same images in the same batches: their percentile, computed by hand, is the threshold
    np.testing.assert_allclose(thr, np.percentile(scored, 95), rtol=1e-9)
    assert sum(int(row["abnormal"]) for row in rows) == int((scored > thr).sum()) == 1   # 5 % of 20
    metrics = json.loads((tiny_run["run"] / "eval" / "metrics.json").read_text())
    assert thr != metrics["scores"]["R_dual"]["threshold"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["calibration"]["files"] == 20
    assert len(manifest["config"]["calibration"]["sha256"]) == 64
    assert set(manifest["summary"]["thresholds"]) == {"A_rec", "A_intra", "A_inter", "R_intra", "R_dual"}
    r = cli("inspect", out)
    assert r.returncode == 0
    assert "threshold_source: 95th percentile of the scores of the 20 local normal images" in r.stdout

    # a changed calibration set is a different configuration: never reused, replaced only on --force.
    # The highest-scored normal is the one swapped out, so the 95th percentile (which lies between the
    # two highest of 20) must move, whatever scores the tiny run's models give
    top = Path(max(rows, key=lambda row: float(row["R_dual"]))["path"]).name
    train_normal = sorted((SAMPLE / "kermany" / "train" / "NORMAL").glob("*.jpeg"))[0]
    changed = _copy([f for f in sorted(normals.glob("*.jpeg")) if f.name != top] + [train_normal],
                    tmp_path / "changed")
    args = ("predict", tiny_run["run"], normals, "--out", out, "--no-overlays", "--calibrate-on", changed)
    r = cli(*args)
    assert r.returncode == 2 and "different configuration" in r.stderr and "--force" in r.stderr
    r = cli(*args, "--force")
    assert r.returncode == 0, r.stderr
    assert float(next(csv.DictReader(open(out / "predictions.csv")))["threshold"]) != thr


def test_predict_refuses_too_few_or_missing_local_normals(tiny_run, tmp_path):
    few = _copy(sorted((SAMPLE / "kermany" / "test" / "NORMAL").glob("*.jpeg"))[:5], tmp_path / "few")
    for calib, words in ((few, ["5 readable normal image(s)", "at least 20", str(few)]),
                         (tmp_path / "nowhere", ["no such file or folder", str(tmp_path / "nowhere")])):
        r = cli("--no-progress", "predict", tiny_run["run"], SAMPLE / "dicom", "--out", tmp_path / "pred",
                "--calibrate-on", calib)
        assert r.returncode == 2, r.stderr
        errors = [line for line in r.stderr.splitlines() if not line.startswith("predict: ")]  # progress lines
        assert len(errors) == 1 and errors[0].startswith("cxrad: error: --calibrate-on "), r.stderr
        assert all(w in errors[0] for w in words), r.stderr
        assert not (tmp_path / "pred").exists()
