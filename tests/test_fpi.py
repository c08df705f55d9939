"""FPI recipes and their application (DESIGN §1.3)."""

import numpy as np
import torch

from cxrad.methods.ddad.fpi import apply_recipes, draw_recipes, geometry_bounds, recipe_masks


def test_geometry_scales_with_size():
    assert geometry_bounds(64) == (6, 57, 3, 12)      # centres 6..56, half-widths 3..11
    assert geometry_bounds(128) == (12, 115, 6, 25)
    r = draw_recipes(5000, 64, np.random.default_rng(0))
    assert r.cy.min() == 6 and r.cy.max() == 56 and r.cx.min() == 6 and r.cx.max() == 56
    assert r.half.min() == 3 and r.half.max() == 11
    r2 = draw_recipes(5000, 256, np.random.default_rng(0))
    assert r2.cy.min() >= 25 and r2.cy.max() <= 229 and r2.half.max() <= 50 and r2.half.min() >= 12


def test_donor_differs_and_half_patched():
    r = draw_recipes(1000, 64, np.random.default_rng(1))
    assert np.all(r.donor != r.source)
    assert sorted(r.source.tolist()) == list(range(1000))          # one sample per pool image
    assert abs(r.patched.mean() - 0.5) < 0.05
    assert r.alpha.min() >= 0 and r.alpha.max() < 1


def test_reproducible():
    a = draw_recipes(50, 32, np.random.default_rng(7))
    b = draw_recipes(50, 32, np.random.default_rng(7))
    assert all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("source", "donor", "cy", "alpha", "patched"))


def test_mask_area_and_blend_values():
    n, size = 40, 32
    rng = np.random.default_rng(3)
    r = draw_recipes(n, size, rng)
    r.alpha[:5] = 0.0                                   # α = 0 still gives a mask
    pool = torch.rand(n, size, size) * 2 - 1
    xs, mask = apply_recipes(pool, r)
    assert xs.shape == mask.shape == (n, size, size)
    for i in range(n):
        s, d, cy, cx, h, a = r.source[i], r.donor[i], r.cy[i], r.cx[i], r.half[i], r.alpha[i]
        expect = torch.zeros(size, size)
        if r.patched[i]:
            expect[max(cy - h, 0):cy + h, max(cx - h, 0):cx + h] = 1
        assert torch.equal(mask[i], expect)
        blend = (1 - a) * pool[s] + a * pool[d]
        want = torch.where(expect.bool(), blend, pool[s])
        assert torch.allclose(xs[i], want, atol=1e-6)
    inside = r.patched & (r.cy - r.half >= 0) & (r.cy + r.half <= size) & (r.cx - r.half >= 0) & (r.cx + r.half <= size)
    areas = mask.sum(dim=(1, 2)).numpy()
    assert np.all(areas[inside] == (2 * r.half[inside]) ** 2)
    assert np.all(areas[~r.patched] == 0)
    assert mask[:5][torch.as_tensor(r.patched[:5])].sum() > 0 or not r.patched[:5].any()


def test_masks_device_agnostic_dtype():
    r = draw_recipes(4, 16, np.random.default_rng(0))
    m = recipe_masks(r, 16, "cpu")
    assert m.dtype == torch.float32 and set(m.unique().tolist()) <= {0.0, 1.0}


def test_donor_pool_and_map_space_blend():
    """Map-space FPI: sources from one pool of (N, C, H, W) maps, donors from another pool."""
    n, m, size = 12, 5, 16
    r = draw_recipes(n, size, np.random.default_rng(4), donor_pool_size=m)
    assert r.donor.min() >= 0 and r.donor.max() < m
    assert len(set(r.donor.tolist())) > 1
    src = torch.rand(n, 2, size, size)
    don = torch.rand(m, 2, size, size) + 10.0       # every donor value is far from every source value
    xs, mask = apply_recipes(src, r, don)
    assert xs.shape == (n, 2, size, size) and mask.shape == (n, size, size)
    for i in range(n):
        a = float(r.alpha[i])
        want = torch.where(mask[i].bool()[None], (1 - a) * src[r.source[i]] + a * don[r.donor[i]], src[r.source[i]])
        assert torch.allclose(xs[i], want, atol=1e-6)
    # both channels get the same patch: the blend moved exactly the masked pixels (α > 0)
    moved = (xs != src[torch.as_tensor(r.source)]).any(1)
    live = torch.as_tensor(r.alpha > 0)[:, None, None]
    assert torch.equal(moved, mask.bool() & live)
