"""PatchCore behind the single-model method interface (cxrad/methods/fitting.py).

Fitting (one "epoch"): patch features (cxrad.features.extractor) of every Dn image -> greedy
k-center coreset of ``coreset_ratio`` of them = the memory bank. Dn only: neither Du nor any label
is read. RUN/model/model.pt keeps the memory bank and the backbone trunk's own weights, so scoring
needs no weights file (only the architecture package of the ``features`` extra).

Scoring, per image: each patch feature's distance to its nearest bank feature (k = ``knn``), on
the stride-8 grid (28×28 at 224 px). Score "patchcore": the largest patch distance, taken before
upsampling and smoothing, as the official code does (PatchMaker.score on the raw patch scores; the
paper's reweighting by the bank neighbourhood, eq. 7, is not in the official code and not here).
Score "patchcore_mean": the mean patch distance — on the ZhangLab dev split (never the test
split) it separated normal from pneumonia images better than the maximum (AUC 96.5 against 90.3,
benchmarks/patchcore_dev_study.py); "patchcore" stays the deciding score, as in the paper. Map
(both scores): the patch distances upsampled bilinearly to the prepared image size and smoothed
with a Gaussian (``smoothing_sigma`` pixels at the input size, scaled to the map).
"""

from __future__ import annotations

import time
from typing import Any, Optional

import numpy as np
import torch

from cxrad import progress
from cxrad.errors import CxradError
from cxrad.methods.base import Scorer
from cxrad.methods.fitting import FitContext, SingleModelMethod
from cxrad.methods.patchcore.config import PatchCoreConfig
from cxrad.scores import ScoredImages, ScoreSpec

STATE_FORMAT = "cxrad-patchcore-1"
FORWARD_PIXELS = 32 * 224 * 224   # input pixels per scoring forward pass (bounds activation memory)
SCORE = "patchcore"
SCORE_MEAN = "patchcore_mean"
SPECS = (ScoreSpec(SCORE, "largest patch distance to the nearest normal (memory-bank) patch feature; map: "
                          "patch distances, upsampled and smoothed", priority=0),
         ScoreSpec(SCORE_MEAN, "mean patch distance to the nearest normal patch feature (same map); chosen on "
                               "the dev split, docs/patchcore.md", priority=1))


class PatchCoreTrainer:
    """Builds the memory bank in one pass (:meth:`run_epoch`)."""

    def __init__(self, ctx: FitContext):
        from cxrad.features.backbones import load_backbone
        from cxrad.features.extractor import PatchFeatureExtractor
        from cxrad.io.store import load_split

        self.cfg: PatchCoreConfig = ctx.cfg
        self.device = ctx.device
        self.images = load_split(ctx.prepared, "normal").images
        if len(self.images) == 0:
            raise CxradError(f"{ctx.prepared}: the normal split (Dn) is empty; PatchCore builds its memory bank "
                             "from normal training images — prepare data with some.")
        self.backbone = load_backbone(self.cfg.backbone, self.cfg.weights or None)
        self.extractor = PatchFeatureExtractor(self.backbone.trunk.to(self.device), input_size=self.cfg.input_size,
                                               feature_dim=self.cfg.feature_dim)
        self.epoch = 0
        self.bank: Optional[torch.Tensor] = None
        self.info: dict[str, Any] = {}

    def run_epoch(self) -> list[float]:
        from cxrad.methods.patchcore.coreset import greedy_coreset

        cfg, n = self.cfg, len(self.images)
        t0 = time.perf_counter()
        with progress.task("patchcore features (Dn)", n) as bar:
            feats = self.extractor.extract(self.images, batch_size=cfg.batch_size, device=self.device,
                                           on_batch=bar.advance)
        flat = feats.reshape(-1, feats.shape[-1])
        t1 = time.perf_counter()
        count = max(1, int(len(flat) * cfg.coreset_ratio))   # the official int(N · percentage)
        core = greedy_coreset(flat.to(self.device), count, projection_dim=cfg.projection_dim, seed=cfg.seed)
        self.bank = flat[core.indices.cpu()].clone()
        t2 = time.perf_counter()
        self.info = {"train_images": n, "train_patches": len(flat), "memory_bank": len(self.bank),
                     "covering_radius": core.radius, "extract_s": round(t1 - t0, 3), "coreset_s": round(t2 - t1, 3)}
        self.epoch = 1
        return [core.radius]

    def final_state(self) -> dict[str, Any]:
        if self.bank is None:
            raise RuntimeError("final_state() before the memory bank was built")
        from cxrad.features.extractor import extractor_state

        cfg = self.cfg
        return {"format": STATE_FORMAT, **extractor_state(self.backbone, cfg.input_size, cfg.feature_dim),
                "knn": cfg.knn, "smoothing_sigma": cfg.smoothing_sigma, "memory_bank": self.bank.contiguous()}

    def checkpoint(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "info": dict(self.info),
                **({"bank": self.bank} if self.bank is not None else {})}

    def restore(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.bank = state.get("bank")
        self.info = dict(state.get("info", {}))

    def summary(self) -> dict[str, Any]:
        return {"kept": "greedy coreset of the Dn patch features", **self.info, **self.backbone.record(),
                "feature_dim": self.cfg.feature_dim, "input_size": self.cfg.input_size}


class PatchCoreScorer(Scorer):
    """A memory bank and its frozen backbone: images -> patch-distance maps, max and mean scores."""

    names = (SCORE, SCORE_MEAN)

    def __init__(self, state: dict[str, Any], device: torch.device, source: str = "model.pt"):
        from cxrad.features.extractor import extractor_from_state

        if state.get("format") != STATE_FORMAT:
            raise CxradError(f"{source}: not a PatchCore model of this cxrad (format {state.get('format')!r}); "
                             "retrain it with `cxrad fit ... --method patchcore --force`.")
        self.extractor = extractor_from_state(state, device)
        self.bank = state["memory_bank"].to(device=device, dtype=torch.float32)
        self.knn, self.sigma = int(state["knn"]), float(state["smoothing_sigma"])
        self.input_size, self.device = int(state["input_size"]), device

    @torch.no_grad()
    def score_tensor(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, H, W) in [0, 1] on the device -> maps (B, H, W), raw patch distances (B, h, w)."""
        from cxrad.methods.patchcore.anomaly_maps import patch_maps, sigma_at
        from cxrad.methods.patchcore.knn import knn_distance

        feats = self.extractor(images)                                  # (B, P, D)
        b, p, d = feats.shape
        gh, gw = self.extractor.grid()
        dist = knn_distance(feats.reshape(-1, d), self.bank, k=min(self.knn, len(self.bank))).reshape(b, gh, gw)
        h, w = images.shape[-2:]
        return patch_maps(dist, (h, w), sigma_at(h, self.input_size, self.sigma)), dist

    def score(self, images01: np.ndarray, *, batch_size: int = 64, label: Optional[str] = None) -> ScoredImages:
        """``batch_size`` is an upper bound: the backbone's activations take about 20 MB per image at
        224 px, so a forward pass holds at most ``FORWARD_PIXELS`` input pixels (32 images at 224 px;
        `cxrad score`'s default batch of 256 would otherwise need over 5 GB)."""
        batch_size = max(1, min(batch_size, FORWARD_PIXELS // (self.input_size * self.input_size)))
        n = len(images01)
        h, w = np.shape(images01)[1:] if np.ndim(images01) == 3 else (0, 0)
        maps = np.zeros((n, h, w), np.float32)
        top, mean = np.zeros(n, np.float32), np.zeros(n, np.float32)
        with progress.task(label or "scoring", n, quiet=label is None) as bar:
            for s in range(0, n, batch_size):
                x = torch.as_tensor(np.asarray(images01[s:s + batch_size], np.float32), device=self.device)
                m, dist = self.score_tensor(x)
                maps[s:s + len(x)] = m.cpu().numpy()
                top[s:s + len(x)] = dist.flatten(1).amax(1).cpu().numpy()
                mean[s:s + len(x)] = dist.flatten(1).mean(1).cpu().numpy()
                bar.advance(len(x))
        return ScoredImages({SCORE: maps, SCORE_MEAN: maps}, {SCORE: top, SCORE_MEAN: mean})

class PatchCoreMethod(SingleModelMethod):
    name = "patchcore"
    title = "PatchCore (coreset memory bank of ImageNet patch features)"
    specs = SPECS
    overlay_maps = (SCORE,)
    config_cls = PatchCoreConfig
    table = "patchcore"

    def epochs(self, cfg: PatchCoreConfig) -> int:
        return 1

    def make_trainer(self, ctx: FitContext) -> PatchCoreTrainer:
        return PatchCoreTrainer(ctx)

    def make_scorer(self, state: dict[str, Any], run, device: torch.device) -> PatchCoreScorer:
        return PatchCoreScorer(state, device, source=str(run.layout.model / "model.pt"))

    def default_run_suffix(self, tables: dict[str, Any]) -> str:
        return "patchcore"


PATCHCORE = PatchCoreMethod()
