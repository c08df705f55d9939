"""ASR-Net shape, focal loss values, input normalisation."""

import math

import numpy as np
import torch

from cxrad.methods.ddad.asr_net import ASRNet, anomaly_probability, asr_inputs, focal_loss


def test_shapes_and_probability():
    net = ASRNet(2, hidden=8)
    with torch.no_grad():
        logits = net(torch.randn(3, 2, 16, 16))
    assert logits.shape == (3, 2, 16, 16)
    p = anomaly_probability(logits)
    assert p.shape == (3, 16, 16) and float(p.min()) >= 0 and float(p.max()) <= 1
    conv1, bn, conv2, conv3 = 2 * 9 * 128 + 128, 2 * 128, 128 * 9 * 128 + 128, 128 * 9 * 2 + 2
    assert sum(q.numel() for q in ASRNet(2).parameters()) == conv1 + bn + conv2 + bn + conv3


def test_focal_loss_hand_value():
    # one pixel, logits (0, log 3) -> p(anomaly) = 0.75
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)
    target1 = torch.ones(1, 1, 1)
    want1 = -(0.25 ** 2) * math.log(0.75)
    assert abs(float(focal_loss(logits, target1, 2.0)) - want1) < 1e-6
    want0 = -(0.75 ** 2) * math.log(0.25)
    assert abs(float(focal_loss(logits, torch.zeros(1, 1, 1), 2.0)) - want0) < 1e-6
    # γ = 0 is cross-entropy
    ce = torch.nn.functional.cross_entropy(logits, torch.ones(1, 1, 1).long())
    assert abs(float(focal_loss(logits, target1, 0.0)) - float(ce)) < 1e-6


def test_inputs_order_and_scale():
    maps = {"A_inter": torch.full((2, 4, 4), 2.0), "A_intra": torch.full((2, 4, 4), 3.0), "A_rec": torch.zeros(2, 4, 4)}
    x = asr_inputs(maps, "dual", scales=[2.0, 6.0])
    assert x.shape == (2, 2, 4, 4)
    assert torch.all(x[:, 0] == 1.0) and torch.all(x[:, 1] == 0.5)
    assert asr_inputs(maps, "intra").shape == (2, 1, 4, 4)


def test_per_pixel_scales():
    maps = {"A_inter": torch.full((2, 2, 2), 4.0), "A_intra": torch.full((2, 2, 2), 1.0)}
    scales = [[[1.0, 2.0], [4.0, 8.0]], [[1.0, 1.0], [1.0, 0.5]]]
    x = asr_inputs(maps, "dual", scales=scales)
    assert x[0, 0].tolist() == [[4.0, 2.0], [1.0, 0.5]] and x[1, 1].tolist() == [[1.0, 1.0], [1.0, 2.0]]


def test_input_scales_from_normal_mean_maps():
    from cxrad.methods.ddad.refinement import input_scales

    # channel 0: mean map with a hot border (10) and a near-zero centre; channel 1 flat
    pm = np.full((2, 4, 4), 1.0)
    pm[0] = 10.0
    pm[0, 1:3, 1:3] = 0.01
    assert input_scales(pm, "none") is None
    mean0 = (12 * 10.0 + 4 * 0.01) / 16
    assert np.allclose(input_scales(pm, "normal-mean"), [mean0, 1.0])
    per_pixel = np.asarray(input_scales(pm, "normal-pixel-mean"))
    assert per_pixel.shape == (2, 4, 4)
    assert np.allclose(per_pixel[0, 0, 0], 10.0) and np.allclose(per_pixel[1], 1.0)
    # the centre is floored at 10 % of the channel mean, not divided by ~0
    assert np.allclose(per_pixel[0, 1:3, 1:3], 0.1 * mean0)


def test_learns_a_square():
    torch.manual_seed(0)
    net = ASRNet(1, hidden=8)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x = torch.zeros(8, 1, 12, 12)
    y = torch.zeros(8, 12, 12)
    x[:4, :, 3:7, 3:7] = 1.0
    y[:4, 3:7, 3:7] = 1
    for _ in range(60):
        opt.zero_grad()
        loss = focal_loss(net(x), y)
        loss.backward()
        opt.step()
    net.eval()
    p = anomaly_probability(net(x))
    assert p[:4, 3:7, 3:7].mean() > p[4:].mean() + 0.3


def test_ema_and_precise_bn():
    from cxrad.methods.ddad.weight_average import ema_update, precise_bn

    torch.manual_seed(0)
    net, ema = ASRNet(1, hidden=4), ASRNet(1, hidden=4)
    ema_update(ema, net, decay=0.0)  # decay 0 = copy
    assert all(torch.equal(a, b) for a, b in zip(ema.parameters(), net.parameters()))
    before = [p.clone() for p in ema.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema_update(ema, net, decay=0.75)
    assert all(torch.allclose(e, b + 0.25) for e, b in zip(ema.parameters(), before))
    # precise BN: running mean of the first BN = mean of conv1's output over all batches
    batches = [(torch.randn(3, 1, 6, 6) + i, None) for i in range(4)]
    precise_bn(net, (x for x, _ in batches))
    with torch.no_grad():
        conv_out = torch.cat([net.body[0](x) for x, _ in batches])
    assert torch.allclose(net.body[1].running_mean, conv_out.mean(dim=(0, 2, 3)), atol=1e-5)
    assert not net.training and net.body[1].momentum == 0.1


def test_level_gains_range_and_repeatable():
    from cxrad.methods.ddad.refinement import level_gains

    g = level_gains(1000, 2, (1.0, 2.0), seed=3, epoch=4)
    assert g.shape == (1000, 2) and g.min() >= 1.0 and g.max() <= 2.0
    assert abs(float(np.median(g)) - 2 ** 0.5) < 0.05          # log-uniform: median = geometric mean
    assert np.array_equal(g, level_gains(1000, 2, (1.0, 2.0), seed=3, epoch=4))


def test_top_donors_keep_the_highest_maps_and_every_index_stays_valid():
    from cxrad.methods.ddad.refinement import top_donors

    # donor i has level i in channel 0; channel 1 is the same for every donor, so channel 0 decides
    maps = torch.zeros(10, 2, 4, 4)
    maps[:, 0] = torch.arange(10, dtype=torch.float32)[:, None, None]
    maps[:, 1] = 100.0
    idx = top_donors(maps, 0.3)
    assert idx.shape == (10,) and idx.dtype == torch.int64
    assert idx.tolist() == [7, 8, 9, 7, 8, 9, 7, 8, 9, 7]
    assert top_donors(maps, 1.0).tolist() == list(range(10))
    assert top_donors(maps, 0.01).tolist() == [9] * 10   # at least one donor is kept
    # channels count relative to their own mean: channel 1 (1000x larger values) puts donor 0 at 3.6x
    # its mean, which outweighs channel 0's top donor (2x its mean)
    maps[:, 1] = 1000.0
    maps[0, 1] = 5000.0
    maps[:, 0] *= 0.001
    assert top_donors(maps, 0.1).tolist() == [0] * 10


def test_channels_last_layout_changes_no_arithmetic():
    """The NHWC ASR-Net gives the NCHW network's outputs and gradients (float rounding), and loads
    a state dict written by the NCHW network (every asr.pt before the layout change)."""
    torch.manual_seed(0)
    net = ASRNet(2, hidden=16)
    conv = net.body[3].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    plain = torch.nn.Sequential(*[m for m in ASRNet(2, hidden=16).body])  # same architecture, NCHW
    plain.to(memory_format=torch.contiguous_format)
    plain.load_state_dict({k.removeprefix("body."): v.contiguous() for k, v in net.state_dict().items()})
    assert plain[3].weight.is_contiguous()
    x = torch.randn(4, 2, 20, 20)
    mask = (torch.rand(4, 20, 20) > 0.8).long()
    for m in (net, plain):
        focal_loss(m(x), mask).backward()
    assert torch.allclose(net(x), plain(x), atol=1e-5, rtol=1e-4)
    assert torch.allclose(net.body[3].weight.grad, plain[3].weight.grad, atol=1e-6, rtol=1e-4)
    # an NCHW state dict (what older runs saved) loads and reproduces the outputs
    old = ASRNet(2, hidden=16)
    old.load_state_dict({f"body.{k}": v.contiguous() for k, v in plain.state_dict().items()})
    assert old.body[3].weight.is_contiguous(memory_format=torch.channels_last)
    net.eval(), old.eval()
    with torch.no_grad():
        assert torch.allclose(net(x), old(x), atol=1e-5, rtol=1e-4)  # BN stats: rounding apart
