"""ASR-Net's training and application pieces: input statistics, synthetic batches, load, apply.

What `refine` trains on and what the scorer applies: both go through :func:`asr_probability`, so a
refined map is computed the same way during evaluation and prediction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from cxrad.artifacts import load_torch
from cxrad.layout import ASR_MODEL
from cxrad.methods.ddad.asr_net import INPUT_CHANNELS, ASRNet, anomaly_probability, asr_inputs, scale_inputs
from cxrad.methods.ddad.ensembles import RunEnsembles
from cxrad.methods.ddad.fpi import apply_recipes

NORMALIZATIONS = ("normal-mean", "normal-pixel-mean", "none")


@torch.no_grad()
def channel_stats(ens: RunEnsembles, pool: torch.Tensor, inputs: str, quantile: float = 0.0,
                  batch_size: int = 256) -> tuple[np.ndarray, list[float] | None]:
    """Statistics of each input map over the (clean) normal training images.

    Returns (pixel_means (C, H, W) float64 — the mean map per channel, clips — the ``quantile`` of
    each channel over all pixels, or None when quantile is 0).
    """
    names = INPUT_CHANNELS[inputs]
    sums: dict[str, torch.Tensor] = {}
    vals: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for i in range(0, len(pool), batch_size):
        m = ens.maps(pool[i:i + batch_size])
        for n in names:
            part = m[n].double().sum(0).cpu()
            sums[n] = sums[n] + part if n in sums else part
            if quantile > 0:
                vals[n].append(m[n].float().flatten().cpu())
    pixel_means = np.stack([(sums[n] / len(pool)).numpy() for n in names])
    clips = [float(np.quantile(torch.cat(vals[n]).numpy(), quantile)) for n in names] if quantile > 0 else None
    return pixel_means, clips


def input_scales(pixel_means: np.ndarray, normalize: str) -> list | None:
    """What ASR inputs are divided by, from the normal images' mean maps (C, H, W).

    ``normal-mean``: one number per channel (nested list (C,)). ``normal-pixel-mean``: the mean map
    itself (nested list (C, H, W)), so a value is read relative to what normal images show *at that
    pixel* — borders and anatomy, where clean normals already have the largest discrepancies, stop
    looking extreme, and the net cannot learn "extreme = normal" from them. Each pixel's mean is
    floored at 10 % of its channel's mean so near-zero corners do not blow up. ``none``: None.
    """
    channel = np.maximum(pixel_means.reshape(len(pixel_means), -1).mean(1), 1e-12)
    if normalize == "normal-mean":
        return [float(c) for c in channel]
    if normalize == "normal-pixel-mean":
        return np.maximum(pixel_means, 0.1 * channel[:, None, None]).astype(np.float32).tolist()
    return None


def top_donors(donor_maps: torch.Tensor, fraction: float) -> torch.Tensor:
    """Donor index map that draws only from the ``fraction`` of donors with the highest maps.

    ``donor_maps``: (M, C, H, W). Each channel is divided by its mean over all donors so channels
    count alike; a donor's rank is its mean over channels and pixels. Returns (M,) int64 indices
    into ``donor_maps``: entry j is the (j mod k)-th of the k = ceil(fraction·M) kept donors in index
    order, so recipes that name donor j keep working and the kept donors are drawn evenly.
    """
    m = len(donor_maps)
    k = max(1, int(np.ceil(fraction * m)))
    per_channel = donor_maps.double().mean(dim=(2, 3))                  # (M, C)
    rank = (per_channel / per_channel.mean(0).clamp_min(1e-12)).mean(1)  # (M,)
    kept = torch.sort(torch.topk(rank, k).indices).values
    return kept[torch.arange(m, device=kept.device) % k]


def level_gains(n: int, channels: int, jitter: tuple[float, float], seed: int, epoch: int) -> np.ndarray:
    """(n, channels) gains, log-uniform in [lo, hi], drawn from (seed, epoch) so resume repeats them."""
    lo, hi = float(jitter[0]), float(jitter[1])
    rng = np.random.default_rng([seed, epoch, 7919])
    return np.exp(rng.uniform(np.log(lo), np.log(hi), size=(n, channels))).astype(np.float32)


@torch.no_grad()
def stacked_maps(ens: RunEnsembles, images: torch.Tensor, inputs: str, batch_size: int = 256) -> torch.Tensor:
    """Raw ASR input maps of ``images`` (N, H, W) in network space -> (N, C, H, W) float32."""
    names = INPUT_CHANNELS[inputs]
    out = []
    for i in range(0, len(images), batch_size):
        m = ens.maps(images[i:i + batch_size])
        out.append(torch.stack([m[n].float() for n in names], dim=1))
    return torch.cat(out) if out else images.new_zeros((0, len(names)) + tuple(images.shape[1:]))


def synthetic_batches(ens: RunEnsembles, pool: torch.Tensor, recipes, batch_size: int, inputs: str,
                      scales, gains: Optional[np.ndarray] = None, clip: Optional[list[float]] = None,
                      map_pools: Optional[tuple[torch.Tensor, torch.Tensor]] = None):
    """Yield (ASR input (B, C, H, W), mask (B, H, W)) for one epoch of recipes, in order.

    Image space (``map_pools`` None): blend images of ``pool``, then run the ensembles on them.
    Map space: ``map_pools`` = (source maps (N, C, H, W) of ``pool``, donor maps (M, C, H, W)),
    blended directly. ``gains`` (n, C): optional per-sample, per-channel factors (level jitter).
    """
    for i in range(0, len(recipes), batch_size):
        r = recipes.slice(slice(i, i + batch_size))
        if map_pools is None:
            xs, mask = apply_recipes(pool, r)
            x = asr_inputs(ens.maps(xs), inputs, scales, clip)
        else:
            raw, mask = apply_recipes(map_pools[0], r, map_pools[1])
            x = scale_inputs(raw, scales, clip)
        if gains is not None:
            x = x * torch.as_tensor(gains[i:i + batch_size], device=x.device)[:, :, None, None]
        yield x, mask


def load_asr(folder: str | Path, device: torch.device | str = "cpu", sha256: str | None = None) -> dict[str, Any]:
    """Load ``asr.pt`` of a finished refine folder (the caller checked its manifest, e.g. with
    RunInfo.has_artifact) -> {"net" (eval mode), "inputs", "scales", ...}. ``sha256``: the digest its
    manifest records; a file that differs, or cannot be read, is one line naming it."""
    folder = Path(folder)
    blob = load_torch(folder / ASR_MODEL, map_location=device, sha256=sha256,
                      fix=f"retrain it with `cxrad refine {folder.parent.parent} --inputs {folder.name} --force`.")
    net = ASRNet(len(INPUT_CHANNELS[blob["inputs"]]), int(blob["hidden"])).to(device)
    net.load_state_dict(blob["state_dict"])
    net.eval()
    return {**blob, "net": net}


@torch.no_grad()
def asr_probability(asr: dict[str, Any], maps: dict[str, torch.Tensor]) -> torch.Tensor:
    """Apply a loaded ASR-Net to live maps (name -> (B, H, W) tensors) -> probability (B, H, W)."""
    x = asr_inputs(maps, asr["inputs"], asr["scales"], asr.get("clip"))
    return anomaly_probability(asr["net"](x))


@torch.no_grad()
def refined_maps(asr: dict[str, Any], maps: dict[str, np.ndarray], device: torch.device | str = "cpu",
                 batch_size: int = 64) -> np.ndarray:
    """Apply a loaded ASR-Net to stored maps (name -> (N, H, W)) -> anomaly probability (N, H, W)."""
    names = INPUT_CHANNELS[asr["inputs"]]
    n = len(maps[names[0]])
    out = []
    for i in range(0, n, batch_size):
        batch = {k: torch.as_tensor(maps[k][i:i + batch_size], device=device) for k in names}
        out.append(asr_probability(asr, batch).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,) + maps[names[0]].shape[1:], np.float32)
