"""Single-member reconstruction networks of DDAD: AE, MemAE and AE-U (docs/method.md, "Ensembles").

These plain modules define the architecture, the initialisation and the on-disk weight format
(``member-<i>.pt`` holds one of their state dicts). Training and scoring run the K members of a
module together through :mod:`cxrad.methods.ddad.ensemble`, whose layers mirror the module names here so
state dicts stack and unstack key by key.

Shapes (s = image side, a multiple of 2^d for d stride-2 stages, d = 4 by default; images scaled to
[-1, 1]; b = s / 2^d, the bottleneck side):
    x (B, 1, s, s) -> d × Conv+BN+ReLU (B, 64, b, b) -> flatten (B, 64·b²)
    -> Linear 2048 -> BN1d -> ReLU -> Linear latent (B, 16)
    -> [MemAE: memory read] -> Linear 2048 -> BN1d -> ReLU -> Linear 64·b²
    -> reshape (B, 64, b, b) -> (d − 1) × ConvT+BN+ReLU -> ConvT -> (B, out, s, s)
with out = 1 (AE, MemAE) or 2 (AE-U: mean, logvar). Encoder channels 16, 32, 64, 64, then 64 for
every further stage; the decoder mirrors them. The reference is d = 4 at 64 px (b = 4); at 128 px,
d = 5 keeps the same 4 × 4 × 64 bottleneck (d = 4 would feed an 8 × 8 map, four times as many
values, into the first linear layer).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cxrad.methods.ddad.config import DEPTHS, REFERENCE_DEPTH

BACKBONES = ("ae", "memae", "aeu")
DEPTH = REFERENCE_DEPTH
BOTTLENECK_CHANNELS = 64
HIDDEN = 2048


def enc_channels(depth: int = DEPTH) -> tuple[int, ...]:
    """Channels from the input to the bottleneck: (1, 16, 32, 64, 64) at depth 4, one more 64 per stage."""
    return (1,) + tuple(min(BOTTLENECK_CHANNELS, 16 * 2**i) for i in range(depth))


def dec_channels(depth: int = DEPTH) -> tuple[int, ...]:
    """Channels of the decoder's ConvT+BN+ReLU stages, the encoder's mirrored: (64, 64, 32, 16) at depth 4."""
    return tuple(reversed(enc_channels(depth)[1:]))


def check_size(size: int, depth: int = DEPTH) -> None:
    """``depth`` stride-2 stages need a side divisible by 2^depth."""
    if depth not in DEPTHS:
        raise ValueError(f"depth {depth}: cxrad builds {DEPTHS.start} to {DEPTHS.stop - 1} stride-2 stages")
    if size < 2**depth or size % 2**depth:
        raise ValueError(f"image size {size}: must be a positive multiple of {2**depth} ({depth} stride-2 stages)")


def bottleneck_side(size: int, depth: int = DEPTH) -> int:
    check_size(size, depth)
    return size // 2**depth


def _encoder(depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    ch = enc_channels(depth)
    for cin, cout in zip(ch[:-1], ch[1:]):
        layers += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def _decoder(out_channels: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    ch = dec_channels(depth)
    for cin, cout in zip(ch[:-1], ch[1:]):
        layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    layers.append(nn.ConvTranspose2d(ch[-1], out_channels, 4, 2, 1, bias=False))
    return nn.Sequential(*layers)


class AE(nn.Module):
    """Reference AE; ``forward`` maps x (B,1,s,s) to the reconstruction (B,1,s,s)."""

    out_channels = 1

    def __init__(self, size: int = 64, latent_dim: int = 16, depth: int = DEPTH):
        super().__init__()
        self.size, self.latent_dim, self.depth = size, latent_dim, depth
        self.side = bottleneck_side(size, depth)
        flat = BOTTLENECK_CHANNELS * self.side**2
        self.encoder = _encoder(depth)
        self.fc_enc = nn.Sequential(nn.Linear(flat, HIDDEN), nn.BatchNorm1d(HIDDEN), nn.ReLU(inplace=True),
                                    nn.Linear(HIDDEN, latent_dim))
        # No BN/ReLU after the last linear: the reference reshapes its raw output.
        self.fc_dec = nn.Sequential(nn.Linear(latent_dim, HIDDEN), nn.BatchNorm1d(HIDDEN), nn.ReLU(inplace=True),
                                    nn.Linear(HIDDEN, flat))
        self.decoder = _decoder(self.out_channels, depth)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (B,1,s,s) -> z (B,latent)."""
        return self.fc_enc(self.encoder(x).flatten(1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B,latent) -> (B,out,s,s)."""
        h = self.fc_dec(z).view(-1, BOTTLENECK_CHANNELS, self.side, self.side)
        return self.decoder(h)

    def forward(self, x: torch.Tensor):
        return self.decode(self.encode(x))


class AEU(AE):
    """AE-U: two output channels; ``forward`` returns (mean, logvar), each (B,1,s,s)."""

    out_channels = 2

    def forward(self, x: torch.Tensor):
        out = self.decode(self.encode(x))
        return out[:, :1], out[:, 1:]


class MemAE(AE):
    """AE with a memory of ``memory_items`` latent prototypes read by softmax attention.

    ``forward`` returns (reconstruction (B,1,s,s), attention (B,items)).
    """

    def __init__(self, size: int = 64, latent_dim: int = 16, memory_items: int = 25,
                 shrink_threshold: float = 0.0, depth: int = DEPTH):
        super().__init__(size, latent_dim, depth)
        self.shrink_threshold = shrink_threshold
        self.memory = nn.Parameter(torch.empty(memory_items, latent_dim))
        bound = 1.0 / math.sqrt(latent_dim)  # MemAE's own init of the memory
        nn.init.uniform_(self.memory, -bound, bound)

    def forward(self, x: torch.Tensor):
        z = self.encode(x)
        att = memory_attention(z, self.memory, self.shrink_threshold)
        return self.decode(att @ self.memory), att


def memory_attention(z: torch.Tensor, memory: torch.Tensor, shrink_threshold: float) -> torch.Tensor:
    """Softmax attention of latents over memory items, with optional hard shrinkage.

    z (..., B, D), memory (..., M, D) -> attention (..., B, M). Shrinkage (MemAE) keeps weights
    above the threshold and renormalises them to sum 1; 0 disables it (reference).
    """
    att = torch.softmax(z @ memory.transpose(-1, -2), dim=-1)
    if shrink_threshold > 0:
        shifted = att - shrink_threshold
        att = torch.relu(shifted) * att / (shifted.abs() + 1e-12)
        att = att / att.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return att


def build_member(backbone: str, size: int, latent_dim: int = 16, memory_items: int = 25,
                 shrink_threshold: float = 0.0, depth: int = DEPTH) -> nn.Module:
    """One freshly initialised member (uses the global torch RNG: seed it first)."""
    if backbone == "ae":
        return AE(size, latent_dim, depth)
    if backbone == "aeu":
        return AEU(size, latent_dim, depth)
    if backbone == "memae":
        return MemAE(size, latent_dim, memory_items, shrink_threshold, depth)
    raise ValueError(f"backbone {backbone!r}: use one of {', '.join(BACKBONES)}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
