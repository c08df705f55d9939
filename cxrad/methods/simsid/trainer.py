"""SimSID's adversarial training loop (official main.py ``gan_train``), one epoch at a time.

Every batch: the generator's forward pass, then a discriminator step on D(x) vs D(recon.detach());
on every ``critic_steps``-th batch (i % critic_steps == 0, as the code) also a generator step whose
adversarial term uses the just-updated discriminator, after which the in-painting queue enqueues
that batch's features. On discriminator-only batches the generator's forward runs without autograd
and without the teacher decoder (the official code runs both and drops the graph; the student's
reconstruction and BN statistics are the same, and the teacher's running BN statistics, which
only it updates there, are never used: the teacher does not score). The
generator's cosine schedule steps once per epoch; the discriminator's learning rate is constant.

Determinism: initial weights come from the seed alone (global RNG forked while building); the
batch order and every augmentation draw from one CPU ``torch.Generator`` seeded with the seed.
A checkpoint holds both networks (the queue and its pointer are buffers), both optimisers, the
scheduler, the generator state and the epoch, so a resumed run repeats the uninterrupted one bit
for bit on the same device and thread count.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cxrad.config import to_jsonable
from cxrad.methods.simsid.config import SimSIDConfig
from cxrad.methods.simsid.losses import discriminator_loss, generator_loss
from cxrad.methods.simsid.model import Discriminator, Generator

STATE_FORMAT = 1
LOSS_NAMES = ("generator", "discriminator", "recon", "teacher", "dist", "gen")


def random_affine(x: torch.Tensor, generator: torch.Generator, translate: float,
                  scale_range: tuple[float, float]) -> torch.Tensor:
    """torchvision's RandomAffine(0, translate=(t, t), scale=scale_range) on a batch (B, 1, H, W)
    in [0, 1]: per image a scale s ~ U(scale_range) about the centre and a shift of round(U(-tW, tW))
    whole pixels (likewise for H), nearest-neighbour, zero fill; one affine_grid/grid_sample call.
    The draws come from ``generator`` (CPU) so they do not depend on the device."""
    b, _, h, w = x.shape
    scale = torch.empty(b).uniform_(scale_range[0], scale_range[1], generator=generator)
    shift = torch.empty(b, 2).uniform_(-1.0, 1.0, generator=generator)
    shift = torch.round(shift * torch.tensor([translate * w, translate * h]))
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scale
    # output pixel u reads input (u - t) / s, in normalised coordinates t = 2 * shift / side
    theta[:, 0, 2] = -2.0 * shift[:, 0] / w / scale
    theta[:, 1, 2] = -2.0 * shift[:, 1] / h / scale
    theta = theta.to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def build_networks(cfg: SimSIDConfig) -> tuple[Generator, Discriminator]:
    """Both networks, their initial weights (and the queue's initial items) from ``cfg.seed`` only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return Generator(cfg), Discriminator(cfg.size)


class SimSIDTrainer:
    """The ModelTrainer of cxrad/methods/fitting.py. ``images`` (N, S, S) float32 in [0, 1]: the
    normal training images (Dn only; nothing labelled is ever seen)."""

    def __init__(self, images: np.ndarray, cfg: SimSIDConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        self.data = torch.as_tensor(np.asarray(images, np.float32))[:, None].to(device)   # (N, 1, S, S)
        self.gen, self.disc = (m.to(device) for m in build_networks(cfg))
        self.opt_g = torch.optim.Adam(self.gen.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.adam_eps,
                                      weight_decay=cfg.weight_decay)
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=cfg.disc_lr, betas=tuple(cfg.betas))
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt_g, T_max=cfg.cosine_period,
                                                                eta_min=cfg.lr_min)
        self.rng = torch.Generator().manual_seed(cfg.seed)
        self.epoch = 0
        self._stats: tuple[float, float] | None = None

    def run_epoch(self) -> list[float]:
        """One pass over the shuffled images (the last batch may be short, as the official
        DataLoader) -> mean losses in LOSS_NAMES order (generator parts over generator steps)."""
        cfg = self.cfg
        self.gen.train()
        self.disc.train()
        n = len(self.data)
        order = torch.randperm(n, generator=self.rng)
        d_sum = torch.zeros((), device=self.device)
        g_sum = torch.zeros(5, device=self.device)
        steps, g_steps = math.ceil(n / cfg.batch_size), 0
        for i in range(steps):
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size].to(self.device)
            x = random_affine(self.data[idx], self.rng, cfg.translate, cfg.scale_range) * 2.0 - 1.0
            g_step = i % cfg.critic_steps == 0
            with torch.set_grad_enabled(g_step):
                out = self.gen(x, teacher=g_step)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss = discriminator_loss(self.disc(x), self.disc(out["recon"].detach()), cfg)
            d_loss.backward()
            self.opt_d.step()
            d_sum += d_loss.detach()
            if g_step:
                parts = generator_loss(out, x, self.disc(out["recon"]), cfg)
                self.opt_g.zero_grad(set_to_none=True)
                parts["total"].backward()
                self.opt_g.step()
                self.gen.inpaint.commit()
                g_sum += torch.stack([parts[k].detach() for k in ("total", "recon", "teacher", "dist", "gen")])
                g_steps += 1
            self.gen.inpaint.pending = None
        self.sched.step()
        self.epoch += 1
        self._stats = None
        g_mean = (g_sum / max(g_steps, 1)).tolist()
        return [g_mean[0], float(d_sum) / steps, *g_mean[1:]]

    # -- resume ---------------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "epoch": self.epoch,
                "generator": self.gen.state_dict(), "discriminator": self.disc.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "sched": self.sched.state_dict(), "rng": self.rng.get_state()}

    def restore(self, state: dict[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"SimSID checkpoint format {state.get('format')}, expected {STATE_FORMAT}")
        self.gen.load_state_dict(state["generator"])
        self.disc.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.sched.load_state_dict(state["sched"])
        self.rng.set_state(state["rng"])
        self.epoch = int(state["epoch"])
        self._stats = None

    # -- what is kept -----------------------------------------------------------------------------
    def score_statistics(self) -> tuple[float, float]:
        """Mean and standard deviation (population, as numpy's) of D(recon) over all training
        images, without augmentation, networks in scoring mode (paper: "all training samples";
        the official alert.py uses the first 201)."""
        if self._stats is None:
            logits = discriminator_logits(self.gen, self.disc, self.data[:, 0], self.cfg, self.cfg.score_batch_size)
            self._stats = (float(logits.mean()), float(logits.std(unbiased=False)))
        return self._stats

    def final_state(self) -> dict[str, Any]:
        mean, std = self.score_statistics()
        return {"format": STATE_FORMAT, "config": to_jsonable(self.cfg), "epoch": self.epoch,
                "generator": self.gen.state_dict(), "discriminator": self.disc.state_dict(),
                "d_mean": mean, "d_std": std}

    def summary(self) -> dict[str, Any]:
        mean, std = self.score_statistics()
        return {"kept": "last epoch", "train_images": len(self.data), "loss_names": list(LOSS_NAMES),
                "d_mean": mean, "d_std": std}


@torch.no_grad()
def reconstruct(gen: Generator, disc: Discriminator, x01: torch.Tensor, cfg: SimSIDConfig
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """x01 (B, S, S) in [0, 1] -> (reconstruction (B, S, S) in [0, 1], D logit (B,)), both networks
    in scoring mode (eval; the discriminator's BN per image when cfg.score_norm == "image")."""
    was = gen.training, disc.training
    gen.eval()
    disc.eval()
    try:
        recon = gen(x01[:, None] * 2.0 - 1.0, teacher=False)["recon"]
        logit = disc(recon, per_image_norm=cfg.score_norm == "image")[:, 0]
    finally:
        gen.train(was[0])
        disc.train(was[1])
    return (recon[:, 0] + 1.0) / 2.0, logit


def discriminator_logits(gen: Generator, disc: Discriminator, x01: torch.Tensor, cfg: SimSIDConfig,
                         batch_size: int) -> torch.Tensor:
    """D(recon) (N,) of images x01 (N, S, S), in batches."""
    parts = [reconstruct(gen, disc, x01[s:s + batch_size], cfg)[1] for s in range(0, len(x01), batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0, device=x01.device)


def config_from_state(state: dict[str, Any]) -> SimSIDConfig:
    """The SimSIDConfig recorded in a final state (lists back to tuples, validated)."""
    names = {f.name for f in dataclasses.fields(SimSIDConfig)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in state["config"].items() if k in names}
    return SimSIDConfig(**values).validate()
