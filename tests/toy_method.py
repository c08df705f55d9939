"""A toy second method for the tests: "mean-image distance" behind the interface of
cxrad/methods/base.py. The run keeps the mean of the normal training images; an image's map D_mean
is its squared difference to that mean, and the image score is the map's mean."""

from __future__ import annotations

import numpy as np

from cxrad.errors import CxradError
from cxrad.methods.base import Method, Scorer
from cxrad.scores import ScoredImages, ScoreSpec, image_score

MEAN_FILE = "mean.npy"


class MeanDistanceScorer(Scorer):
    names = ("D_mean",)

    def __init__(self, mean: np.ndarray):
        self.mean = mean

    def score(self, images01, *, batch_size=64, label=None) -> ScoredImages:
        d = (np.asarray(images01, np.float32) - self.mean[None]) ** 2
        return ScoredImages({"D_mean": d}, {"D_mean": image_score(d)})


class ToyMethod(Method):
    name = "toy"
    title = "mean-image distance"
    specs = (ScoreSpec("D_mean", "(x - mean normal image)^2", priority=0),)
    overlay_maps = ("D_mean",)

    def check_ready(self, run, *, for_command):
        if not (run.root / MEAN_FILE).is_file():
            raise CxradError(f"{run.root}: no {MEAN_FILE}; fit the toy method before `{for_command}`.")

    def load_scorer(self, run, device) -> MeanDistanceScorer:
        return MeanDistanceScorer(np.load(run.root / MEAN_FILE))
