"""SimSID behind the method interface: `cxrad fit --method simsid`, then score/evaluate/predict.

Scores, in report order: ``SimSID`` — the official anomaly score, the discriminator's verdict on
the student's reconstruction, (mu - D(recon)) / sigma with mu, sigma the statistics of D(recon)
over the training images (the paper's 1 - sigmoid((D - mu) / sigma) is a monotone function of
it, so AUC and AP are the same); it decides. ``SimSID_rec`` — the mean squared reconstruction
error. Both maps are the squared reconstruction error (x - recon)^2 in [0, 1] units, for overlays.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from cxrad import progress
from cxrad.errors import CxradError
from cxrad.methods.base import Scorer
from cxrad.methods.fitting import FitContext, SingleModelMethod
from cxrad.methods.simsid.config import SimSIDConfig
from cxrad.scores import ScoredImages, ScoreSpec, image_score

SPECS = (
    ScoreSpec("SimSID", "discriminator score of the reconstruction, (mu - D(recon)) / sigma over training images",
              priority=0),
    ScoreSpec("SimSID_rec", "mean squared reconstruction error (x - recon)^2", priority=1),
)


class SimSIDScorer(Scorer):
    """The kept generator and discriminator with the training statistics of D(recon)."""

    names = tuple(s.name for s in SPECS)

    def __init__(self, state: dict[str, Any], device: torch.device):
        from cxrad.methods.simsid.trainer import build_networks, config_from_state

        self.cfg = config_from_state(state)
        gen, disc = build_networks(self.cfg)
        gen.load_state_dict(state["generator"])
        disc.load_state_dict(state["discriminator"])
        self.gen, self.disc = gen.to(device).eval(), disc.to(device).eval()
        self.mean, self.std = float(state["d_mean"]), float(state["d_std"])
        self.device = device

    @torch.no_grad()
    def score(self, images01: np.ndarray, *, batch_size: int = 64, label: Optional[str] = None) -> ScoredImages:
        from cxrad.methods.simsid.trainer import reconstruct

        if np.ndim(images01) == 3 and len(images01) and images01.shape[1:] != (self.cfg.size, self.cfg.size):
            raise CxradError(f"SimSID model takes {self.cfg.size} px images, got {images01.shape[1]} x "
                             f"{images01.shape[2]}; prepare the images at the run's size.")
        parts: list[ScoredImages] = []
        # the stage's batch (256 by default) is capped: the full-resolution decoder levels hold
        # ~20 MB of activations per 128-px image
        step = max(1, min(batch_size, self.cfg.score_batch_size))
        with progress.task(label or "scoring", len(images01), quiet=label is None) as bar:
            for s in range(0, len(images01), step):
                x = torch.as_tensor(np.asarray(images01[s:s + step], np.float32), device=self.device)
                recon, logit = reconstruct(self.gen, self.disc, x, self.cfg)
                err = ((x - recon) ** 2).float().cpu().numpy()
                score = ((self.mean - logit) / (self.std + 1e-8)).float().cpu().numpy()
                parts.append(ScoredImages({"SimSID": err, "SimSID_rec": err},
                                          {"SimSID": score, "SimSID_rec": image_score(err)}))
                bar.advance(len(x))
        return ScoredImages.concatenate(parts) if parts else ScoredImages.empty(self.names, images01)


class SimSIDMethod(SingleModelMethod):
    name = "simsid"
    title = "SimSID (space-aware memory, feature in-painting, discriminator score)"
    specs = SPECS
    overlay_maps = ("SimSID",)
    config_cls = SimSIDConfig
    table = "simsid"

    def epochs(self, cfg: SimSIDConfig) -> int:
        return cfg.epochs

    def make_trainer(self, ctx: FitContext):
        from cxrad.io.store import load_split
        from cxrad.methods.simsid.trainer import SimSIDTrainer

        cfg: SimSIDConfig = ctx.cfg
        normal = load_split(ctx.prepared, "normal").images
        if len(normal) == 0:
            raise CxradError(f"{ctx.prepared}: the normal split is empty; SimSID trains on normal images only "
                             "(prepare with normal images, e.g. a labels CSV naming the normal split).")
        side = normal.shape[1]
        if normal.shape[1:] != (cfg.size, cfg.size):
            other = f" or train at its size with --set size={side}" if _size_ok(cfg, side) else ""
            raise CxradError(f"{ctx.prepared}: images are {side} px but SimSID's size is {cfg.size}; prepare at "
                             f"that size (`cxrad prepare SOURCE --out DIR --size {cfg.size}`){other}.")
        return SimSIDTrainer(normal, cfg, ctx.device)

    def make_scorer(self, state: dict[str, Any], run, device: torch.device) -> Scorer:
        return SimSIDScorer(state, device)


def _size_ok(cfg: SimSIDConfig, size: int) -> bool:
    import dataclasses

    try:
        dataclasses.replace(cfg, size=size).validate()
        return True
    except CxradError:
        return False


SIMSID = SimSIDMethod()
