"""Training a batched ensemble: one optimizer step for K members at once, checkpoints per member.

One :class:`GroupTrainer` trains K members of one module together (one batched model, one
optimizer, one shuffling generator per member). Its state splits into one checkpoint per member
(:meth:`GroupTrainer.member_checkpoint`), so checkpoints written by the batched path and by the
one-member-per-process path (``--member i``) are the same files and either can resume the other.

Determinism: member k's initial weights depend only on its seed (global RNG forked and seeded
while it is built), its batch order only on a ``torch.Generator`` seeded with the same seed, and
nothing else draws random numbers. A checkpoint holds weights, BN statistics, Adam moments and
step, and the generator state at an epoch boundary, so a resumed run repeats the uninterrupted
one bit for bit on the same device and thread count.

The epoch loop itself (signals, NaN guard, checkpoint cadence) is :func:`cxrad.training_loop.fit`;
no file paths here: the stage decides where checkpoints go.
"""

from __future__ import annotations

import copy
from typing import Callable, Iterator, Sequence

import torch

from cxrad.methods.ddad.ensemble import BatchedEnsemble, init_members
from cxrad.methods.ddad.weight_average import ema_decay_at, ema_update, precise_bn

CHECKPOINT_FORMAT = 1


def full_batches(data: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive batches (B, 1, s, s), channels_last, of data (N, s, s) in a fixed order; the
    incomplete last batch is dropped (one short batch when N < batch_size)."""
    for j in range(max(len(data) // batch_size, 1)):
        yield data[j * batch_size:(j + 1) * batch_size, None].contiguous(memory_format=torch.channels_last)


def make_optimizer(model: torch.nn.Module, lr: float, betas: Sequence[float], weight_decay: float):
    # The fused kernel updates all 13.5 M parameters of a K=3 ensemble in one pass; the default
    # per-tensor path costs ~4x more on CPU. Adam is elementwise, so grouping does not mix members.
    return torch.optim.Adam(model.parameters(), lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                            fused=True)


class GroupTrainer:
    """K members of one backbone trained together on one data tensor.

    ``arch``: size, latent_dim, memory_items, shrink_threshold (see BatchedEnsemble).
    ``ema_decay`` > 0 keeps an exponential moving average of every member's weights, updated after
    each step (:meth:`final_model` returns it with recomputed BN statistics).
    """

    def __init__(self, backbone: str, seeds: Sequence[int], arch: dict, lr: float, betas, weight_decay: float,
                 device: torch.device, checkpoints: Sequence[dict] | None = None, amp: bool = False,
                 ema_decay: float = 0.0):
        self.backbone, self.seeds, self.device = backbone, list(seeds), device
        # bf16 autocast of the forward pass (CUDA or CPU); losses are computed in float32.
        self.amp = bool(amp)
        k = len(self.seeds)
        if checkpoints is None:
            size = arch["size"]
            rest = {key: v for key, v in arch.items() if key != "size"}
            self.model = init_members(backbone, self.seeds, size, **rest)
        else:
            self.model = BatchedEnsemble(backbone, k, **arch)
            self.model.load_member_states([c["model"] for c in checkpoints])
        # channels_last: ~10% faster convolutions on CPU (oneDNN) and what cuDNN prefers; the
        # batched and the one-member paths stay bit-identical with it (tested).
        self.model.to(device, memory_format=torch.channels_last).train()
        self.optimizer = make_optimizer(self.model, lr, betas, weight_decay)
        self.ema_decay = float(ema_decay)
        self.ema = copy.deepcopy(self.model).requires_grad_(False) if self.ema_decay > 0 else None
        self.steps = 0
        self.generators = [torch.Generator().manual_seed(int(s)) for s in self.seeds]
        self.epoch = 0
        self.history: list[list[float]] = [[] for _ in range(k)]
        self.wall_s = [0.0] * k
        if checkpoints is not None:
            self._restore(checkpoints)

    # ------------------------------------------------------------------------------------------
    def run_epoch(self, data: torch.Tensor, batch_size: int, loss_fn: Callable) -> list[float]:
        """One epoch for every member; data (N, s, s) in [-1, 1] on the device -> mean losses (K,).

        Each member draws its own permutation of the N images; batches are slices of it
        (the last, incomplete batch is dropped). The gather ``data[idx]`` builds the (B, K, s, s)
        batch of all members in one indexing op: no per-image Python work.
        """
        n, k = data.shape[0], self.model.members
        perms = torch.stack([torch.randperm(n, generator=g) for g in self.generators]).to(self.device)
        total = torch.zeros(k, device=self.device)
        steps = n // batch_size
        for j in range(steps):
            idx = perms[:, j * batch_size:(j + 1) * batch_size].t()       # (B, K)
            xk = data[idx]                                                  # (B, K, s, s)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                out = self.model.forward_batches(xk)
            if self.amp:
                out = {key: v.float() for key, v in out.items()}
            loss = loss_fn(out, xk)                                         # (K,)
            self.optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()
            self.optimizer.step()
            self._update_ema()
            total += loss.detach()
        self.epoch += 1
        # One device->host sync per epoch, not per step.
        return (total / max(steps, 1)).tolist()

    @torch.no_grad()
    def _update_ema(self) -> None:
        self.steps += 1
        if self.ema is not None:
            ema_update(self.ema, self.model, ema_decay_at(self.ema_decay, self.steps))

    @torch.no_grad()
    def final_model(self, data: torch.Tensor, batch_size: int) -> BatchedEnsemble:
        """The weights to keep, in eval mode: the trained model, or with ``ema_decay`` the averaged
        weights with BatchNorm statistics recomputed over ``data`` (N, s, s) in [-1, 1]: one pass
        of full batches in a fixed order, the same for every member, so a member's result does not
        depend on how members were grouped (:func:`~cxrad.methods.ddad.weight_average.precise_bn`).
        """
        if self.ema is None:
            return self.model.eval()
        # fp32 even with amp: scoring runs the kept weights in fp32, so must their BN statistics
        return precise_bn(self.ema, full_batches(data, batch_size))

    # ------------------------------------------------------------------------------------------
    def member_checkpoint(self, i: int) -> dict:
        """Everything member i needs to continue exactly: plain tensors and numbers only
        (loadable with ``torch.load(weights_only=True)``)."""
        names = [n for n, _ in self.model.named_parameters()]
        state = self.optimizer.state_dict()["state"]
        opt: dict[str, dict[str, torch.Tensor]] = {"step": {}, "exp_avg": {}, "exp_avg_sq": {}}
        for idx, name in enumerate(names):
            if idx not in state:
                continue
            s = state[idx]
            opt["step"][name] = s["step"].detach().cpu().clone()
            opt["exp_avg"][name] = self.model.split(name, s["exp_avg"].detach(), i).cpu()
            opt["exp_avg_sq"][name] = self.model.split(name, s["exp_avg_sq"].detach(), i).cpu()
        return {
            "format": CHECKPOINT_FORMAT,
            "backbone": self.backbone,
            "seed": int(self.seeds[i]),
            "epoch": self.epoch,
            "model": self.model.member_state_dict(i),
            "optimizer": opt,
            "generator": self.generators[i].get_state(),
            "history": list(self.history[i]),
            "wall_s": float(self.wall_s[i]),
            "steps": self.steps,
            "ema": self.ema.member_state_dict(i) if self.ema is not None else None,
        }

    def _restore(self, checkpoints: Sequence[dict]) -> None:
        epochs = {c["epoch"] for c in checkpoints}
        if len(epochs) != 1:
            raise ValueError(f"checkpoints of one group must share the epoch, got {sorted(epochs)}")
        self.epoch = epochs.pop()
        names = [n for n, _ in self.model.named_parameters()]
        params = dict(self.model.named_parameters())
        sd = self.optimizer.state_dict()
        state = {}
        if checkpoints[0]["optimizer"]["step"]:
            for idx, name in enumerate(names):
                # Moments get the parameter's exact layout (channels_last strides included): the
                # fused kernel walks parameter and moments side by side.
                state[idx] = {"step": checkpoints[0]["optimizer"]["step"][name].clone()}
                for moment in ("exp_avg", "exp_avg_sq"):
                    joined = self.model.join(name, [c["optimizer"][moment][name] for c in checkpoints])
                    state[idx][moment] = torch.empty_like(params[name]).copy_(joined)
        sd["state"] = state
        self.optimizer.load_state_dict(sd)
        for g, c in zip(self.generators, checkpoints):
            g.set_state(c["generator"])
        self.steps = int(checkpoints[0].get("steps", 0))
        if self.ema is not None:
            if any(c.get("ema") is None for c in checkpoints):
                raise ValueError("the checkpoints hold no weight average; resume with the ema_decay they were made "
                                 "with")
            self.ema.load_member_states([c["ema"] for c in checkpoints])
        self.history = [list(c["history"]) for c in checkpoints]
        self.wall_s = [float(c["wall_s"]) for c in checkpoints]


class BoundTrainer:
    """A GroupTrainer with its data, batch size and loss bound: what :func:`cxrad.training_loop.fit`
    drives (an ``epoch`` counter and a ``run_epoch()`` without arguments)."""

    def __init__(self, trainer: GroupTrainer, data: torch.Tensor, batch_size: int, loss_fn: Callable):
        self.trainer, self.data, self.batch_size, self.loss_fn = trainer, data, batch_size, loss_fn

    @property
    def epoch(self) -> int:
        return self.trainer.epoch

    def run_epoch(self) -> list[float]:
        return self.trainer.run_epoch(self.data, self.batch_size, self.loss_fn)
