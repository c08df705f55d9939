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


# ---------------------------------------------------------------------------------------------
# a toy single-model method for `cxrad fit` (cxrad/methods/fitting.py)
# ---------------------------------------------------------------------------------------------
from dataclasses import dataclass  # noqa: E402

import torch  # noqa: E402

from cxrad.config import StageConfig, at_least, operational  # noqa: E402
from cxrad.io.store import load_split  # noqa: E402
from cxrad.methods.fitting import SingleModelMethod  # noqa: E402


@dataclass
class ToyFitConfig(StageConfig):
    epochs: int = 3
    lr: float = 0.5
    batch_size: int = 8
    seed: int = 0
    device: str = operational("cpu")
    checkpoint_every: int = operational(1)

    def check(self) -> None:
        at_least(self, 1, "epochs", "batch_size", "checkpoint_every")


class ToyFitTrainer:
    """SGD on a mean image, shuffled minibatches from a seeded generator: enough state (weights,
    optimiser, RNG) for resume to be a real test. ``stop_at``: send SIGUSR1 to this process
    during that epoch (tests of the stop signal)."""

    stop_at: int | None = None

    def __init__(self, images: np.ndarray, cfg: ToyFitConfig):
        self.x = torch.as_tensor(images)
        self.cfg, self.epoch = cfg, 0
        self.mean = torch.zeros(self.x.shape[1:], requires_grad=True)
        self.opt = torch.optim.SGD([self.mean], lr=cfg.lr, momentum=0.9)
        self.gen = torch.Generator().manual_seed(cfg.seed)

    def run_epoch(self) -> list[float]:
        import os
        import signal

        losses = []
        for idx in torch.randperm(len(self.x), generator=self.gen).split(self.cfg.batch_size):
            loss = ((self.x[idx] - self.mean) ** 2).mean()
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            losses.append(loss.item())
        self.epoch += 1
        if self.stop_at == self.epoch:
            os.kill(os.getpid(), signal.SIGUSR1)
        return [float(np.mean(losses))]

    def checkpoint(self) -> dict:
        return {"mean": self.mean.detach().clone(), "opt": self.opt.state_dict(), "gen": self.gen.get_state(),
                "epoch": self.epoch}

    def restore(self, state: dict) -> None:
        with torch.no_grad():
            self.mean.copy_(state["mean"])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])
        self.epoch = state["epoch"]

    def final_state(self) -> dict:
        return {"mean": self.mean.detach().clone()}

    def summary(self) -> dict:
        return {"kept": "last epoch", "train_images": len(self.x)}


class ToyFitScorer(Scorer):
    names = ("D_fit",)

    def __init__(self, mean: np.ndarray):
        self.mean = mean

    def score(self, images01, *, batch_size=64, label=None) -> ScoredImages:
        d = (np.asarray(images01, np.float32) - self.mean[None]) ** 2
        return ScoredImages({"D_fit": d}, {"D_fit": image_score(d)})


class ToyFitMethod(SingleModelMethod):
    name = "toyfit"
    title = "toy fitted mean image"
    specs = (ScoreSpec("D_fit", "(x - fitted mean image)^2", priority=0),)
    overlay_maps = ("D_fit",)
    config_cls = ToyFitConfig
    table = "toyfit"

    def epochs(self, cfg):
        return cfg.epochs

    def make_trainer(self, ctx):
        return ToyFitTrainer(load_split(ctx.prepared, "normal").images, ctx.cfg)

    def make_scorer(self, state, run, device):
        return ToyFitScorer(state["mean"].numpy())
