"""Decision thresholds from held-out normal images (`prepare --val-normals`, `evaluate --threshold-from`)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from cxrad.artifacts import write_manifest
from cxrad.io.store import ImageSet, load_split, write_prepared_h5
from cxrad.methods.ddad.config import EnsembleConfig
from cxrad.metrics import normal_threshold

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
pytestmark = pytest.mark.usefixtures("one_thread")


def _subset(s: ImageSet, rows: np.ndarray, prefix: str) -> ImageSet:
    return ImageSet(s.images[rows], s.labels[rows], [prefix + s.ids[i] for i in rows],
                    [s.source_paths[i] for i in rows], {k: v[rows] for k, v in s.provenance.items()})


@pytest.fixture(scope="module")
def run_with_val(prepared_sample32, tmp_path_factory) -> Path:
    """Tiny ensembles on the sample plus a val split: copies of the 20 test normals and 3 abnormal
    test images. With the test normals as calibration images, the 95th percentile must leave
    exactly 19 of the 20 test normals below it."""
    from cxrad.methods.ddad.train_ensemble import train_ensemble

    folder = tmp_path_factory.mktemp("val") / "prepared"
    folder.mkdir()
    sets = {n: load_split(prepared_sample32, n) for n in ("normal", "unlabeled", "test")}
    t = sets["test"]
    rows = np.concatenate([np.flatnonzero(t.labels == 0), np.flatnonzero(t.labels == 1)[:3]])
    sets["val"] = _subset(t, rows, "val-")
    write_prepared_h5(folder / "data.h5", sets, [], {"size": 32})
    write_manifest(folder, "prepared", {"size": 32, "val": "copies of test images"}, outputs=["data.h5"])
    run = folder.parent / "run"
    train_ensemble(folder, run, EnsembleConfig(members=2, epochs=2, batch_size=8, device="cpu"))
    return run


def _val_normal_scores(run: Path, name: str) -> np.ndarray:
    with h5py.File(run / "maps" / "val.h5") as h5:
        return h5[f"scores/{name}"][...][h5["labels"][...] == 0].astype(np.float64)


def test_held_out_normals_set_the_threshold(run_with_val, cli):
    import torch

    from cxrad.runs import open_run
    from cxrad.scoring import artifact_records, method_of
    from cxrad.stages.predict import run_thresholds

    run = run_with_val
    # predict without an evaluation applies the same rule: held-out normals
    info = open_run(run)
    method = method_of(info, command="cxrad evaluate")
    thr, source = run_thresholds(info, method, method.load_scorer(info, torch.device("cpu")),
                                 artifact_records(info, method))
    assert "20 held-out normal images" in source

    assert cli("score", run, "--device", "cpu")[0] == 0
    with h5py.File(run / "maps" / "val.h5") as h5:
        assert len(h5["ids"]) == 23
    code, _, err = cli("evaluate", run, "--device", "cpu")
    assert code == 0, err
    assert "specificity will fall" not in err
    m = json.loads((run / "eval" / "metrics.json").read_text())
    assert m["threshold_split"] == "val" and "20 held-out normal images (val split)" in m["threshold_source"]
    for name in ("A_rec", "A_intra", "A_inter"):
        s = m["scores"][name]
        expected = normal_threshold(_val_normal_scores(run, name), 95.0)
        assert s["threshold"] == pytest.approx(expected, rel=1e-6)
        assert s["threshold"] == pytest.approx(thr[name], rel=1e-4)
        assert s["specificity"] == pytest.approx(19 / 20)

    code, _, err = cli("evaluate", run, "--threshold-from", "normal", "--force", "--device", "cpu")
    assert code == 0, err
    assert "thresholds come from the normal training images" in err and "--val-normals" in err
    m = json.loads((run / "eval" / "metrics.json").read_text())
    assert m["threshold_split"] == "normal" and "30 normal training images" in m["threshold_source"]
    with h5py.File(run / "maps" / "normal.h5") as h5:
        dn = h5["scores/A_inter"][...].astype(np.float64)
    assert m["scores"]["A_inter"]["threshold"] == pytest.approx(normal_threshold(dn, 95.0), rel=1e-6)

    # evaluating the val split itself never calibrates on it
    code, _, err = cli("evaluate", run, "--split", "val", "--force", "--device", "cpu")
    assert code == 0, err
    assert json.loads((run / "eval" / "metrics.json").read_text())["threshold_split"] == "normal"


def test_threshold_from_val_without_val_split_is_a_one_line_error(prepared_sample32, tmp_path, cli):
    from cxrad.methods.ddad.train_ensemble import train_ensemble

    run = tmp_path / "run"
    cfg = EnsembleConfig(module="ndm", members=2, epochs=1, batch_size=8, device="cpu")
    train_ensemble(prepared_sample32, run, cfg)
    code, _, err = cli("evaluate", run, "--threshold-from", "val", "--device", "cpu")
    assert code != 0 and "--val-normals" in err and len(err.strip().splitlines()) == 1, err
    assert not (run / "eval").exists()
    code, _, err = cli("evaluate", run, "--threshold-from", "best", "--device", "cpu")
    assert code != 0 and "--threshold-from 'best'" in err and len(err.strip().splitlines()) == 1, err
    assert not (run / "eval").exists()


def test_prepare_val_normals_from_a_pool(tmp_path, cli):
    """A labels CSV without a split column: Dn, Du, test and the held-out normals drawn from one pool."""
    pool_csv = tmp_path / "pool.csv"
    with open(SAMPLE / "labels.csv") as f, open(pool_csv, "w", newline="") as g:
        w = csv.writer(g)
        w.writerow(["path", "label"])
        for row in csv.DictReader(f):
            w.writerow([row["path"], row["label"]])
    out = tmp_path / "prepared"
    code, _, err = cli("prepare", SAMPLE, "--labels", pool_csv, "--out", out, "--size", "32", "--workers", "1",
                       "--normal-count", "20", "--unlabeled-count", "20", "--anomaly-rate", "0.5",
                       "--val-normals", "10")
    assert code == 0, err
    sets = {n: load_split(out, n) for n in ("normal", "unlabeled", "test", "val")}
    assert len(sets["val"]) == 10 and (sets["val"].labels == 0).all()
    assert len(sets["normal"]) == 20 and len(sets["unlabeled"]) == 20
    others = set().union(*(set(sets[n].ids) for n in ("normal", "unlabeled", "test")))
    assert not set(sets["val"].ids) & others

    # the sample's own labels.csv names every image's set: the held-out normals come out of its Dn
    code, _, err = cli("prepare", SAMPLE, "--labels", SAMPLE / "labels.csv", "--out", tmp_path / "p2",
                       "--size", "32", "--workers", "1", "--val-normals", "10")
    assert code == 0, err
    named = {n: load_split(tmp_path / "p2", n) for n in ("normal", "val")}
    assert len(named["val"]) == 10 and len(named["normal"]) == 20
    assert not set(named["val"].ids) & set(named["normal"].ids)


def _named_split_csv(tmp_path: Path, n_normal: int) -> Path:
    """A labels CSV naming Dn directly: ``n_normal`` copies of the sample's real normal radiographs
    (two images per patient), the sample's Du and test sets unchanged."""
    rows = list(csv.DictReader(open(SAMPLE / "labels.csv")))
    normals = [r["path"] for r in rows if r["split"] == "normal"]
    src = tmp_path / "src"
    for sub in ("NORMAL", "rest"):
        (src / sub).mkdir(parents=True)
    out = [["path", "label", "split", "patient_id"]]
    for i in range(n_normal):
        dst = src / "NORMAL" / f"n{i:03d}.jpeg"
        dst.write_bytes((SAMPLE / normals[i % len(normals)]).read_bytes())
        out.append([f"NORMAL/{dst.name}", "0", "normal", f"p{i // 2:03d}"])
    for j, r in enumerate(r for r in rows if r["split"] != "normal"):
        dst = src / "rest" / f"r{j:03d}.jpeg"
        dst.write_bytes((SAMPLE / r["path"]).read_bytes())
        out.append([f"rest/{dst.name}", r["label"], r["split"], f"q{j:03d}"])
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:
        csv.writer(f).writerows(out)
    return labels


def test_prepare_holds_out_normals_by_default_when_dn_is_large(tmp_path, cli):
    """Without --val-normals, a Dn of 210 images gives 10 % (20 in whole patients) to the val split, so
    the threshold comes from normals no model trained on; --val-normals 0 keeps the old behaviour."""
    labels = _named_split_csv(tmp_path, 210)
    src = tmp_path / "src"
    code, _, err = cli("prepare", src, "--labels", labels, "--out", tmp_path / "auto", "--size", "16",
                       "--workers", "1")
    assert code == 0, err
    assert "holding 20 of the 210 normal training images out" in err
    dn, val = load_split(tmp_path / "auto", "normal"), load_split(tmp_path / "auto", "val")
    assert (len(dn), len(val)) == (190, 20) and (val.labels == 0).all()
    patients = {i: int(re.search(r"n(\d{3})\.jpeg$", i).group(1)) // 2 for i in dn.ids + val.ids}
    # 10 % is 21, but patients hold two images each: the fill stops at 20 rather than split one
    assert not {patients[i] for i in dn.ids} & {patients[i] for i in val.ids}
    manifest = json.loads((tmp_path / "auto" / "manifest.json").read_text())
    assert manifest["config"]["options"]["val_normals"] is None

    code, _, err = cli("prepare", src, "--labels", labels, "--out", tmp_path / "all", "--size", "16",
                       "--workers", "1", "--val-normals", "0")
    assert code == 0, err
    assert len(load_split(tmp_path / "all", "normal")) == 210 and "holding" not in err
    with h5py.File(tmp_path / "all" / "data.h5") as h5:
        assert "val" not in h5

    # an exact count that whole patients of two cannot give is refused before anything is written
    code, _, err = cli("prepare", src, "--labels", labels, "--out", tmp_path / "odd", "--size", "16",
                       "--workers", "1", "--val-normals", "11")
    assert code != 0 and "--val-normals 11" in err and "largest found: 10" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "odd").exists()
