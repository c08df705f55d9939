"""End to end on the real sample images at 32 px with tiny epochs: train-ensemble → synthesize →
refine (dual, intra) → score → evaluate through the CLI; every artifact checked; metrics.json
recomputed from scores.csv; the stage errors of issue 4."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from cxrad.artifacts import read_manifest, write_manifest
from cxrad.io.store import load_split, write_prepared_h5
from cxrad.methods.ddad.config import EnsembleConfig

TINY = EnsembleConfig(members=2, epochs=2, batch_size=16, checkpoint_every=1, device="cpu")


@pytest.fixture(scope="module")
def trained_run(prepared_sample32, tmp_path_factory) -> Path:
    from cxrad.methods.ddad.train_ensemble import train_ensemble

    run = tmp_path_factory.mktemp("runs") / "tiny"
    train_ensemble(prepared_sample32, run, TINY)
    return run


def test_score_before_ensembles(tmp_path, cli, prepared_sample32):
    run = tmp_path / "run"
    run.mkdir()
    write_manifest(run, "run", {"backbone": "ae"})
    code, _, err = cli("score", run)
    assert code != 0 and "cxrad train-ensemble" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("score", tmp_path / "nothing")
    assert code != 0 and "cxrad train-ensemble" in err


def test_full_chain(trained_run, cli):
    run = trained_run
    assert cli("synthesize", run, "--epochs", 2, "--seed", 1)[0] == 0
    with h5py.File(run / "synth" / "fpi.h5") as h5:
        assert h5["source"].shape == (2, 30) and h5["preview/images"].shape[0] > 0
        # default (auto) with unlabelled images: map-space blend, donors index the 25 unlabelled images
        assert h5.attrs["space"] == "maps" and h5.attrs["donor_pool"] == "unlabeled"
        assert h5["donor"][...].max() < 25 and h5["source"][...].max() == 29
    assert (run / "synth" / "preview.png").stat().st_size > 0
    for mode in ("dual", "intra"):
        code, _, err = cli("refine", run, "--inputs", mode, "--epochs", 2, "--batch-size", 8, "--device", "cpu")
        assert code == 0, err
        m = read_manifest(run / "refine" / mode, "refine", verify=True)
        assert len(m["scales"]) == (2 if mode == "dual" else 1) and all(s > 0 for s in m["scales"])
        assert m["synthesis"] == {"space": "maps", "donor_pool": "unlabeled"}
        assert len(json.loads((run / "refine" / mode / "log.json").read_text())) == 2
    # resume of a finished run rebuilds the same final model (same checkpoint, deterministic precise BN)
    code, _, err = cli("refine", run, "--inputs", "intra", "--epochs", 2, "--resume", "--device", "cpu")
    assert code == 0, err
    assert cli("score", run, "--split", "test", "--device", "cpu")[0] == 0
    for split, n in (("test", 65), ("normal", 30)):
        with h5py.File(run / "maps" / f"{split}.h5") as h5:
            assert h5["maps/A_inter"].shape == (n, 32, 32) and h5["maps/A_inter"].dtype == np.float16
            # score runs after refine: every score of the run, the refined ones included
            assert set(h5["scores"]) == {"A_rec", "A_intra", "A_inter", "R_intra", "R_dual"} and len(h5["ids"]) == n
            assert set(h5["maps"]) == set(h5["scores"]) and h5["maps/R_dual"].shape == (n, 32, 32)
    code, out, err = cli("evaluate", run, "--device", "cpu")
    assert code == 0, err
    assert "R_dual" in out and "AUC" in out
    ev = run / "eval"
    read_manifest(ev, "eval", verify=True)
    for name in ("metrics.json", "metrics.md", "scores.csv", "roc.png", "pr.png", "histograms.png", "overlays.png"):
        assert (ev / name).stat().st_size > 0
    metrics = json.loads((ev / "metrics.json").read_text())
    assert list(metrics["scores"]) == ["A_rec", "A_intra", "A_inter", "R_intra", "R_dual"]
    rows = list(csv.DictReader(open(ev / "scores.csv")))
    assert len(rows) == 65
    y = np.array([int(r["label"]) for r in rows])
    for name, m in metrics["scores"].items():
        s = np.array([float(r[name]) for r in rows])
        assert m["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert m["ap"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
        assert 0 <= m["specificity"] <= 1 and np.isfinite(m["threshold"])
    # the same options and inputs again: a no-op that returns the same metrics
    assert cli("evaluate", run, "--device", "cpu")[0] == 0
    for kind_dir in ("maps", "synth", "refine/dual", "eval"):
        code, out, _ = cli("inspect", run / kind_dir)
        assert code == 0 and "kind:" in out


def _unlabelled_copy(prepared: Path, out: Path) -> Path:
    """The sample with the test labels hidden (-1), as an input without labels would be."""
    sets = {name: load_split(prepared, name) for name in ("normal", "test")}
    sets["test"].labels = np.full_like(sets["test"].labels, -1)
    out.mkdir(parents=True)
    write_prepared_h5(out / "data.h5", sets, [], {"size": 32})
    write_manifest(out, "prepared", {"size": 32, "labels": "hidden"}, outputs=["data.h5"])
    return out


def test_errors_without_udm_and_labels(prepared_sample32, tmp_path, cli):
    from cxrad.methods.ddad.train_ensemble import train_ensemble

    prepared = _unlabelled_copy(prepared_sample32, tmp_path / "nolabels")
    run = tmp_path / "ndm-only"
    cfg = EnsembleConfig(**{**TINY.__dict__, "module": "ndm", "epochs": 1})
    train_ensemble(prepared, run, cfg)
    assert cli("synthesize", run, "--epochs", 1)[0] == 0
    code, _, err = cli("refine", run, "--inputs", "dual", "--epochs", 1, "--device", "cpu")
    assert code != 0 and "UDM" in err and "train-ensemble" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("refine", run, "--inputs", "intra", "--epochs", 2, "--device", "cpu")
    assert code != 0 and "cxrad synthesize" in err  # recipes for 1 epoch only
    code, _, err = cli("evaluate", run, "--device", "cpu")
    assert code != 0 and "no labels" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = cli("refine", run, "--inputs", "intra", "--epochs", 1, "--resume", "--device", "cpu")
    assert code != 0 and "nothing to resume" in err
    # no unlabelled images: map-space FPI has no donors (one-line error); auto fell back to the
    # reference image-space FPI, which trains
    code, _, err = cli("synthesize", run, "--epochs", 1, "--space", "maps", "--force")
    assert code != 0 and "unlabelled set" in err and 'space = "image"' in err and len(err.strip().splitlines()) == 1
    with h5py.File(run / "synth" / "fpi.h5") as h5:
        assert h5.attrs["space"] == "image" and np.all(h5["donor"][...] != h5["source"][...])
    code, _, err = cli("refine", run, "--inputs", "intra", "--epochs", 1, "--device", "cpu")
    assert code == 0, err
    assert read_manifest(run / "refine" / "intra", "refine")["synthesis"] == {"space": "image", "donor_pool": "normal"}
    shutil.rmtree(run)
