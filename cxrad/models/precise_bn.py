"""BatchNorm statistics for weights that were never trained as such (a weight average)."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


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
