"""The patch discriminator and its hinge loss (WSCXR paper, Sec. II-D).

Sign convention: cxrad's maps grow with abnormality, so D(m) is trained to be <= -margin on normal
patch features and >= +margin on (synthetic) abnormal ones, and D itself is the anomaly score.
The official code trains the opposite sign (normal >= +0.5, fake <= -0.5) and scores with -D;
with a bias-free last layer the two are the same model with the weights negated. The paper writes
the loss with thresholds 0 and 1 (max(0, D(m_n)) + max(0, 1 - D(m_a))), which needs a bias; the
code's symmetric margin 0.5 with a bias-free layer is what was run, and what cxrad runs.
"""

from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    """Patch features (N, D) -> scores (N,).

    ``hidden`` = 0: one bias-free linear layer (the official configuration, dsc_layers = 1).
    ``hidden`` > 0: ``layers`` blocks Linear -> BatchNorm1d -> LeakyReLU(0.2) of width ``hidden``,
    then the bias-free linear tail (the code's MLP option). Weights start Xavier-normal (as the code).
    """

    def __init__(self, dim: int, hidden: int = 0, layers: int = 1):
        super().__init__()
        blocks: list[nn.Module] = []
        width = dim
        if hidden > 0:
            for _ in range(layers):
                blocks += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(0.2)]
                width = hidden
        self.body = nn.Sequential(*blocks)
        self.tail = nn.Linear(width, 1, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.body(x)).squeeze(-1)


def hinge_terms(normal_scores: torch.Tensor, abnormal_scores: torch.Tensor,
                margin: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean(relu(margin + D(normal))), mean(relu(margin - D(abnormal)))): normal (B,), abnormal (B',)
    -> two scalars. Both are zero once every normal patch scores <= -margin and every abnormal one
    >= +margin."""
    return torch.relu(margin + normal_scores).mean(), torch.relu(margin - abnormal_scores).mean()


def hinge_loss(normal_scores: torch.Tensor, abnormal_scores: torch.Tensor, margin: float = 0.5) -> torch.Tensor:
    """The training loss: the sum of :func:`hinge_terms` (the paper's double sum over normal and
    abnormal features, divided by both counts, is this sum of two means)."""
    normal_term, abnormal_term = hinge_terms(normal_scores, abnormal_scores, margin)
    return normal_term + abnormal_term
