"""Labelled abnormal training images (`cxrad prepare --anomalies CSV --anomaly-shots K`): stored as the
'anomaly' set in file order, recorded in the manifest, refused when they overlap another set or K is
too large, readable only by a caller that declares it reads labelled anomalies; and the shipped
ZhangLab few-shot list is disjoint from the benchmark's other sets."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from cxrad.config import PrepareConfig, identity, identity_digest
from cxrad.errors import CxradError
from cxrad.io.store import ANOMALY_SET, load_labels, load_split, split_names, summarize_prepared

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"
SPLITS = REPO / "benchmarks" / "splits"
FEWSHOT = SPLITS / "zhanglab-fewshot-anomalies.csv"
KERMANY_TAR = REPO.parent / "shared" / "data" / "kermany-pneumonia-224" / "kermany_pneumonia_224.tar"


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _write(path: Path, rows: list[dict[str, str]], columns: tuple[str, ...] = ("path", "label", "split")) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture
def split_csvs(tmp_path) -> dict[str, Path]:
    """sample_data's labels with 5 of its abnormal test images moved to an --anomalies file (in
    reverse path order, so file order differs from id order)."""
    rows = _rows(SAMPLE / "labels.csv")
    moved = [r for r in rows if r["split"] == "test" and r["label"] == "1"][:5][::-1]
    keep = [r for r in rows if r not in moved]
    anomalies = [{**r, "split": "anomaly"} for r in moved]
    return {"labels": _write(tmp_path / "labels.csv", keep), "anomalies": _write(tmp_path / "anom.csv", anomalies),
            "moved": [r["path"] for r in moved], "rows": keep}


def _error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("cxrad: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_anomaly_shots_stored_in_file_order_recorded_and_guarded(split_csvs, tmp_path, cli):
    out = tmp_path / "p"
    code, _, err = cli("prepare", SAMPLE, "--labels", split_csvs["labels"], "--anomalies", split_csvs["anomalies"],
                       "--anomaly-shots", 3, "--size", 32, "--workers", 2, "--out", out)
    assert code == 0, err
    # the guard: a caller that does not declare labelled anomalies cannot read them
    with pytest.raises(CxradError, match="only a weakly supervised method may read it"):
        load_split(out, ANOMALY_SET)
    with pytest.raises(CxradError, match="labelled_anomalies=True"):
        load_labels(out, ANOMALY_SET)
    got = load_split(out, ANOMALY_SET, labelled_anomalies=True)
    assert got.ids == split_csvs["moved"][:3]            # the first K rows, in file order (not sorted)
    assert got.images.shape == (3, 32, 32) and got.labels.tolist() == [1, 1, 1]
    # no stage that iterates the sets sees it; inspect counts it
    assert ANOMALY_SET not in split_names(out)
    assert summarize_prepared(out)["sets"][ANOMALY_SET] == {"count": 3, "label_0": 0, "label_1": 3, "unknown": 0}
    manifest = json.loads((out / "manifest.json").read_text())
    rec = manifest["summary"]["labelled_anomalies"]
    assert rec == {"count": 3, "ids": split_csvs["moved"][:3], "listed": 5,
                   "file": str(split_csvs["anomalies"].resolve())}
    assert manifest["inputs"]["anomalies"]["path"] == str(split_csvs["anomalies"].resolve())
    assert manifest["config"]["options"]["anomaly_shots"] == 3
    # the other sets are exactly what the labels name: the 5 moved images are in none of them
    others = {i for s in ("normal", "unlabeled", "test") for i in load_split(out, s).ids}
    assert len(others) == len(split_csvs["rows"]) and not others & set(split_csvs["moved"])


def test_default_keeps_no_anomaly_and_old_identities(split_csvs, tmp_path, cli):
    """Without --anomaly-shots nothing is stored, and the configuration's identity is the one every
    artifact made before this option existed has (so they stay up to date)."""
    from cxrad.stages.prepare import _record

    record = _record(PrepareConfig(), SAMPLE, SAMPLE / "labels.csv", None)
    assert set(identity(record)) == {"source", "labels", "split_file", "options"}
    assert "anomaly_shots" not in identity(PrepareConfig())
    assert identity_digest(PrepareConfig(anomaly_shots=2)) != identity_digest(PrepareConfig())
    out = tmp_path / "p0"
    code, _, err = cli("prepare", SAMPLE, "--labels", split_csvs["labels"], "--anomalies", split_csvs["anomalies"],
                       "--size", 32, "--workers", 2, "--out", out)
    assert code == 0, err
    assert ANOMALY_SET not in summarize_prepared(out)["sets"]
    assert "labelled_anomalies" not in json.loads((out / "manifest.json").read_text())["summary"]


def test_anomaly_rows_inside_the_labels_csv(tmp_path, cli):
    rows = _rows(SAMPLE / "labels.csv")
    rows[-1]["split"] = rows[-2]["split"] = "anomaly"   # two abnormal test images become labelled anomalies
    labels = _write(tmp_path / "labels.csv", rows)
    out = tmp_path / "p"
    code, _, err = cli("prepare", SAMPLE, "--labels", labels, "--anomaly-shots", 2, "--size", 32, "--workers", 2,
                       "--out", out)
    assert code == 0, err
    assert load_split(out, ANOMALY_SET, labelled_anomalies=True).ids == [rows[-2]["path"], rows[-1]["path"]]


def test_refusals_name_the_file(split_csvs, tmp_path, cli):
    base = ("prepare", SAMPLE, "--labels", split_csvs["labels"], "--size", 32, "--workers", 2)
    anom = split_csvs["anomalies"]
    # K larger than the list
    code, _, err = cli(*base, "--anomalies", anom, "--anomaly-shots", 6, "--out", tmp_path / "a")
    line = _error(err)
    assert code != 0 and str(anom) in line and "fewer than --anomaly-shots 6" in line and "at most 5" in line
    # K without any labelled anomaly
    code, _, err = cli(*base, "--anomaly-shots", 1, "--out", tmp_path / "b")
    assert code != 0 and "name no labelled anomaly" in _error(err)
    # a label other than 1
    bad = _rows(anom)
    bad[1]["label"] = "0"
    code, _, err = cli(*base, "--anomalies", _write(tmp_path / "bad.csv", bad), "--anomaly-shots", 1,
                       "--out", tmp_path / "c")
    line = _error(err)
    assert code != 0 and "bad.csv: line 3:" in line and "its label must be 1" in line
    # the same image listed as a labelled anomaly and in the labels (here: a test image)
    dup = _rows(anom) + [{**split_csvs["rows"][-1], "split": "anomaly", "label": "1"}]
    code, _, err = cli(*base, "--anomalies", _write(tmp_path / "dup.csv", dup), "--anomaly-shots", 1,
                       "--out", tmp_path / "d")
    line = _error(err)
    assert code != 0 and "dup.csv: line 7:" in line and "also listed in" in line and str(split_csvs["labels"]) in line
    # a split other than anomaly in an --anomalies file
    other = [{**r, "split": "test"} for r in _rows(anom)]
    code, _, err = cli(*base, "--anomalies", _write(tmp_path / "other.csv", other), "--anomaly-shots", 1,
                       "--out", tmp_path / "e")
    assert code != 0 and "lists labelled abnormal training images only" in _error(err)
    # one of the first K rows is not in SOURCE: refused, never replaced by the next row
    missing = [{"path": "kermany/train/PNEUMONIA/nope.jpeg", "label": "1", "split": "anomaly"}] + _rows(anom)
    code, _, err = cli(*base, "--anomalies", _write(tmp_path / "missing.csv", missing), "--anomaly-shots", 2,
                       "--out", tmp_path / "f")
    line = _error(err)
    assert code != 0 and "missing.csv: line 2: labelled anomaly kermany/train/PNEUMONIA/nope.jpeg" in line
    assert not any((tmp_path / n).exists() for n in "abcdef")   # every refusal before anything was written


def test_patient_overlap_refused_before_decoding(split_csvs, tmp_path, cli):
    cols = ("path", "label", "split", "patient_id")
    rows = [{**r, "patient_id": f"p{i}"} for i, r in enumerate(split_csvs["rows"])]
    test_patient = next(r["patient_id"] for r in rows if r["split"] == "test")
    anomalies = [{**r, "patient_id": f"a{i}"} for i, r in enumerate(_rows(split_csvs["anomalies"]))]
    anomalies[0]["patient_id"] = test_patient
    labels = _write(tmp_path / "labels.csv", rows, cols)
    anom = _write(tmp_path / "anom.csv", anomalies, cols)
    code, _, err = cli("prepare", SAMPLE, "--labels", labels, "--anomalies", anom, "--anomaly-shots", 2,
                       "--size", 32, "--out", tmp_path / "p")
    line = _error(err)
    assert code != 0 and str(anom) in line and f"patient {test_patient}" in line and "test set" in line
    # a patient that is only among the rows beyond K is no conflict
    code, _, err = cli("prepare", SAMPLE, "--labels", labels, "--anomalies", anom, "--anomaly-shots", 0,
                       "--size", 32, "--workers", 2, "--out", tmp_path / "q")
    assert code == 0, err


# --------------------------------------------------------------------------------------------
# the shipped ZhangLab list
# --------------------------------------------------------------------------------------------
def _patient(path: str) -> str:
    """Kermany's patient key in a file name: personN (pneumonia) or IM-NNNN / NORMAL2-IM-NNNN (normal)."""
    return re.match(r"(person\d+|NORMAL2-IM-\d+|IM-\d+)", path.rsplit("/", 1)[1]).group(1)


def test_zhanglab_fewshot_list_is_disjoint_from_the_benchmark_sets():
    few = _rows(FEWSHOT)
    assert len(few) == 16 and [int(r["k_rank"]) for r in few] == list(range(1, 17))
    assert all(r["label"] == "1" and r["split"] == "anomaly" and "/train/PNEUMONIA/" in r["path"] for r in few)
    paths = {r["path"] for r in few}
    patients = {_patient(p) for p in paths}
    assert len(patients) == 16                      # one image per patient
    for name in ("zhanglab-ocssl.csv", "zhanglab-dev.csv"):
        rows = _rows(SPLITS / name)
        assert not paths & {r["path"] for r in rows}, name
        for split in ("normal", "unlabeled"):
            assert not patients & {_patient(r["path"]) for r in rows if r["split"] == split}, (name, split)
    # the dev test set draws its abnormal images from the train pool: no shared patient there either
    assert not patients & {_patient(r["path"]) for r in _rows(SPLITS / "zhanglab-dev.csv") if r["split"] == "test"}
    # Kermany numbers the patients of its test folder on its own: of the 170 person numbers found in
    # both folders none has the same pneumonia kind (bacteria/virus) on both sides, while 808 of the
    # 1,635 train persons have both kinds. Two of the 16 share a number with an official test image.
    official_test = {_patient(r["path"]) for r in _rows(SPLITS / "zhanglab-ocssl.csv") if r["split"] == "test"}
    assert patients & official_test == {"person37", "person1665"}


@pytest.mark.skipif(not KERMANY_TAR.exists(), reason="../shared/data not available")
def test_zhanglab_fewshot_list_prepares_from_the_tar(tmp_path, cli):
    """The shipped list with a small part of the benchmark CSV: paths resolve inside the tar, K = 4."""
    rows = _rows(SPLITS / "zhanglab-ocssl.csv")
    small = [r for r in rows if r["split"] == "normal"][:8] + [r for r in rows if r["split"] == "test"][-8:]
    labels = _write(tmp_path / "small.csv", small)
    out = tmp_path / "zl"
    code, _, err = cli("prepare", KERMANY_TAR, "--labels", labels, "--anomalies", FEWSHOT, "--anomaly-shots", 4,
                       "--size", 32, "--workers", 2, "--out", out)
    assert code == 0, err
    got = load_split(out, ANOMALY_SET, labelled_anomalies=True)
    assert got.ids == [r["path"] for r in _rows(FEWSHOT)[:4]] and np.all(got.labels == 1)
