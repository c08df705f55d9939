"""WSCXR behind the single-model method interface (cxrad/methods/fitting.py).

Fitting: patch features of Dn and of the first K labelled abnormal images (the prepared
``anomaly`` set; never Du, never test), anomaly feature mining, then ``epochs`` passes of
discriminator training with linear mixing (:mod:`cxrad.methods.wscxr.trainer`); the last epoch is
kept. RUN/model/model.pt keeps the discriminator and the backbone trunk's own weights (as
PatchCore does), so scoring needs no weights file.

Scoring, per image: the discriminator's output for each patch feature on the stride-8 grid (28×28
at 224 px). Score "wscxr": the largest patch output (paper Sec. II-D; the code's PatchMaker.score),
taken before upsampling; it decides, as in the paper. Score "wscxr_mean": the mean patch output —
on the ZhangLab dev split (never the test split) it separated normal from pneumonia images better
than the maximum (benchmarks/wscxr_dev_study.py, docs/wscxr.md). Map (both scores): the patch
outputs upsampled bilinearly to the prepared image size and smoothed with a Gaussian
(``smoothing_sigma`` pixels at the input size; the code's RescaleSegmentor, sigma 4).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from cxrad import progress
from cxrad.errors import CxradError
from cxrad.methods.base import Scorer
from cxrad.methods.fitting import FitContext, SingleModelMethod
from cxrad.methods.wscxr.config import WSCXRConfig
from cxrad.methods.wscxr.discriminator import PatchDiscriminator
from cxrad.methods.wscxr.trainer import STATE_FORMAT, WSCXRTrainer
from cxrad.scores import ScoredImages, ScoreSpec

SCORE, SCORE_MEAN = "wscxr", "wscxr_mean"
FORWARD_BATCH = 32   # images per backbone pass while scoring (activation memory, not results)
SPECS = (ScoreSpec(SCORE, "largest patch output of the discriminator trained on normal and mined abnormal patch "
                          "features; map: patch outputs, upsampled and smoothed", priority=0),
         ScoreSpec(SCORE_MEAN, "mean patch output of the same discriminator (same map); better than the maximum on "
                               "the dev split, docs/wscxr.md", priority=1))


def _extractor_key(arch: str, weights_sha256: str, input_size: int, feature_dim: int) -> tuple:
    return (arch, weights_sha256, int(input_size), int(feature_dim))


def make_trainer(ctx: FitContext) -> WSCXRTrainer:
    """Load the backbone, build the training set (data.py), wrap it in the discriminator trainer."""
    from cxrad.features.backbones import load_backbone
    from cxrad.features.extractor import PatchFeatureExtractor, extractor_state
    from cxrad.methods.wscxr.data import training_set

    cfg: WSCXRConfig = ctx.cfg
    backbone = load_backbone(cfg.backbone, cfg.weights or None)
    extractor = PatchFeatureExtractor(backbone.trunk.to(ctx.device), input_size=cfg.input_size,
                                      feature_dim=cfg.feature_dim)
    key = _extractor_key(cfg.backbone, backbone.sha256 or "", cfg.input_size, cfg.feature_dim)
    data = training_set(ctx.prepared, cfg, extractor, key, ctx.device)
    keep = {**extractor_state(backbone, cfg.input_size, cfg.feature_dim), "smoothing_sigma": cfg.smoothing_sigma}
    info = {**data.info, **backbone.record(), "feature_dim": cfg.feature_dim, "input_size": cfg.input_size}
    return WSCXRTrainer(data.normal, data.prototypes, cfg, ctx.device, info=info, keep=keep)


class WSCXRScorer(Scorer):
    """A trained discriminator and its frozen backbone: images -> patch-output maps and max scores."""

    names = (SCORE, SCORE_MEAN)

    def __init__(self, state: dict[str, Any], device: torch.device, source: str = "model.pt"):
        from cxrad.features.extractor import extractor_from_state

        if state.get("format") != STATE_FORMAT:
            raise CxradError(f"{source}: not a WSCXR model of this cxrad (format {state.get('format')!r}); retrain it "
                             "with `cxrad fit ... --method wscxr --force`.")
        self.input_size, self.sigma = int(state["input_size"]), float(state["smoothing_sigma"])
        self.extractor = extractor_from_state(state, device)
        self.key = _extractor_key(state["backbone"], state["weights_sha256"], self.input_size, state["feature_dim"])
        self.model = PatchDiscriminator(int(state["dim"]), hidden=int(state["hidden"]),
                                        layers=int(state["hidden_layers"]))
        self.model.load_state_dict(state["discriminator"])
        self.model.to(device).eval()
        self.device = device

    @torch.no_grad()
    def score_features(self, feats: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (B, P, D) -> maps (B, H, W) at ``size``, raw patch outputs (B, h, w)."""
        from cxrad.methods.patchcore.anomaly_maps import patch_maps, sigma_at

        b, _, d = feats.shape
        gh, gw = self.extractor.grid()
        out = self.model(feats.to(self.device).reshape(-1, d)).reshape(b, gh, gw)
        return patch_maps(out, size, sigma_at(size[0], self.input_size, self.sigma)), out

    def score(self, images01: np.ndarray, *, batch_size: int = 64, label: Optional[str] = None) -> ScoredImages:
        from cxrad.methods.wscxr.features import extract

        n = len(images01)
        h, w = np.shape(images01)[1:] if np.ndim(images01) == 3 else (0, 0)
        maps = np.zeros((n, h, w), np.float32)
        top, mean = np.zeros(n, np.float32), np.zeros(n, np.float32)
        with progress.task(label or "scoring", n, quiet=label is None) as bar:
            for s in range(0, n, batch_size):
                x = np.asarray(images01[s:s + batch_size], np.float32)
                feats = extract(self.extractor, x, key=self.key, batch_size=FORWARD_BATCH, device=self.device)
                m, out = self.score_features(feats, (h, w))
                maps[s:s + len(x)] = m.cpu().numpy()
                top[s:s + len(x)] = out.flatten(1).amax(1).cpu().numpy()
                mean[s:s + len(x)] = out.flatten(1).mean(1).cpu().numpy()
                bar.advance(len(x))
        return ScoredImages({SCORE: maps, SCORE_MEAN: maps}, {SCORE: top, SCORE_MEAN: mean})


class WSCXRMethod(SingleModelMethod):
    name = "wscxr"
    title = "WSCXR (patch discriminator from normal images and K labelled abnormal images)"
    specs = SPECS
    overlay_maps = (SCORE,)
    config_cls = WSCXRConfig
    table = "wscxr"

    def training_sets(self, run) -> tuple[str, ...]:
        """Dn and the K labelled abnormal images; never Du."""
        return ("normal", "anomaly")

    def epochs(self, cfg: WSCXRConfig) -> int:
        return cfg.epochs

    def make_trainer(self, ctx: FitContext) -> WSCXRTrainer:
        return make_trainer(ctx)

    def make_scorer(self, state: dict[str, Any], run, device: torch.device) -> WSCXRScorer:
        return WSCXRScorer(state, device, source=str(run.layout.model / "model.pt"))

    def default_run_suffix(self, tables: dict[str, Any]) -> str:
        return "wscxr"


WSCXR = WSCXRMethod()
