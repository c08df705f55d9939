"""Averaged weights: the EMA update with its warm-up, and BatchNorm statistics for the average.

Shared by the reconstruction ensembles (`cxrad.methods.ddad.trainer`) and ASR-Net (`cxrad.methods.ddad.refine`).
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def ema_decay_at(decay: float, step: int) -> float:
    """Decay of the EMA update after optimizer step ``step`` (1, 2, ...): min(decay, (1+t)/(10+t)).

    The warm-up lets the average forget the random init within a few steps, whatever the run
    length: a short run averages roughly its last 10 % of steps, a long one reaches ``decay``.
    """
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·net for every parameter; buffers are copied from ``net``."""
    torch._foreach_lerp_(list(ema.parameters()), list(net.parameters()), 1.0 - decay)
    for be, b in zip(ema.buffers(), net.buffers()):
        be.copy_(b)


@torch.no_grad()
def precise_bn(net: nn.Module, inputs: Iterable[torch.Tensor]) -> nn.Module:
    """Replace every BN layer's running statistics of ``net`` by their cumulative average over
    ``inputs`` (batches fed to ``net`` in train mode), then put ``net`` in eval mode; returns ``net``.

    The running statistics kept during training belong to the last iterates (an EMA over the last
    ~10 batches at momentum 0.1); for averaged weights, or a small batch size, they are replaced by
    the exact average over a pass of data ("precise BN", Wu & Johnson 2021). With equal-sized
    batches the running mean equals the mean over all inputs.
    """
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    net.train()
    for x in inputs:
        net(x)
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    return net.eval()
