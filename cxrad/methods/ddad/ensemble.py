"""K reconstruction networks run as ONE batched model (docs/method.md, "Ensembles").

Member k owns channel block k of every grouped convolution (``groups=K``), slice k of every
batched linear layer (weights (K, in, out), one ``baddbmm``), channel block k of every BatchNorm
(so batch statistics are per member), and slice k of the MemAE memory. Nothing mixes members, so
training the batched model with the sum of the members' losses gives each member exactly its own
gradients, and Adam (elementwise) updates each member as if it trained alone. On CPU a member
trained in a batch of K and the same member trained alone get bit-identical weights (tested); on
CUDA, cuDNN may pick other algorithms per shape, so expect agreement to float tolerance only.

Layouts: convolutions see (B, K·C, H, W); linear layers see (K, B, F). The module names mirror
:mod:`cxrad.methods.ddad.autoencoders`, so ``member_state_dict(i)`` is a plain member's state dict (the
``member-<i>.pt`` format) and :func:`stack_members` builds the batched model from plain members.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cxrad.methods.ddad.autoencoders import (
    BOTTLENECK_CHANNELS,
    DEPTH,
    HIDDEN,
    bottleneck_side,
    build_member,
    dec_channels,
    enc_channels,
    memory_attention,
)


class _GroupedConv(nn.Module):
    """K convolutions k4 s2 p1 without bias as one grouped (transposed) convolution."""

    def __init__(self, members: int, cin: int, cout: int, transposed: bool):
        super().__init__()
        self.members, self.transposed = members, transposed
        # conv weight: (K·cout, cin, 4, 4); transposed conv weight: (K·cin, cout, 4, 4).
        shape = (members * cin, cout, 4, 4) if transposed else (members * cout, cin, 4, 4)
        self.weight = nn.Parameter(torch.empty(shape))
        # With one or two channels per member (first conv, last transposed conv) the grouped
        # kernel's weight gradient differs in the last bits from a single member's conv, and Adam
        # turns such noise into lr-sized steps on gradient-free directions. Looping over members
        # for these two cheap layers keeps the batched and the one-member paths bit-identical.
        self.loop = min(cin, cout) <= 2

    def _conv(self, x: torch.Tensor, w: torch.Tensor, groups: int) -> torch.Tensor:
        if self.transposed:
            return F.conv_transpose2d(x, w, stride=2, padding=1, groups=groups)
        return F.conv2d(x, w, stride=2, padding=1, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, K·cin, H, W) -> (B, K·cout, H·2^±1, W·2^±1)."""
        if not self.loop or self.members == 1:
            return self._conv(x, self.weight, self.members)
        xs, ws = x.chunk(self.members, 1), self.weight.chunk(self.members, 0)
        return torch.cat([self._conv(xi.contiguous(), wi, 1) for xi, wi in zip(xs, ws)], 1)


class _BatchedLinear(nn.Module):
    """K linear layers: x (K, B, in) -> (K, B, out) in one batched matmul.

    The weight is stored (K, in, out), transposed against nn.Linear's (out, in): then its gradient
    comes out of the matmul already in the parameter's layout and autograd need not copy it
    (that copy cost as much as the layer itself on CPU).
    """

    def __init__(self, members: int, fin: int, fout: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, fin, fout))
        self.bias = nn.Parameter(torch.empty(members, fout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)


class _BatchedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d of K members on (K, B, F): one BN over K·F features, i.e. per-member stats."""

    def __init__(self, members: int, features: int):
        super().__init__(members * features)
        self.members = members

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, b, f = x.shape
        y = super().forward(x.transpose(0, 1).reshape(b, k * f))
        return y.view(b, k, f).transpose(0, 1)


# How each state-dict entry of a plain member maps onto the batched one.
_CAT, _STACK, _STACK_T, _SHARED = "cat", "stack", "stack_t", "shared"


class BatchedEnsemble(nn.Module):
    """K members of one backbone ("ae", "memae" or "aeu") evaluated and trained together.

    ``forward(x)`` with x (B, 1, s, s) in [-1, 1] feeds the same images to every member and returns
    reconstructions (K, B, 1, s, s) for ae/memae, or a tuple (mean, logvar), each (K, B, 1, s, s),
    for aeu. Training uses :meth:`forward_batches`, where every member sees its own batch.
    """

    def __init__(self, backbone: str, members: int, size: int = 64, latent_dim: int = 16,
                 memory_items: int = 25, shrink_threshold: float = 0.0, depth: int = DEPTH):
        super().__init__()
        if backbone not in ("ae", "memae", "aeu"):
            raise ValueError(f"backbone {backbone!r}: use ae, memae or aeu")
        self.backbone, self.members, self.size, self.depth = backbone, members, size, depth
        self.side = bottleneck_side(size, depth)
        self.out_channels = 2 if backbone == "aeu" else 1
        self.shrink_threshold = shrink_threshold
        k, flat = members, BOTTLENECK_CHANNELS * self.side**2
        enc: list[nn.Module] = []
        ch = enc_channels(depth)
        for cin, cout in zip(ch[:-1], ch[1:]):
            enc += [_GroupedConv(k, cin, cout, False), nn.BatchNorm2d(k * cout), nn.ReLU(inplace=True)]
        self.encoder = nn.Sequential(*enc)
        self.fc_enc = nn.Sequential(_BatchedLinear(k, flat, HIDDEN), _BatchedBatchNorm1d(k, HIDDEN),
                                    nn.ReLU(inplace=True), _BatchedLinear(k, HIDDEN, latent_dim))
        self.fc_dec = nn.Sequential(_BatchedLinear(k, latent_dim, HIDDEN), _BatchedBatchNorm1d(k, HIDDEN),
                                    nn.ReLU(inplace=True), _BatchedLinear(k, HIDDEN, flat))
        dec: list[nn.Module] = []
        ch = dec_channels(depth)
        for cin, cout in zip(ch[:-1], ch[1:]):
            dec += [_GroupedConv(k, cin, cout, True), nn.BatchNorm2d(k * cout), nn.ReLU(inplace=True)]
        dec.append(_GroupedConv(k, ch[-1], self.out_channels, True))
        self.decoder = nn.Sequential(*dec)
        if backbone == "memae":
            self.memory = nn.Parameter(torch.empty(k, memory_items, latent_dim))

    # ---------------------------------------------------------------------------------------
    def forward_batches(self, xk: torch.Tensor) -> dict[str, torch.Tensor]:
        """Member-wise batches: xk (B, K, s, s), column k = member k's images in [-1, 1].

        Returns, in the same member-in-dim-1 layout: ``recon`` (B, K, s, s), ``logvar``
        (B, K, s, s) for aeu, ``attention`` (K, B, items) for memae.
        """
        b, k = xk.shape[:2]
        h = self.encoder(xk)                                       # (B, K·64, side, side)
        z = self.fc_enc(h.reshape(b, k, -1).transpose(0, 1))          # (K, B, latent)
        out: dict[str, torch.Tensor] = {}
        if self.backbone == "memae":
            att = memory_attention(z, self.memory, self.shrink_threshold)  # (K, B, items)
            z = att @ self.memory
            out["attention"] = att
        h = self.fc_dec(z).transpose(0, 1).reshape(b, k * BOTTLENECK_CHANNELS, self.side, self.side)
        y = self.decoder(h).view(b, k, self.out_channels, self.size, self.size)
        out["recon"] = y[:, :, 0]
        if self.backbone == "aeu":
            out["logvar"] = y[:, :, 1]
        return out

    def forward(self, x: torch.Tensor):
        """x (B, 1, s, s) -> (K, B, 1, s, s), or (mean, logvar) each (K, B, 1, s, s) for aeu."""
        out = self.forward_batches(x.expand(-1, self.members, -1, -1).contiguous())
        recon = out["recon"].transpose(0, 1).unsqueeze(2).contiguous()
        if self.backbone == "aeu":
            return recon, out["logvar"].transpose(0, 1).unsqueeze(2).contiguous()
        return recon

    # ---------------------------------------------------------------------------------------
    def rule_of(self, key: str) -> str:
        """How state-dict entry ``key`` holds the members: 'cat' (channel blocks along dim 0),
        'stack' (a leading K dim), 'stack_t' (leading K dim, each member transposed: linear
        weights) or 'shared' (one value for all, BN's batch counter)."""
        owner, name = key.rsplit(".", 1) if "." in key else ("", key)
        if name == "num_batches_tracked":
            return _SHARED
        if isinstance(self.get_submodule(owner), _BatchedLinear):
            return _STACK_T if name == "weight" else _STACK
        return _STACK if key == "memory" else _CAT

    def split(self, key: str, value: torch.Tensor, i: int) -> torch.Tensor:
        """Member i's part of the batched entry ``key`` (a copy)."""
        rule = self.rule_of(key)
        if rule == _SHARED:
            part = value
        elif rule == _STACK:
            part = value[i]
        elif rule == _STACK_T:
            part = value[i].t()
        else:
            part = value.chunk(self.members, 0)[i]
        return part.clone(memory_format=torch.contiguous_format)

    def join(self, key: str, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`split` over all members."""
        rule = self.rule_of(key)
        if rule == _SHARED:
            return parts[0].clone()
        if rule == _STACK_T:
            return torch.stack([p.t() for p in parts])
        return torch.stack(list(parts)) if rule == _STACK else torch.cat(list(parts), 0)

    def member_state_dict(self, i: int) -> dict[str, torch.Tensor]:
        """Member i as a plain :mod:`autoencoders` state dict (CPU tensors)."""
        return {key: self.split(key, v.detach(), i).cpu() for key, v in self.state_dict().items()}

    def load_member_states(self, states: Sequence[dict[str, torch.Tensor]]) -> None:
        """Set all K members from plain state dicts (one per member, in order)."""
        if len(states) != self.members:
            raise ValueError(f"{len(states)} member states for an ensemble of {self.members}")
        own = self.state_dict()
        joined = {key: self.join(key, [s[key] for s in states]).to(own[key].device) for key in own}
        self.load_state_dict(joined)


def stack_members(members: Sequence[nn.Module], backbone: str) -> BatchedEnsemble:
    """Batched model holding copies of plain members (same backbone, size, latent size, depth)."""
    first = members[0]
    ens = BatchedEnsemble(backbone, len(members), first.size, first.latent_dim,
                          getattr(first, "memory", torch.empty(25, 1)).shape[0],
                          getattr(first, "shrink_threshold", 0.0), first.depth)
    ens.load_member_states([m.state_dict() for m in members])
    return ens


def init_members(backbone: str, seeds: Sequence[int], size: int, **arch) -> BatchedEnsemble:
    """Batched model whose member k is a plain member initialised under ``torch.manual_seed(seeds[k])``.

    The global RNG is restored afterwards. A member's initial weights depend only on its seed,
    so the batched and the one-member-per-process paths start from the same weights.
    """
    plain = []
    for seed in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            plain.append(build_member(backbone, size, **arch))
    return stack_members(plain, backbone)
