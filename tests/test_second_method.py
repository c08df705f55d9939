"""A second method behind the interface of cxrad/methods/base.py, defined here in the tests: the
generic stages (score, evaluate, predict) run it unchanged.

"Mean-image distance": the run keeps the mean of the normal training images; an image's map D_mean
is its squared difference to that mean, and the image score is the map's mean.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE
from sklearn.metrics import roc_auc_score
from toy_method import MEAN_FILE, ToyMethod

from cxrad import methods
from cxrad.artifacts import input_record, write_manifest
from cxrad.errors import CxradError
from cxrad.io.store import load_split, preprocessing_of


# ---------------------------------------------------------------------------------------------
# the toy method (tests only)
# ---------------------------------------------------------------------------------------------
def fit(prepared: Path, run: Path) -> Path:
    """The toy's training command: the mean normal image, in a run folder of kind "run"."""
    run.mkdir(parents=True)
    np.save(run / MEAN_FILE, load_split(prepared, "normal").images.mean(axis=0).astype(np.float32))
    config = {"method": "toy", "preprocessing": preprocessing_of(prepared)}
    write_manifest(run, "run", config, inputs={"prepared": input_record(prepared)}, outputs=[MEAN_FILE],
                   extra={"method": "toy"})
    return run


# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_run(prepared_sample32, tmp_path_factory) -> Path:
    methods.register("toy", ToyMethod())
    yield fit(prepared_sample32, tmp_path_factory.mktemp("toy") / "run")
    methods._REGISTRY.pop("toy", None)


def _d_mean(images: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """The toy's image score computed independently, in float64."""
    return ((images.astype(np.float64) - mean.astype(np.float64)) ** 2).reshape(len(images), -1).mean(axis=1)


def test_generic_stages_run_the_toy_method(toy_run, prepared_sample32, tmp_path):
    from cxrad.config import EvaluateConfig, PredictConfig, ScoreConfig
    from cxrad.io.maps_store import read_maps_h5
    from cxrad.layout import RunLayout
    from cxrad.stages.evaluate import evaluate
    from cxrad.stages.predict import predict
    from cxrad.stages.score import score

    layout, mean = RunLayout(toy_run), np.load(toy_run / MEAN_FILE)

    # score: the toy's map and score of every image, stored by the generic stage
    score(toy_run, ScoreConfig(device="cpu"))
    maps_manifest = json.loads((layout.maps / "manifest.json").read_text())
    assert maps_manifest["method"] == "toy" and maps_manifest["scores"] == ["D_mean"]
    assert set(maps_manifest["splits"]) == {"test", "normal"}
    test = read_maps_h5(layout.maps_file("test"))
    images = load_split(prepared_sample32, "test").images
    assert list(test.scored.maps) == ["D_mean"] and test.scored.maps["D_mean"].shape == (65, 32, 32)
    np.testing.assert_allclose(test.scored.maps["D_mean"], (images - mean) ** 2, atol=1e-3, rtol=1e-2)  # float16
    np.testing.assert_allclose(test.scored.scores["D_mean"], _d_mean(images, mean), rtol=1e-5)
    scores_only = read_maps_h5(layout.maps_file("test"), maps=False)   # what score_fusion.py reads
    assert scores_only.scored.maps == {} and scores_only.ids == test.ids
    np.testing.assert_array_equal(scores_only.scored.scores["D_mean"], test.scored.scores["D_mean"])

    # evaluate: metrics of D_mean, recomputable from scores.csv
    metrics = evaluate(toy_run, EvaluateConfig(device="cpu"))
    on_disk = json.loads(layout.metrics.read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert on_disk["method"] == "toy" and on_disk["decision_score"] == "D_mean"
    assert list(on_disk["scores"]) == ["D_mean"] and on_disk["threshold_split"] == "normal"
    rows = list(csv.DictReader(open(layout.eval / "scores.csv")))
    assert len(rows) == 65
    y = np.array([int(r["label"]) for r in rows])
    s = np.array([float(r["D_mean"]) for r in rows])
    assert on_disk["scores"]["D_mean"]["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    normal_scores = read_maps_h5(layout.maps_file("normal")).scored.scores["D_mean"]
    threshold = float(np.percentile(np.asarray(normal_scores, np.float64), 95))
    assert on_disk["scores"]["D_mean"]["threshold"] == pytest.approx(threshold, rel=1e-12)
    assert (layout.eval / "overlays.png").stat().st_size > 0

    # predict: new files read like the prepared data, decided by D_mean at the run's threshold
    files = sorted((SAMPLE / "kermany" / "test" / "PNEUMONIA").glob("*.jpeg"))[:3]
    known = SAMPLE / test.ids[0]                              # a test image: its stored score is known
    result = predict(toy_run, [known, *files], tmp_path / "pred", PredictConfig(device="cpu"), workers=1)
    assert result.predicted == 4 and not result.rejected and result.decision_score == "D_mean"
    rows = list(csv.DictReader(open(tmp_path / "pred" / "predictions.csv")))
    assert [Path(r["path"]) for r in rows] == [known, *files]
    # the same independent normal scores give the threshold (95th percentile of the normal split)
    expected = float(np.percentile(_d_mean(load_split(prepared_sample32, "normal").images, mean), 95))
    for row in rows:
        assert row["decision_score"] == "D_mean"
        assert float(row["threshold"]) == pytest.approx(threshold, rel=1e-12)
        assert float(row["threshold"]) == pytest.approx(expected, rel=1e-5)
        assert row["abnormal"] == str(int(float(row["D_mean"]) > float(row["threshold"])))
        assert (tmp_path / "pred" / row["overlay"]).stat().st_size > 0
    assert float(rows[0]["D_mean"]) == pytest.approx(float(test.scored.scores["D_mean"][0]), rel=2e-2)


def test_toy_run_not_ready_is_a_one_line_error(toy_run, prepared_sample32, tmp_path):
    """The generic stage asks the method whether the run is ready and passes its error on."""
    from cxrad.config import ScoreConfig
    from cxrad.stages.score import score

    broken = tmp_path / "broken"
    broken.mkdir()
    write_manifest(broken, "run", {"method": "toy", "preprocessing": preprocessing_of(prepared_sample32)},
                   inputs={"prepared": input_record(prepared_sample32)}, extra={"method": "toy"})
    with pytest.raises(CxradError, match="fit the toy method before `cxrad score`") as info:
        score(broken, ScoreConfig(device="cpu"))
    assert "\n" not in str(info.value) and not (broken / "maps").exists()
