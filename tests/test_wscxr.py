"""WSCXR (cxrad/methods/wscxr): mining, mixing, hinge loss and discriminator on tiny tensors;
bit-exact resume; refusals; a tiny end-to-end fit -> score -> evaluate on real images."""

from __future__ import annotations

import pytest
import torch

from cxrad.methods.wscxr.config import WSCXRConfig
from cxrad.methods.wscxr.discriminator import PatchDiscriminator, hinge_loss, hinge_terms
from cxrad.methods.wscxr.mining import kept_count, mine_anomaly_features, mining_distance, select_farthest
from cxrad.methods.wscxr.mixing import draw_mixing, linear_mixing, mix
from cxrad.methods.wscxr.trainer import WSCXRTrainer


# -- mining --------------------------------------------------------------------------------------
def test_mining_keeps_exactly_the_farthest_fifth():
    # normal set: the 2-D grid points (i, 0), i = 0..9; abnormal rows at known distances from it
    normal = torch.tensor([[float(i), 0.0] for i in range(10)])
    heights = [0.5, 3.0, 0.1, 7.0, 2.0, 0.2, 5.0, 0.3, 1.0, 4.0]   # nearest normal is straight below
    abnormal = torch.tensor([[float(i % 10), h] for i, h in enumerate(heights)])
    mined = mine_anomaly_features(abnormal, normal, fraction=0.2)
    torch.testing.assert_close(mined.distance, torch.tensor(heights))
    assert mined.index.tolist() == [3, 6]                     # 7.0 and 5.0: floor(0.2 * 10) = 2 rows
    torch.testing.assert_close(mined.features, abnormal[[3, 6]])
    assert len(mine_anomaly_features(abnormal, normal, fraction=0.5).index) == 5


def test_mining_distance_is_brute_force_nearest_and_mean_of_k():
    g = torch.Generator().manual_seed(0)
    normal, query = torch.randn(300, 16, generator=g), torch.randn(50, 16, generator=g)
    brute = ((query[:, None, :] - normal[None]) ** 2).sum(-1).sqrt()
    torch.testing.assert_close(mining_distance(query, normal, k=1), brute.min(1).values)
    mean3 = brute.topk(3, 1, largest=False).values.mean(1)
    torch.testing.assert_close(mining_distance(query, normal, k=3), mean3)
    # a patch equal to a normal one scores 0 and is never kept while others remain
    mined = mine_anomaly_features(torch.cat([normal[:1], query]), normal, fraction=0.5)
    assert mined.distance[0] == 0 and 0 not in mined.index.tolist()


def test_kept_count_floors_but_keeps_one():
    assert [kept_count(n, 0.2) for n in (0, 1, 4, 5, 9, 10, 1000)] == [0, 1, 1, 1, 1, 2, 200]
    assert select_farthest(torch.tensor([1.0, 9.0, 3.0, 7.0, 5.0]), 0.4).tolist() == [1, 3]


# -- mixing ---------------------------------------------------------------------------------------
def test_mix_values_by_hand():
    normal = torch.tensor([[0.0, 0.0], [2.0, 4.0]])
    protos = torch.tensor([[10.0, 20.0], [-1.0, 1.0]])
    out = mix(normal, protos, torch.tensor([[0.1], [1.0]]), torch.tensor([0, 1]))
    # row 0: 0.9 * 0 + 0.1 * (10, 20); row 1, w = 1: the prototype itself
    torch.testing.assert_close(out, torch.tensor([[1.0, 2.0], [-1.0, 1.0]]))


def test_mixing_weights_lie_in_range_and_cover_it():
    g = torch.Generator().manual_seed(1)
    w, idx = draw_mixing(20000, 7, w_min=0.1, generator=g)
    assert w.shape == (20000, 1) and idx.shape == (20000,)
    assert w.min() >= 0.1 and w.max() < 1.0 and w.min() < 0.101 and w.max() > 0.999
    assert abs(w.mean().item() - 0.55) < 0.01                          # uniform on [0.1, 1)
    assert sorted(idx.unique().tolist()) == list(range(7))
    normal, protos = torch.randn(5, 3), torch.randn(4, 3)
    mixed = linear_mixing(normal, protos, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(mixed.fake, (1 - mixed.weight) * normal + mixed.weight * protos[mixed.index])
    # the same generator state gives the same draws (what bit-exact resume relies on)
    again = linear_mixing(normal, protos, generator=torch.Generator().manual_seed(2))
    assert torch.equal(mixed.fake, again.fake)


# -- loss and discriminator --------------------------------------------------------------------------
def test_hinge_loss_by_hand():
    normal = torch.tensor([-1.0, 0.0, 0.3])      # relu(0.5 + s): 0, 0.5, 0.8 -> mean 0.4333
    abnormal = torch.tensor([2.0, 0.5, -0.5, 0.1])  # relu(0.5 - s): 0, 0, 1.0, 0.4 -> mean 0.35
    n_term, a_term = hinge_terms(normal, abnormal, 0.5)
    assert n_term.item() == pytest.approx(1.3 / 3) and a_term.item() == pytest.approx(0.35)
    assert hinge_loss(normal, abnormal, 0.5).item() == pytest.approx(1.3 / 3 + 0.35)
    assert hinge_loss(torch.tensor([-0.5, -3.0]), torch.tensor([0.5, 9.0]), 0.5).item() == 0.0
    assert hinge_loss(torch.zeros(3), torch.zeros(3), 1.0).item() == pytest.approx(2.0)


def test_discriminator_shapes_and_bias_free_linear():
    d = PatchDiscriminator(12)
    assert d(torch.randn(37, 12)).shape == (37,)
    assert [n for n, _ in d.named_parameters()] == ["tail.weight"]          # one bias-free linear layer
    assert d(torch.zeros(4, 12)).abs().max() == 0                          # no bias: D(0) = 0
    mlp = PatchDiscriminator(12, hidden=8, layers=2)
    assert mlp(torch.randn(5, 12)).shape == (5,)
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in mlp.modules()) == 2
    assert mlp.tail.bias is None


# -- trainer: learning and bit-exact resume ---------------------------------------------------------
def _toy_features(seed=0, n=12, p=6, d=8):
    g = torch.Generator().manual_seed(seed)
    normal = torch.randn(n, p, d, generator=g) * 0.3
    prototypes = torch.randn(10, d, generator=g) * 0.3 + 2.0                # far from the normals
    return normal, prototypes


def test_trainer_separates_normal_from_mined_features():
    normal, protos = _toy_features()
    cfg = WSCXRConfig(epochs=30, batch_size=4, lr=1e-2).validate()
    t = WSCXRTrainer(normal, protos, cfg, torch.device("cpu"))
    first = t.run_epoch()
    for _ in range(29):
        last = t.run_epoch()
    assert last[0] < 0.25 * first[0] and t.epoch == 30
    with torch.no_grad():
        assert t.model(protos).min() > t.model(normal.reshape(-1, 8)).max()


@pytest.mark.parametrize("hidden", [0, 16])
def test_checkpoint_restore_is_bit_exact(hidden):
    normal, protos = _toy_features(1)
    cfg = WSCXRConfig(epochs=4, batch_size=5, hidden=hidden).validate()
    straight = WSCXRTrainer(normal, protos, cfg, torch.device("cpu"))
    losses = [straight.run_epoch() for _ in range(4)]

    first = WSCXRTrainer(normal, protos, cfg, torch.device("cpu"))
    head = [first.run_epoch() for _ in range(2)]
    state = first.checkpoint()
    first.run_epoch()                       # the interrupted process goes on: must not leak into state
    resumed = WSCXRTrainer(normal, protos, cfg, torch.device("cpu"))
    resumed.restore(state)
    tail = [resumed.run_epoch() for _ in range(2)]
    assert head + tail == losses
    a, b = straight.final_state()["discriminator"], resumed.final_state()["discriminator"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_restore_refuses_other_features():
    from cxrad.errors import CxradError

    normal, protos = _toy_features(2)
    cfg = WSCXRConfig(epochs=1).validate()
    state = WSCXRTrainer(normal, protos, cfg, torch.device("cpu")).checkpoint()
    with pytest.raises(CxradError, match="other patch features"):
        WSCXRTrainer(normal, protos + 1, cfg, torch.device("cpu")).restore(state)


def test_linear_shortcut_equals_materialized_fakes():
    # D((1 - w) n + w p) = (1 - w) D(n) + w D(p) for the bias-free linear D: same training either way
    normal, protos = _toy_features(3)
    cfg = WSCXRConfig(epochs=3, batch_size=4, lr=1e-2).validate()
    fast = WSCXRTrainer(normal, protos, cfg, torch.device("cpu"))
    slow = WSCXRTrainer(normal, protos, cfg, torch.device("cpu"), materialize_fakes=True)
    assert fast.linear and not slow.linear
    for _ in range(3):
        assert fast.run_epoch() == pytest.approx(slow.run_epoch(), rel=1e-5)
    torch.testing.assert_close(fast.model.tail.weight, slow.model.tail.weight, rtol=1e-5, atol=1e-6)


# -- the method on real images: refusals and fit -> score -> evaluate ----------------------------------
@pytest.fixture(scope="module")
def prepared_anomalies(tmp_path_factory):
    """sample_data at 64 px with Dn (30 normals), the 65 test images and 4 of the train PNEUMONIA
    images as the labelled `anomaly` set (no Du: WSCXR never reads it)."""
    from conftest import SAMPLE

    from cxrad.config import PrepareConfig
    from cxrad.stages.prepare import prepare

    root = tmp_path_factory.mktemp("wscxr")
    rows = (SAMPLE / "labels.csv").read_text().splitlines()
    pneumonia = [r for r in rows if "train/PNEUMONIA" in r][:4]
    kept = [rows[0]] + [r for r in rows[1:] if not r.endswith(",unlabeled")]
    labels = root / "labels.csv"
    labels.write_text("\n".join(kept + [r.replace(",unlabeled", ",anomaly") for r in pneumonia]) + "\n")
    return prepare(SAMPLE, root / "prepared", PrepareConfig(size=64, workers=2, anomaly_shots=4), labels=labels)


TINY = ("--set", "input_size=64", "--set", "epochs=10", "--set", "lr=0.01")


def test_refuses_more_shots_than_prepared(cli, prepared_anomalies, tmp_path):
    code, out, err = cli("fit", prepared_anomalies, "--run", tmp_path / "run", "--method", "wscxr", *TINY,
                         "--set", "shots=5")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "shots=5" in err and "holds only 4 labelled abnormal" in err and "shots <= 4" in err


def test_refuses_prepared_data_without_anomalies(cli, prepared_sample, tmp_path):
    code, out, err = cli("fit", prepared_sample, "--run", tmp_path / "run", "--method", "wscxr", *TINY)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert str(prepared_sample) in err and "no labelled abnormal images" in err
    assert "--anomalies CSV --anomaly-shots K" in err


def test_fit_score_evaluate_on_real_images(cli, prepared_anomalies, tmp_path, monkeypatch):
    import json

    import numpy as np
    from sklearn.metrics import roc_auc_score

    import cxrad.io.store as store

    read = []
    real_load = store.load_split

    def recording(folder, split, **kw):
        read.append(split)
        return real_load(folder, split, **kw)

    monkeypatch.setattr(store, "load_split", recording)
    run = tmp_path / "run"
    code, out, err = cli("fit", prepared_anomalies, "--run", run, "--method", "wscxr", *TINY)
    assert code == 0, err
    monkeypatch.setattr(store, "load_split", real_load)
    assert sorted(set(read)) == ["anomaly", "normal"]          # never Du, test or val

    model = json.loads((run / "model" / "manifest.json").read_text())
    assert model["epochs"] == 10 and model["kept"] == "last epoch"
    assert model["train_images"] == 30 and model["anomaly_images"] == 4
    assert model["patches_per_image"] == 64                  # stride-8 grid of a 64-px input
    assert model["prototypes"] == int(0.2 * 4 * 64)          # top 20 % of the 4 images' 256 patches
    state = torch.load(run / "model" / "model.pt", weights_only=True)
    assert list(state["discriminator"]) == ["tail.weight"]

    assert cli("score", run)[0] == 0
    code, out, err = cli("evaluate", run)
    assert code == 0, err
    metrics = json.loads((run / "eval" / "metrics.json").read_text())["scores"]["wscxr"]
    rows = [line.split(",") for line in (run / "eval" / "scores.csv").read_text().splitlines()[1:]]
    labels, scores = np.array([int(r[1]) for r in rows]), np.array([float(r[2]) for r in rows])
    assert metrics["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert (run / "eval" / "scores.csv").read_text().splitlines()[0] == "id,label,wscxr,wscxr_mean"
    means = np.array([float(r[3]) for r in rows])
    assert (means <= scores).all()                          # the mean patch output never exceeds the largest
    # 2 CPU-seconds of training on 30 normals and 4 pneumonia images, 64 px: well above chance
    # (72.6 on the machine this was written on; a broken mining or sign gives about 50 or below)
    assert metrics["auc"] > 0.6


def test_feature_memo_reuses_per_image_and_is_off_by_default():
    import numpy as np

    from cxrad.methods.wscxr import features

    class Counting:
        calls = 0

        def extract(self, images, *, batch_size, device, on_batch=None):
            Counting.calls += len(images)
            return torch.as_tensor(np.asarray(images)).reshape(len(images), 1, -1) * 2

    imgs = np.random.default_rng(0).random((5, 4, 4), dtype=np.float32)
    kw = dict(key=("toy",), batch_size=2, device=torch.device("cpu"))
    features.extract(Counting(), imgs, **kw)
    features.extract(Counting(), imgs, **kw)
    assert Counting.calls == 10                               # no memo unless asked for
    try:
        features.enable_memo()
        Counting.calls = 0
        a = features.extract(Counting(), imgs[:3], **kw)
        b = features.extract(Counting(), imgs[[4, 2, 0, 4]], **kw)      # 4 is new (once), 2 and 0 are kept
        assert Counting.calls == 4
        torch.testing.assert_close(b[1], a[2])
        torch.testing.assert_close(b, torch.as_tensor(imgs[[4, 2, 0, 4]]).reshape(4, 1, -1) * 2)
        features.extract(Counting(), imgs[:3], **dict(kw, key=("other",)))   # another extractor: recomputed
        assert Counting.calls == 7
    finally:
        features.enable_memo(False)


@pytest.mark.parametrize("hidden", [0, 8])
def test_scorer_from_final_state_matches_the_discriminator(hidden):
    # model.pt's contents -> WSCXRScorer: scores are the max / mean of D over the image's patch
    # features, the map has the image's size (random-init Lite0 at 32 px: a 4 x 4 grid)
    import numpy as np

    from cxrad.features.backbones import load_backbone
    from cxrad.features.extractor import PatchFeatureExtractor, extractor_state
    from cxrad.methods.wscxr.method import SCORE, SCORE_MEAN, WSCXRScorer

    backbone = load_backbone("efficientnet-lite0", pretrained=False)
    trunk = backbone.trunk
    keep = {**extractor_state(backbone, 32, 8), "smoothing_sigma": 4.0}
    normal, protos = _toy_features(4, n=6, p=16, d=8)
    cfg = WSCXRConfig(epochs=2, batch_size=3, hidden=hidden, input_size=32, feature_dim=8).validate()
    trainer = WSCXRTrainer(normal, protos, cfg, torch.device("cpu"), keep=keep)
    trainer.run_epoch()
    scorer = WSCXRScorer(trainer.final_state(), torch.device("cpu"))
    images = np.random.default_rng(0).random((3, 40, 40), dtype=np.float32)
    out = scorer.score(images, batch_size=2)
    assert out.maps[SCORE].shape == (3, 40, 40) and out.scores[SCORE].shape == (3,)
    feats = PatchFeatureExtractor(trunk, input_size=32, feature_dim=8)(torch.as_tensor(images))  # (3, 16, 8)
    trainer.model.eval()
    with torch.no_grad():
        d = trainer.model(feats.reshape(-1, 8)).reshape(3, -1)
    np.testing.assert_allclose(out.scores[SCORE], d.amax(1).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.scores[SCORE_MEAN], d.mean(1).numpy(), rtol=1e-5, atol=1e-6)
