"""SimSID (cxrad/methods/simsid): the memory queue, the top-k read-out, the neighbour gathering,
the loss weights, the shapes at 64 and 128 px, the augmentation, bit-exact resume, and a tiny
`cxrad fit` -> score -> evaluate -> predict on real sample images."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxrad.methods.simsid.config import SimSIDConfig
from cxrad.methods.simsid.losses import discriminator_loss, generator_loss
from cxrad.methods.simsid.memory import MemoryQueue, neighbours, position_code, sparse_read, topk_shrink
from cxrad.methods.simsid.trainer import SimSIDTrainer, build_networks, random_affine

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
# a narrow network (width 4: 64 bottleneck channels) keeps the training tests to seconds
TINY = dict(size=64, width=4, memory_slots=12, batch_size=8, heads=4)


def test_queue_is_fifo_with_wraparound_and_capacity():
    q = MemoryQueue(positions=2, slots=5, dim=3, topk=2)
    first = torch.arange(3 * 2 * 3, dtype=torch.float32).reshape(3, 2, 3)          # (B, P, C)
    q.push(first)
    assert q.ptr.item() == 3
    assert torch.equal(q.items[:, :3], first.transpose(0, 1))                        # oldest first
    second = 100 + torch.arange(4 * 2 * 3, dtype=torch.float32).reshape(4, 2, 3)
    q.push(second)                       # slots 3, 4 then wraps to 0, 1; slot 2 keeps first[2]
    assert q.ptr.item() == 2
    assert torch.equal(q.items[:, 3:5], second[:2].transpose(0, 1))
    assert torch.equal(q.items[:, 0:2], second[2:].transpose(0, 1))
    assert torch.equal(q.items[:, 2], first[2])
    third = -1 - torch.arange(7 * 2 * 3, dtype=torch.float32).reshape(7, 2, 3)      # more than capacity
    q.push(third)
    assert q.ptr.item() == (2 + 7) % 5
    for j in range(7)[-5:]:               # the last 5 values, each at its own slot
        assert torch.equal(q.items[:, (2 + j) % 5], third[j])
    assert q.items.requires_grad is False and "ptr" in q.state_dict()


def test_topk_readout_keeps_k_minus_one_items_and_has_the_dense_gradient():
    items = torch.eye(6)[None] * 1.0                                                  # (P=1, M=6, C=6)
    query = torch.tensor([[[3.0, 2.0, 1.0, 0.5, 0.0, -1.0]]], requires_grad=True)     # (B=1, P=1, C)
    out = sparse_read(query, items, k=3)
    # the 3rd largest weight is the threshold and is itself shrunk to zero: items 0 and 1 remain
    w = torch.tensor([math.exp(3.0), math.exp(2.0)])
    expected = torch.zeros(6)
    expected[:2] = w / w.sum()
    assert torch.allclose(out[0, 0], expected, atol=1e-6)
    # straight-through: the gradient is that of the dense softmax read-out
    g = torch.randn(6)
    (out[0, 0] * g).sum().backward()
    q2 = query.detach().clone().requires_grad_(True)
    dense = torch.softmax(torch.einsum("bpc,pmc->bpm", q2, items), -1) @ items[0]
    (dense[0, 0] * g).sum().backward()
    assert torch.allclose(query.grad, q2.grad, atol=1e-6)
    # no gradient reaches the queue's items: they are a buffer
    w5 = topk_shrink(torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]]), 5)
    assert (w5 > 0).sum() == 4 and torch.isclose(w5.sum(), torch.tensor(1.0))


def test_neighbours_are_zero_beyond_the_grid_border():
    g = 3
    x = (torch.arange(g * g, dtype=torch.float32) + 1).reshape(1, g * g, 1).repeat(2, 1, 2)   # (B, P, C)
    n = neighbours(x, g)
    assert n.shape == (2, 9, 8, 2)
    # corner (0, 0): only right (2), below (4) and diagonal (5) exist
    assert n[0, 0, :, 0].tolist() == [0, 0, 0, 0, 2, 0, 4, 5]
    # centre: all others, row-major, without itself
    assert n[1, 4, :, 1].tolist() == [1, 2, 3, 4, 6, 7, 8, 9]
    # bottom-right corner
    assert n[0, 8, :, 0].tolist() == [5, 6, 0, 8, 0, 0, 0, 0]
    # the official 2 x 2 grid: every patch has exactly 3 real neighbours
    n2 = neighbours(torch.ones(1, 4, 5), 2)
    assert (n2.abs().sum(-1) > 0).sum(-1).tolist() == [[3, 3, 3, 3]]
    assert position_code(4).tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1]]


def test_loss_weights_match_the_weighted_sum_of_the_parts():
    torch.manual_seed(0)
    cfg = SimSIDConfig(recon_weight=3.0, teacher_weight=0.5, dist_weight=0.25, gen_weight=2.0, disc_weight=0.7)
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    out = {"recon": torch.rand(4, 1, 8, 8), "teacher_recon": torch.rand(4, 1, 8, 8), "dist_loss": torch.tensor(1.5)}
    fake = torch.randn(4, 1)
    parts = generator_loss(out, x, fake, cfg)
    mse_s = ((out["recon"] - x) ** 2).mean()
    mse_t = ((out["teacher_recon"] - x) ** 2).mean()
    bce_gen = F.softplus(-fake).mean()                 # -log sigmoid(fake)
    hand = 3.0 * mse_s + 0.5 * mse_t + 0.25 * 1.5 + 2.0 * bce_gen
    assert torch.allclose(parts["total"], hand, atol=1e-6)
    assert torch.allclose(parts["gen"], 2.0 * bce_gen, atol=1e-6)
    real = torch.randn(4, 1)
    d = discriminator_loss(real, fake, cfg)
    assert torch.allclose(d, 0.7 * (F.softplus(-real).mean() + F.softplus(fake).mean()), atol=1e-6)
    defaults = SimSIDConfig()
    assert (defaults.recon_weight, defaults.teacher_weight, defaults.dist_weight, defaults.gen_weight,
            defaults.disc_weight) == (10.0, 0.01, 0.001, 0.005, 0.005)


@pytest.mark.parametrize("size, bottleneck, inpaint_dim, decoder_dims", [
    (64, 2, 512, (1024, 2048)), (128, 4, 2048, (4096, 8192))])
def test_shapes_at_64_and_128_px(size, bottleneck, inpaint_dim, decoder_dims):
    cfg = SimSIDConfig(size=size).validate()
    gen, disc = build_networks(cfg)
    assert gen.inpaint.dim == inpaint_dim and gen.inpaint.queue.items.shape == (4, 200, inpaint_dim)
    assert tuple(m.items.shape[-1] for m in gen.student.memories) == decoder_dims
    assert len(gen.teacher.memories) == 0
    x = torch.rand(2, 1, size, size) * 2 - 1
    with torch.no_grad():
        out = gen(x)
        assert gen.inpaint.pending.shape == (2, 4, inpaint_dim)
        gen.eval()
        assert gen(x, teacher=False).keys() == {"recon"}
    assert out["recon"].shape == out["teacher_recon"].shape == (2, 1, size, size)
    assert out["dist_loss"].ndim == 0 and out["recon"].abs().max() <= 1
    assert disc(out["recon"]).shape == (2, 1) and disc(out["recon"], per_image_norm=True).shape == (2, 1)


def test_size_and_grid_checks():
    from cxrad.errors import CxradError

    for bad in (dict(size=80), dict(size=64, grid=4), dict(memory_topk=300), dict(heads=7)):
        with pytest.raises(CxradError):
            SimSIDConfig(**bad).validate()


def test_random_affine_identity_and_whole_pixel_shift():
    x = torch.rand(3, 1, 16, 16)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(random_affine(x, g, 0.0, (1.0, 1.0)), x)
    # translate 0.1 of 16 px: shifts are whole pixels in [-2, 2]; the image moves, zero fill enters
    y = random_affine(x, torch.Generator().manual_seed(1), 0.1, (1.0, 1.0))
    found = []
    for b in range(3):
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                ref = torch.zeros_like(x[b, 0])
                src = x[b, 0, max(0, -dy):16 - max(0, dy), max(0, -dx):16 - max(0, dx)]
                ref[max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
                if torch.equal(y[b, 0], ref):
                    found.append((dy, dx))
                    break
    assert len(found) == 3


def _tiny_images(prepared):
    from cxrad.io.store import load_split

    return load_split(prepared, "normal").images[:16]


def test_checkpoint_restore_next_epoch_is_bit_identical(prepared_sample, one_thread):
    cfg = SimSIDConfig(**TINY, epochs=3).validate()
    images = _tiny_images(prepared_sample)
    a = SimSIDTrainer(images, cfg, torch.device("cpu"))
    a.run_epoch()
    buf = io.BytesIO()
    torch.save(a.checkpoint(), buf)
    loss_a = a.run_epoch()
    b = SimSIDTrainer(images, cfg, torch.device("cpu"))
    buf.seek(0)
    b.restore(torch.load(buf, weights_only=True))
    assert b.epoch == 1
    loss_b = b.run_epoch()
    assert loss_a == loss_b
    for key, value in a.gen.state_dict().items():
        assert torch.equal(value, b.gen.state_dict()[key]), key
    for key, value in a.disc.state_dict().items():
        assert torch.equal(value, b.disc.state_dict()[key]), key
    assert a.gen.inpaint.queue.ptr.item() == b.gen.inpaint.queue.ptr.item() == 16 % 12   # 2 epochs x 8, wrapped
    assert a.sched.get_last_lr() == b.sched.get_last_lr()


def test_fit_score_evaluate_predict_on_real_images(cli, prepared_sample, tmp_path):
    from cxrad import methods
    from cxrad.io.store import load_split
    from cxrad.runs import open_run

    run = tmp_path / "run"
    sets = [f"--set={k}={v}" for k, v in TINY.items()]
    # the default size (128) on 64-px data is refused with both fixes
    code, _, err = cli("fit", prepared_sample, "--run", tmp_path / "bad", "--method", "simsid")
    assert code != 0 and "--size 128" in err and "--set size=64" in err and "Traceback" not in err
    code, _, err = cli("fit", prepared_sample, "--run", run, "--method", "simsid", "--set", "epochs=1", *sets)
    assert code == 0, err
    model = json.loads((run / "model" / "manifest.json").read_text())
    assert model["kept"] == "last epoch" and model["train_images"] == 30 and model["epochs"] == 1
    state = torch.load(run / "model" / "model.pt", weights_only=True)
    assert state["d_std"] > 0 and "queue.items" in " ".join(state["generator"])

    # the SimSID score is standardised by the training images' statistics
    scorer = methods.get("simsid").load_scorer(open_run(run), torch.device("cpu"))
    normal = load_split(prepared_sample, "normal").images
    scored = scorer.score(normal)
    s = scored.scores["SimSID"].astype(np.float64)
    assert abs(s.mean()) < 1e-3 and abs(s.std() - 1) < 1e-3
    assert scored.maps["SimSID"].shape == normal.shape
    assert np.allclose(scored.scores["SimSID_rec"], scored.maps["SimSID"].mean(axis=(1, 2)), atol=1e-6)
    # the stage's batch is capped by score_batch_size (memory at 128 px); per-image results unchanged
    seen = []
    hook = scorer.gen.register_forward_pre_hook(lambda _m, args: seen.append(len(args[0])))
    scorer.cfg.score_batch_size = 4
    capped = scorer.score(normal[:10], batch_size=256)
    hook.remove()
    assert seen == [4, 4, 2]
    assert np.allclose(capped.maps["SimSID"], scored.maps["SimSID"][:10], atol=1e-5)
    # (the standardised score divides float rounding of other batch shapes by the tiny model's sigma)
    assert np.allclose(capped.scores["SimSID"], scored.scores["SimSID"][:10], atol=1e-2)

    code, _, err = cli("score", run)
    assert code == 0, err
    code, _, err = cli("evaluate", run)
    assert code == 0, err
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    for name in ("SimSID", "SimSID_rec"):
        assert 0.0 <= metrics["scores"][name]["auc"] <= 1.0
    inputs = sorted(SAMPLE.glob("kermany/test/*/*.jpeg"))[:3]
    code, _, err = cli("predict", run, *inputs, "--out", tmp_path / "pred")
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "pred" / "predictions.csv")))
    assert len(rows) == 3 and all(r["decision_score"] == "SimSID" for r in rows)
