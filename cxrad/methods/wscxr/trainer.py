"""Discriminator training on cached patch features (the epochs of `cxrad fit --method wscxr`).

The backbone is frozen and sees no augmentation, so every image's patch features are extracted
once (:mod:`cxrad.methods.wscxr.data`) and each epoch only trains the discriminator: the normal
images are shuffled, and each step takes ``batch_size`` of them — all their patch features as the
normal rows, one linearly mixed fake per row as the abnormal rows (official code: the same, with
the features recomputed by the backbone at every step).

Determinism: the discriminator's initial weights depend only on the seed (global RNG forked and
seeded while it is built); the image order and every mixing draw come from one CPU
``torch.Generator`` seeded with the seed. A checkpoint holds weights, Adam state, the generator
state, the epoch and a digest of the training features, so a resumed run repeats the
uninterrupted one bit for bit on the same device and thread count.
"""

from __future__ import annotations

import copy
import hashlib
import math
from typing import Any

import torch

from cxrad.errors import CxradError
from cxrad.methods.wscxr.config import WSCXRConfig
from cxrad.methods.wscxr.discriminator import PatchDiscriminator, hinge_terms
from cxrad.methods.wscxr.mixing import draw_mixing, mix

STATE_FORMAT = "cxrad-wscxr-1"


def tensor_digest(*tensors: torch.Tensor) -> str:
    """sha256 of the tensors' bytes (CPU, contiguous): ties a checkpoint to its training features."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()


def build_discriminator(dim: int, cfg: WSCXRConfig) -> PatchDiscriminator:
    """The discriminator of ``cfg``, its initial weights drawn from ``cfg.seed`` only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return PatchDiscriminator(dim, hidden=cfg.hidden, layers=cfg.hidden_layers)


class WSCXRTrainer:
    """Trains the patch discriminator; the ModelTrainer of cxrad/methods/fitting.py.

    ``normal`` (N, P, D): the P patch features of each of the N normal training images.
    ``prototypes`` (M, D): the mined abnormal patch features. ``info``: what the model manifest
    records about the data (counts); ``keep``: entries model.pt keeps besides the discriminator
    (the backbone trunk and extractor settings scoring needs). ``materialize_fakes``: build the
    mixed features even for the linear discriminator (the tests compare both ways).
    """

    def __init__(self, normal: torch.Tensor, prototypes: torch.Tensor, cfg: WSCXRConfig, device: torch.device,
                 info: dict[str, Any] | None = None, keep: dict[str, Any] | None = None,
                 materialize_fakes: bool = False):
        if normal.ndim != 3 or prototypes.ndim != 2 or normal.shape[2] != prototypes.shape[1]:
            raise ValueError(f"need normal (N, P, D) and prototypes (M, D); got {tuple(normal.shape)}, "
                             f"{tuple(prototypes.shape)}")
        self.cfg, self.device, self.info, self.keep = cfg, device, dict(info or {}), dict(keep or {})
        self.normal = normal.to(device)
        self.prototypes = prototypes.to(device)
        self.features_sha256 = tensor_digest(normal, prototypes)
        self.model = build_discriminator(normal.shape[2], cfg).to(device).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.epoch = 0
        # the shortcut of run_epoch holds for the bias-free linear discriminator only
        self.linear = cfg.hidden == 0 and not materialize_fakes

    def run_epoch(self) -> list[float]:
        """One pass over the normal images -> [mean loss, mean normal term, mean abnormal term]."""
        n, p, d = self.normal.shape
        b = self.cfg.batch_size
        order = torch.randperm(n, generator=self.generator)
        totals = torch.zeros(3, device=self.device)
        steps = math.ceil(n / b)   # the last batch may be short (the code's DataLoader keeps it)
        for j in range(steps):
            idx = order[j * b:(j + 1) * b].to(self.device)
            true = self.normal[idx].reshape(-1, d)                                  # (B*P, D)
            weight, pick = draw_mixing(len(true), len(self.prototypes), w_min=self.cfg.mix_min,
                                       generator=self.generator)
            weight, pick = weight.to(self.device), pick.to(self.device)
            if self.linear:
                # D is linear, so D((1 - w) n + w p) = (1 - w) D(n) + w D(p): the fakes' scores without
                # building the (B*P, D) fakes (4x faster steps on CPU; equal up to float rounding)
                true_scores = self.model(true)
                fake_scores = (1.0 - weight[:, 0]) * true_scores + weight[:, 0] * self.model(self.prototypes)[pick]
            else:
                fake = mix(true, self.prototypes, weight, pick)
                # one forward pass over both halves, as the code does (it matters for the MLP's BatchNorm)
                scores = self.model(torch.cat([true, fake]))
                true_scores, fake_scores = scores[:len(true)], scores[len(true):]
            normal_term, abnormal_term = hinge_terms(true_scores, fake_scores, self.cfg.margin)
            loss = normal_term + abnormal_term
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            totals += torch.stack([loss.detach(), normal_term.detach(), abnormal_term.detach()])
        self.epoch += 1
        return (totals / steps).tolist()

    # -- resume ---------------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        # a copy: state_dict() tensors are the live parameters and Adam moments
        return copy.deepcopy({"format": STATE_FORMAT, "epoch": self.epoch, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                "features_sha256": self.features_sha256})

    def restore(self, state: dict[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT:
            raise CxradError(f"not a WSCXR checkpoint of this cxrad (format {state.get('format')!r}); start over "
                             "with --force.")
        if state.get("features_sha256") != self.features_sha256:
            raise CxradError("the WSCXR checkpoint was trained on other patch features (prepared data, backbone or "
                             "weights changed); start over with --force.")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.epoch = int(state["epoch"])

    # -- what is kept -------------------------------------------------------------------------------
    def final_state(self) -> dict[str, Any]:
        return {**self.keep, "format": STATE_FORMAT,
                "discriminator": {k: v.detach().to("cpu") for k, v in self.model.state_dict().items()},
                "dim": int(self.normal.shape[2]), "hidden": self.cfg.hidden, "hidden_layers": self.cfg.hidden_layers,
                "epochs": self.epoch}

    def summary(self) -> dict[str, Any]:
        return {"kept": "last epoch", "prototypes": int(len(self.prototypes)), **self.info}
