"""SimSID's objectives (official main.py, ``gan_train``), with the weights of SimSIDConfig.

Generator: recon_weight * MSE(student, x) + teacher_weight * MSE(teacher, x) + dist_weight *
dist_loss + gen_weight * BCE(D(student), 1). Discriminator: disc_weight * [BCE(D(x), 1) +
BCE(D(student.detach()), 0)]. All MSEs are means over pixels and batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cxrad.methods.simsid.config import SimSIDConfig


def bce_logits(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def generator_loss(out: dict[str, torch.Tensor], x: torch.Tensor, fake_logits: torch.Tensor,
                   cfg: SimSIDConfig) -> dict[str, torch.Tensor]:
    """out: the Generator's dict; x (B, 1, S, S) in [-1, 1]; fake_logits: D(out["recon"]) (B, 1)
    -> the weighted parts and their sum "total" (scalars)."""
    parts = {
        "recon": cfg.recon_weight * F.mse_loss(out["recon"], x),
        "teacher": cfg.teacher_weight * F.mse_loss(out["teacher_recon"], x),
        "dist": cfg.dist_weight * out["dist_loss"],
        "gen": cfg.gen_weight * bce_logits(fake_logits, 1.0),
    }
    parts["total"] = parts["recon"] + parts["teacher"] + parts["dist"] + parts["gen"]
    return parts


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, cfg: SimSIDConfig) -> torch.Tensor:
    """real_logits = D(x), fake_logits = D(recon.detach()), each (B, 1) -> weighted BCE (scalar)."""
    return cfg.disc_weight * (bce_logits(real_logits, 1.0) + bce_logits(fake_logits, 0.0))
