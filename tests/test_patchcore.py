"""PatchCore: greedy k-center coreset, exact kNN distances, the smoothed maps, and the method end
to end through `cxrad fit` -> `cxrad score` -> `cxrad evaluate` on the real sample X-rays."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from cxrad.methods.patchcore.anomaly_maps import gaussian_smooth, patch_maps
from cxrad.methods.patchcore.coreset import greedy_coreset, random_projection
from cxrad.methods.patchcore.knn import knn_distance


# ---------------------------------------------------------------------------------------------
# coreset
# ---------------------------------------------------------------------------------------------
def _min_dist(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    return torch.cdist(points, centres, compute_mode="donot_use_mm_for_euclid_dist").min(1).values


def test_coreset_on_a_hand_made_line():
    """1-D points 0, 1, 2, 10, 11, 20: from 0 the farthest is 20, then 10 (10 from both; 11 is
    only 9 from 20), then 2 or 1... each choice is the farthest from the chosen ones."""
    pts = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0], [20.0]], dtype=torch.float64)
    for seed in range(20):
        core = greedy_coreset(pts, 3, seed=seed)
        if int(core.indices[0]) == 0:
            break
    else:  # pragma: no cover
        pytest.fail("no seed started at point 0")
    assert core.indices.tolist() == [0, 5, 3]
    assert core.radii[1:].tolist() == [20.0, 10.0] and core.radius == 2.0   # 2 is 2 from 0; 11, 1 closer


def test_coreset_is_greedy_k_center_with_a_2_approximate_radius():
    g = torch.Generator().manual_seed(0)
    pts = torch.cat([torch.randn(4, 2, generator=g, dtype=torch.float64) * 6 + 0,
                     torch.randn(8, 2, generator=g, dtype=torch.float64)])
    k = 4
    core = greedy_coreset(pts, k, seed=3)
    idx = core.indices
    assert len(set(idx.tolist())) == k
    for t in range(1, k):   # each choice is the point farthest from those chosen before
        d = _min_dist(pts, pts[idx[:t]])
        assert float(d[idx[t]]) == pytest.approx(float(d.max()), abs=1e-12)
        assert float(core.radii[t]) == pytest.approx(float(d.max()), abs=1e-12)
    radius = float(_min_dist(pts, pts[idx]).max())
    assert core.radius == pytest.approx(radius, abs=1e-12)
    best = min(float(_min_dist(pts, pts[list(c)]).max()) for c in itertools.combinations(range(len(pts)), k))
    assert best <= radius <= 2 * best + 1e-12   # the greedy 2-approximation of the k-center optimum


def test_coreset_covering_radius_shrinks_and_seeds_differ():
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(20, 64, generator=g, dtype=torch.float64) * 4
    pts = centres.repeat_interleave(25, 0) + torch.randn(500, 64, generator=g, dtype=torch.float64)
    core = greedy_coreset(pts, 40, seed=5)
    assert (core.radii[2:] <= core.radii[1:-1] + 1e-9).all()      # the covering radius never grows
    assert core.radius <= float(core.radii[-1])
    assert torch.equal(core.indices, greedy_coreset(pts, 40, seed=5).indices)
    assert not torch.equal(core.indices, greedy_coreset(pts, 40, seed=6).indices)
    assert torch.equal(greedy_coreset(pts, 5000, seed=0).indices, torch.arange(500))   # count >= N: all


def test_coreset_memory_is_linear_in_n():
    """784,000 features (1,000 images at 224 px): an N x N distance matrix would need 2.4 TB."""
    feats = torch.randn(784_000, 16)
    core = greedy_coreset(feats, 4, seed=0)
    assert len(core.indices) == 4 and core.radius > 0


def test_random_projection_preserves_distances_roughly():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 1024, generator=g)
    z = random_projection(x, 128, torch.Generator().manual_seed(1))
    ratio = torch.pdist(z) / torch.pdist(x)
    assert z.shape == (200, 128) and 0.7 < float(ratio.min()) and float(ratio.max()) < 1.3
    assert torch.equal(random_projection(x[:, :64], 128, g), x[:, :64])    # D <= dim: left alone


# ---------------------------------------------------------------------------------------------
# kNN and maps
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3])
def test_knn_distance_equals_brute_force(k):
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(300, 32, generator=g) * 5 + 40      # large norms: cancellation-prone
    queries = torch.cat([torch.randn(150, 32, generator=g) * 5 + 40,
                         bank[:50] + 1e-3 * torch.randn(50, 32, generator=g)])   # near duplicates
    brute = torch.cdist(queries.double(), bank.double(), compute_mode="donot_use_mm_for_euclid_dist")
    want = brute.topk(k, dim=1, largest=False).values.mean(1)
    got = knn_distance(queries, bank, k=k, chunk_elements=1000)    # 3 query rows per block
    assert torch.allclose(got.double(), want, rtol=1e-4, atol=1e-5)
    # the near duplicates' distances (~0.006) are exact, not lost in ||q||^2 - 2qb + ||b||^2 (~1e4)
    assert torch.allclose(got[150:].double(), want[150:], rtol=1e-3)


def test_gaussian_smoothing_equals_scipy_reflect_mode():
    rng = np.random.default_rng(0)
    maps = rng.random((2, 40, 24)).astype(np.float64)
    for sigma in (1.0, 4.0, 7.5):   # 7.5: kernel radius 30 > 24, folded more than once
        ours = gaussian_smooth(torch.from_numpy(maps), sigma).numpy()
        ref = np.stack([gaussian_filter(m, sigma, mode="reflect", truncate=4.0) for m in maps])
        assert np.allclose(ours, ref, atol=1e-12)
    up = patch_maps(torch.ones(1, 8, 8) * 3.0, (64, 64), 1.1)
    assert up.shape == (1, 64, 64) and torch.allclose(up, torch.full_like(up, 3.0))


# ---------------------------------------------------------------------------------------------
# the method end to end
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def patchcore_run(prepared_sample, tmp_path_factory):
    from cxrad.cli import main

    run = tmp_path_factory.mktemp("patchcore") / "run"
    main(["--no-progress", "fit", str(prepared_sample), "--run", str(run), "--method", "patchcore",
          "--set", "input_size=64", "--set", "coreset_ratio=0.25", "--set", "seed=1"])
    return run


def test_fit_score_evaluate_on_real_x_rays(patchcore_run, prepared_sample, cli):
    from cxrad.io.maps_store import read_maps_h5
    from cxrad.io.store import load_labels, load_split
    from cxrad.methods.patchcore.method import PatchCoreScorer

    run = patchcore_run
    state = torch.load(run / "model" / "model.pt", map_location="cpu", weights_only=True)
    normal = load_split(prepared_sample, "normal").images
    assert state["memory_bank"].shape == (int(30 * 64 * 0.25), 256)    # 30 Dn images × 8×8 patches × 25 %
    manifest = json.loads((run / "model" / "manifest.json").read_text())
    assert manifest["method"] == "patchcore" and manifest["train_images"] == 30 and manifest["memory_bank"] == 480
    assert manifest["weights_sha256"] and manifest["backbone"] == "efficientnet-lite0"

    # the bank is a subset of the Dn patch features (nothing else is read), and the scorer
    # rebuilt from model.pt alone reproduces those features
    scorer = PatchCoreScorer(state, torch.device("cpu"))
    dn = scorer.extractor(torch.from_numpy(normal)).reshape(-1, 256)
    assert torch.allclose(knn_distance(state["memory_bank"], dn), torch.zeros(480), atol=1e-3)

    code, out, err = cli("score", run, "--split", "test")
    assert code == 0, err
    code, out, err = cli("evaluate", run)
    assert code == 0, err
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    auc = metrics["scores"]["patchcore"]["auc"]
    assert 0.0 <= auc <= 1.0

    test = load_split(prepared_sample, "test").images
    stored = read_maps_h5(run / "maps" / "test.h5")
    maps, scores = stored.scored.maps["patchcore"], stored.scored.scores["patchcore"]
    assert maps.shape == (65, 64, 64) and scores.shape == (65,)
    # image score = the largest raw patch distance (before upsampling and smoothing)
    x = torch.from_numpy(test[:4])
    feats = scorer.extractor(x).reshape(-1, 256)
    patch = knn_distance(feats, state["memory_bank"]).reshape(4, -1)
    assert np.allclose(scores[:4], patch.amax(1).numpy(), rtol=1e-4)
    assert np.allclose(stored.scored.scores["patchcore_mean"][:4], patch.mean(1).numpy(), rtol=1e-4)
    assert np.array_equal(stored.scored.maps["patchcore_mean"], maps)
    assert (maps[:4].reshape(4, -1).max(1) <= scores[:4] + 1e-4).all()   # smoothing only lowers peaks
    assert len(load_labels(prepared_sample, "test")) == 65


def test_fit_is_a_no_op_when_repeated_and_refuses_bad_settings(patchcore_run, prepared_sample, cli, tmp_path):
    before = (patchcore_run / "model" / "model.pt").stat().st_mtime_ns
    code, out, err = cli("fit", prepared_sample, "--run", patchcore_run, "--method", "patchcore",
                         "--set", "input_size=64", "--set", "coreset_ratio=0.25", "--set", "seed=1",
                         "--set", "batch_size=7")     # operational: the same model
    assert code == 0 and (patchcore_run / "model" / "model.pt").stat().st_mtime_ns == before
    for setting, words in (("coreset_ratio=0", "coreset_ratio"), ("feature_dim=3", "even"),
                           ("backbone=resnet50", "efficientnet-lite0")):
        code, out, err = cli("fit", prepared_sample, "--run", tmp_path / "bad", "--method", "patchcore",
                             "--set", setting)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err


def test_bad_weights_file_is_one_line_error_with_exit_code(prepared_sample, cli, tmp_path):
    bad = tmp_path / "weights.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, bad)
    code, out, err = cli("fit", prepared_sample, "--run", tmp_path / "run", "--method", "patchcore",
                         "--set", f"weights={bad}")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert str(bad) in err and "not a state dict of efficientnet-lite0" in err
    assert not (tmp_path / "run" / "model" / "model.pt").exists()


def test_scoring_forward_batches_are_bounded(patchcore_run):
    """`cxrad score` asks for batches of 256; at 224 px the scorer runs at most 32 images per pass."""
    from cxrad.methods.patchcore.method import PatchCoreScorer

    state = torch.load(patchcore_run / "model" / "model.pt", map_location="cpu", weights_only=True)
    scorer = PatchCoreScorer({**state, "input_size": 224}, torch.device("cpu"))
    seen: list[int] = []

    class Stub(torch.nn.Module):   # records batch sizes; features of the right width
        def grid(self):
            return 2, 2

        def forward(self, x):
            seen.append(len(x))
            return torch.zeros(len(x), 4, state["memory_bank"].shape[1])

    scorer.extractor = Stub()
    out = scorer.score(np.zeros((70, 16, 16), np.float32), batch_size=256)
    assert seen == [32, 32, 6] and out.maps["patchcore"].shape == (70, 16, 16)
    assert set(out.scores) == {"patchcore", "patchcore_mean"}
