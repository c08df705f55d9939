"""Anomaly score maps of DDAD (docs/method.md, "Scores"): pure tensor functions, no I/O.

Shapes: ``K`` ensemble members, ``B`` images, ``H×W`` pixels. Reconstructions come from
:class:`cxrad.methods.ddad.ensemble.BatchedEnsemble` as (K, B, 1, H, W); images ``x`` as (B, 1, H, W),
both in the network's [-1, 1] space (the maps are computed in that space, like the reference).
Every map returned here is (B, H, W).
"""

from __future__ import annotations

from typing import Optional

import torch


def ensemble_mean(recon: torch.Tensor) -> torch.Tensor:
    """(K, B, 1, H, W) -> (B, H, W): μ, the mean reconstruction over members."""
    return recon.mean(dim=0)[:, 0]


def a_rec(x: torch.Tensor, mu_ndm: torch.Tensor) -> torch.Tensor:
    """Reconstruction error (x − μ_NDM)². x (B, 1, H, W), mu_ndm (B, H, W) -> (B, H, W)."""
    return (x[:, 0] - mu_ndm) ** 2


def a_intra(recon_ndm: torch.Tensor) -> torch.Tensor:
    """Intra-discrepancy: std over NDM members, unbiased (divisor K−1, as the reference).

    (K, B, 1, H, W) -> (B, H, W). Needs K ≥ 2.
    """
    if recon_ndm.shape[0] < 2:
        raise ValueError("A_intra needs at least 2 ensemble members")
    return recon_ndm.std(dim=0, unbiased=True)[:, 0]


def a_inter(mu_udm: torch.Tensor, mu_ndm: torch.Tensor) -> torch.Tensor:
    """Inter-discrepancy |μ_UDM − μ_NDM|. (B, H, W), (B, H, W) -> (B, H, W)."""
    return (mu_udm - mu_ndm).abs()


def ndm_variance(logvar_ndm: torch.Tensor) -> torch.Tensor:
    """AE-U uncertainty σ² = mean over NDM members of exp(logvar). (K, B, 1, H, W) -> (B, H, W)."""
    return logvar_ndm.exp().mean(dim=0)[:, 0]


def discrepancy_maps(
    x: torch.Tensor,
    ndm: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    udm: Optional[torch.Tensor | tuple[torch.Tensor, torch.Tensor]] = None,
) -> dict[str, torch.Tensor]:
    """All maps of one batch.

    ``ndm``/``udm``: the ensembles' outputs, either recon (K, B, 1, H, W) (AE, MemAE) or a
    ``(mean, logvar)`` pair of such tensors (AE-U). With AE-U the uncertainty-normalised forms are
    returned: A_rec/σ², A_intra/σ, A_inter/σ, with σ² from the NDM only (UDM variances unused).
    Returns {"A_rec", "A_intra", and "A_inter" when ``udm`` is given} -> (B, H, W) each.
    """
    sigma2 = None
    if isinstance(ndm, (tuple, list)):
        ndm, logvar = ndm
        sigma2 = ndm_variance(logvar)
    if isinstance(udm, (tuple, list)):
        udm = udm[0]
    mu_n = ensemble_mean(ndm)
    maps = {"A_rec": a_rec(x, mu_n), "A_intra": a_intra(ndm)}
    if udm is not None:
        maps["A_inter"] = a_inter(ensemble_mean(udm), mu_n)
    if sigma2 is not None:
        sigma = sigma2.sqrt()
        maps["A_rec"] = maps["A_rec"] / sigma2
        maps["A_intra"] = maps["A_intra"] / sigma
        if "A_inter" in maps:
            maps["A_inter"] = maps["A_inter"] / sigma
    return maps
