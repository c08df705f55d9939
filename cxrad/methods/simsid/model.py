"""SimSID's networks as in the official code (models/squid.py, inpaint.py, basic_modules.py,
discriminator.py): patch encoder, in-painting block, student and teacher decoders, discriminator.

Shapes for size S, grid g (patch p = S/g), width w (32), batch B, P = g*g patches:

* encoder, per patch: in-conv 1 -> w at p, then 4 stride-2 residual double-convs to 16w at p/16;
* in-painting block on the bottleneck (B*P, 16w, p/16, p/16) -> the same shape;
* decoders: up blocks 16w -> 8w -> 4w -> 2w -> w (bilinear x2, concat of the encoder skip on the
  two inner levels); the patches are put back together into the full image before the two outer
  levels; 1x1 conv + tanh -> (B, 1, S, S). The student has a learned memory after each inner up
  block; the teacher reads the *detached* bottleneck and skips;
* discriminator on the full image -> (B, 1) logit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cxrad.methods.simsid.config import LEVELS, REDUCE, SimSIDConfig
from cxrad.methods.simsid.memory import LearnedMemory, MemoryQueue, from_patches, neighbours, position_code, to_patches

INNER = 2   # decoder levels that work on patches (with skip concat and student memory)


class DoubleConv(nn.Module):
    """conv3x3(stride) -> BN -> ReLU, then a residual conv3x3 -> BN -> ReLU -> conv3x3 -> BN,
    added to the first conv's output, ReLU (the official ``double_conv``)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                                   nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return F.relu(self.conv2(x) + x)


class Up(nn.Module):
    """Bilinear resize to the skip's size, optional concat [skip, x], DoubleConv."""

    def __init__(self, cin: int, cout: int, concat: bool):
        super().__init__()
        self.concat = concat
        self.conv = DoubleConv(cin, cout)

    def forward(self, x: torch.Tensor, size: tuple[int, int], skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, size, mode="bilinear", align_corners=False)
        if self.concat:
            x = torch.cat([skip, x], dim=1)
        return self.conv(x)


class Decoder(nn.Module):
    """Four up blocks (16w -> w) and the 1x1 output conv; the student variant has learned memories."""

    def __init__(self, cfg: SimSIDConfig, memories: bool):
        super().__init__()
        f = [cfg.width * 2 ** i for i in range(LEVELS + 1)]        # w, 2w, 4w, 8w, 16w
        self.ups = nn.ModuleList()
        for i in range(LEVELS):
            cin = f[LEVELS - i] + (f[LEVELS - i - 1] if i < INNER else 0)
            self.ups.append(Up(cin, f[LEVELS - i - 1], concat=i < INNER))
        self.memories = nn.ModuleList()
        if memories:
            last = cfg.size // cfg.grid // 2 ** LEVELS           # bottleneck side of a patch
            for i in range(INNER):
                side = last * 2 ** (i + 1) // cfg.grid            # window side inside a patch
                self.memories.append(LearnedMemory(cfg.grid, cfg.memory_slots, f[LEVELS - i - 1] * side * side,
                                                   cfg.memory_topk))
        self.out = nn.Conv2d(cfg.width, 1, 1)
        self.grid = cfg.grid

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor], sizes: list[tuple[int, int]]
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x: bottleneck (B*P, 16w, b, b); skips: the encoder's inner patch skips (deepest first);
        sizes: the target side of each level -> (image (B, 1, S, S) in [-1, 1], features per level)."""
        feats = []
        for i, up in enumerate(self.ups):
            if i == INNER:
                x = from_patches(x, self.grid)
            x = up(x, sizes[i], skips[i] if i < INNER else None)
            if i < len(self.memories):
                x = self.memories[i](x)
            feats.append(x)
        return torch.tanh(self.out(x)), feats


class InpaintBlock(nn.Module):
    """The official ``InpaintBlock`` with a memory queue, without its no-op parts (mask ratio 1.0).

    1x1 conv 16w -> 4w (+BN, ReLU); each patch's map flattened to D = 4w * b * b; read its
    position's queue -> n; multi-head attention with the patch's own feature as the query and its
    8 neighbours' read-outs (zero beyond the grid) as keys/values; n = relu(LN(attn) + n); n =
    relu(LN(FF(n)) + n) with FF D -> D/4 -> D; back to (4w, b, b), binary position code
    concatenated, 1x1 conv -> 16w (+BN, ReLU). ``pending`` holds the detached features that
    :meth:`commit` enqueues after the generator step (the official enque/update pair).
    """

    def __init__(self, cfg: SimSIDConfig):
        super().__init__()
        cin = cfg.width * 2 ** LEVELS
        side = cfg.size // cfg.grid // 2 ** LEVELS
        self.grid, self.positions = cfg.grid, cfg.grid ** 2
        self.dim = cin // REDUCE * side * side
        self.reduce = nn.Sequential(nn.Conv2d(cin, cin // REDUCE, 1, bias=False), nn.BatchNorm2d(cin // REDUCE),
                                    nn.ReLU())
        self.queue = MemoryQueue(self.positions, cfg.memory_slots, self.dim, cfg.memory_topk)
        self.attention = nn.MultiheadAttention(self.dim, cfg.heads, batch_first=True)
        self.norm1 = nn.LayerNorm(self.dim)
        self.ff = nn.Sequential(nn.Linear(self.dim, self.dim // 4), nn.ReLU(), nn.Linear(self.dim // 4, self.dim))
        self.norm2 = nn.LayerNorm(self.dim)
        self.register_buffer("code", position_code(self.positions), persistent=False)
        self.expand = nn.Sequential(nn.Conv2d(cin // REDUCE + self.code.shape[1], cin, 1), nn.BatchNorm2d(cin),
                                    nn.ReLU())
        self.pending: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B*P, 16w, b, b) -> (B*P, 16w, b, b)."""
        n_p, _, b, _ = x.shape
        bs = n_p // self.positions
        f = self.reduce(x)
        c = f.shape[1]
        f = f.reshape(bs, self.positions, self.dim)
        n = self.queue.read(f)                                        # (bs, P, D)
        if self.training:
            self.pending = f.detach()
        keys = neighbours(n, self.grid).reshape(n_p, 8, self.dim)
        attn = self.attention(f.reshape(n_p, 1, self.dim), keys, keys, need_weights=False)[0]
        n = F.relu(self.norm1(attn) + n.reshape(n_p, 1, self.dim))
        n = F.relu(self.norm2(self.ff(n)) + n)
        n = n.reshape(bs, self.positions, c, b, b)
        code = self.code.view(1, self.positions, -1, 1, 1).expand(bs, -1, -1, b, b)
        return self.expand(torch.cat([n, code], dim=2).reshape(n_p, -1, b, b))

    def commit(self) -> None:
        """Enqueue the features of the last training forward pass (after the generator step)."""
        if self.pending is not None:
            self.queue.push(self.pending)
            self.pending = None


class Generator(nn.Module):
    """Encoder + in-painting block + student and teacher decoders (official ``squid.AE``)."""

    def __init__(self, cfg: SimSIDConfig):
        super().__init__()
        f = [cfg.width * 2 ** i for i in range(LEVELS + 1)]
        self.grid = cfg.grid
        self.inc = DoubleConv(1, f[0])
        self.downs = nn.ModuleList([DoubleConv(f[i], f[i + 1], stride=2) for i in range(LEVELS)])
        self.inpaint = InpaintBlock(cfg)
        self.student = Decoder(cfg, memories=True)
        self.teacher = Decoder(cfg, memories=False)

    def forward(self, x: torch.Tensor, teacher: bool = True) -> dict[str, torch.Tensor]:
        """x (B, 1, S, S) in [-1, 1] -> recon, teacher_recon (B, 1, S, S) and dist_loss (scalar:
        sum over the 4 decoder levels of the MSE between student and teacher features).
        ``teacher=False``: the student's reconstruction only (scoring, discriminator-only steps:
        the teacher changes neither the reconstruction nor anything the scores use)."""
        _, _, h, w = x.shape
        z = self.inc(to_patches(x, self.grid))
        skips, sizes = [], []
        for i, down in enumerate(self.downs):
            side = z.shape[-1]
            # the decoder's level LEVELS-1-i returns to this side (whole image for the outer levels)
            sizes.append((side * self.grid, side * self.grid) if i < LEVELS - INNER else (side, side))
            skips.append(z)
            z = down(z)
        sizes, inner_skips = sizes[::-1], skips[::-1][:INNER]
        student, s_feats = self.student(self.inpaint(z), inner_skips, sizes)
        if not teacher:
            return {"recon": student}
        t_recon, t_feats = self.teacher(z.detach(), [s.detach() for s in inner_skips], sizes)
        dist = torch.stack([F.mse_loss(s, t) for s, t in zip(s_feats, t_feats)]).sum()
        return {"recon": student, "teacher_recon": t_recon, "dist_loss": dist}


class Discriminator(nn.Module):
    """Five 5x5 stride-2 convs 1 -> 16 -> 32 -> 64 -> 128 -> 256, LeakyReLU 0.2, BN on all but the
    first, linear -> one logit (official ``SimpleDiscriminator``, num_layers 4)."""

    def __init__(self, size: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, 16, 5, 2, 2), nn.LeakyReLU(0.2)]
        cout = 16
        for i in range(4):
            cin, cout = cout, min(16 * 2 ** (i + 1), 256)
            layers += [nn.Conv2d(cin, cout, 5, 2, 2), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2)]
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(cout * (size // 32) ** 2, 1)

    def forward(self, x: torch.Tensor, per_image_norm: bool = False) -> torch.Tensor:
        """x (B, 1, S, S) -> (B, 1). ``per_image_norm``: every BN normalises each image by its own
        statistics (what the official code's train-mode D does at scoring, one image per batch),
        batched; running statistics are neither used nor updated."""
        if not per_image_norm:
            return self.head(self.layers(x).flatten(1))
        for layer in self.layers:
            if isinstance(layer, nn.BatchNorm2d):
                x = F.instance_norm(x, weight=layer.weight, bias=layer.bias, eps=layer.eps)
            else:
                x = layer(x)
        return self.head(x.flatten(1))
