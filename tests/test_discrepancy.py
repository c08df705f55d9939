"""Discrepancy formulas against hand-computed values on tiny tensors (DESIGN §1)."""

import math

import pytest
import torch

from cxrad.methods.ddad.discrepancy import a_inter, a_intra, a_rec, discrepancy_maps, ensemble_mean
from cxrad.scores import image_score


def _recon(values):
    """list over members of (B=1, H=1, W=len) rows -> (K, 1, 1, 1, W)."""
    return torch.tensor(values, dtype=torch.float32)[:, None, None, None, :]


def test_k2_hand_values():
    ndm = _recon([[0.0, 1.0], [2.0, 1.0]])          # K=2, 2 pixels
    udm = _recon([[1.0, 0.0], [1.0, 0.0]])
    x = torch.tensor([[[[1.0, 3.0]]]])                # (B, 1, H, W)
    maps = discrepancy_maps(x, ndm, udm)
    # μ_NDM = [1, 1]; unbiased std over 2 members: |a-b|/√2
    assert torch.allclose(maps["A_rec"], torch.tensor([[[0.0, 4.0]]]))
    assert torch.allclose(maps["A_intra"], torch.tensor([[[2 / math.sqrt(2), 0.0]]]))
    assert torch.allclose(maps["A_inter"], torch.tensor([[[0.0, 1.0]]]))


def test_k3_unbiased_std():
    ndm = _recon([[1.0], [2.0], [6.0]])  # mean 3, squared deviations 4+1+9=14, /(K-1)=7
    assert torch.allclose(a_intra(ndm), torch.tensor([[[math.sqrt(7.0)]]]))
    assert torch.allclose(ensemble_mean(ndm), torch.tensor([[[3.0]]]))


def test_single_member_refused():
    with pytest.raises(ValueError):
        a_intra(_recon([[1.0]]))


def test_aeu_normalised_forms():
    ndm_mean = _recon([[0.0], [2.0]])
    ndm_logvar = torch.log(_recon([[2.0], [6.0]]))      # σ² = mean(2, 6) = 4, σ = 2
    udm_mean = _recon([[3.0], [3.0]])
    udm_logvar = torch.zeros_like(udm_mean) + 100.0        # UDM variances must be ignored
    x = torch.tensor([[[[5.0]]]])
    maps = discrepancy_maps(x, (ndm_mean, ndm_logvar), (udm_mean, udm_logvar))
    assert torch.allclose(maps["A_rec"], torch.tensor([[[16.0 / 4.0]]]))        # (5-1)²/σ²
    assert torch.allclose(maps["A_intra"], torch.tensor([[[math.sqrt(2.0) / 2.0]]]))
    assert torch.allclose(maps["A_inter"], torch.tensor([[[2.0 / 2.0]]]))     # |3-1|/σ


def test_shapes_and_image_score():
    k, b, h, w = 3, 4, 8, 8
    ndm, udm = torch.randn(k, b, 1, h, w), torch.randn(k, b, 1, h, w)
    x = torch.randn(b, 1, h, w)
    maps = discrepancy_maps(x, ndm, udm)
    assert all(m.shape == (b, h, w) for m in maps.values())
    assert torch.allclose(image_score(maps["A_inter"]), maps["A_inter"].mean(dim=(1, 2)))
    assert torch.allclose(maps["A_rec"], a_rec(x, ndm.mean(0)[:, 0]))
    assert torch.allclose(maps["A_inter"], a_inter(udm.mean(0)[:, 0], ndm.mean(0)[:, 0]))
    assert "A_inter" not in discrepancy_maps(x, ndm)
