"""Reconstruction losses of the three backbones, one value per ensemble member (docs/method.md, "Ensembles").

Every function takes the output dict of :meth:`BatchedEnsemble.forward_batches` and the member-wise
targets ``xk`` (B, K, s, s) in [-1, 1], and returns a (K,) tensor: member k's loss on its own batch.
Training sums them; since members share no weights, member k's gradient is that of its own loss.
"""

from __future__ import annotations

import torch


def mse(out: dict[str, torch.Tensor], xk: torch.Tensor) -> torch.Tensor:
    """AE: mean squared error per member -> (K,)."""
    return (out["recon"] - xk).pow(2).mean(dim=(0, 2, 3))


def heteroscedastic(out: dict[str, torch.Tensor], xk: torch.Tensor) -> torch.Tensor:
    """AE-U: mean(exp(-logvar)·(mean - x)²) + mean(logvar) per member -> (K,)."""
    logvar = out["logvar"]
    return (torch.exp(-logvar) * (out["recon"] - xk).pow(2)).mean(dim=(0, 2, 3)) + logvar.mean(dim=(0, 2, 3))


def memae(out: dict[str, torch.Tensor], xk: torch.Tensor, entropy_weight: float = 0.0002) -> torch.Tensor:
    """MemAE: MSE + entropy_weight · mean attention entropy per member -> (K,).

    ``out["attention"]`` is (K, B, items); entropy = -Σ a·log a over items.
    """
    att = out["attention"]
    entropy = -(att * torch.log(att + 1e-12)).sum(dim=-1).mean(dim=-1)
    return mse(out, xk) + entropy_weight * entropy


def for_backbone(backbone: str, entropy_weight: float = 0.0002):
    """The loss function ``(out, xk) -> (K,)`` of a backbone."""
    if backbone == "ae":
        return mse
    if backbone == "aeu":
        return heteroscedastic
    if backbone == "memae":
        return lambda out, xk: memae(out, xk, entropy_weight)
    raise ValueError(f"backbone {backbone!r}: use ae, memae or aeu")
