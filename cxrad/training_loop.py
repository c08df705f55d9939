"""The epoch loop every cxrad training shares: checkpoints, stop signals, NaN guard, resume.

A trainer is any object with an ``epoch`` counter and a ``run_epoch()`` that trains one epoch and
returns its mean loss per trained model. :func:`fit` runs epochs until the budget, saves through a
callback every ``checkpoint_every`` epochs, turns SIGTERM/SIGUSR1 (SLURM's walltime warning) into a
checkpoint of the finished epoch and :class:`Interrupted`, and stops with :class:`Diverged` on a
non-finite loss before anything of that epoch is saved. Used by the DDAD ensembles and ASR-Net.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from typing import Any, Callable, Iterator, Protocol, Sequence

from cxrad import progress


class EpochTrainer(Protocol):
    epoch: int

    def run_epoch(self) -> list[float]: ...


class Diverged(RuntimeError):
    """A member's epoch loss is NaN or infinite; nothing after the last checkpoint was saved."""

    def __init__(self, epoch: int, member: int, value: float):
        super().__init__(f"loss of member {member} is {value} at epoch {epoch}")
        self.epoch, self.member, self.value = epoch, member, value


class Interrupted(RuntimeError):
    """SIGTERM/SIGUSR1 arrived; a checkpoint of the finished epoch was saved before raising."""

    def __init__(self, signum: int, epoch: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} after epoch {epoch}")
        self.signum, self.epoch = signum, epoch


@contextlib.contextmanager
def stop_requests(signals: Sequence[int] = (signal.SIGTERM, signal.SIGUSR1)) -> Iterator[dict]:
    """While active, SIGTERM/SIGUSR1 (SLURM's walltime warnings) only set ``flag["signum"]``;
    the loop checkpoints at the end of the epoch and stops. Handlers are restored on exit."""
    flag: dict = {"signum": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signal handlers can only be installed from the main thread
        return

    def handler(signum, _frame):
        flag["signum"] = signum

    old = {s: signal.signal(s, handler) for s in signals}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def fit(trainer: EpochTrainer, *, epochs: int, checkpoint_every: int, save: Callable[[Any], None],
        on_epoch: Callable[[int, list[float], float], None], label: str) -> None:
    """Call ``trainer.run_epoch()`` until ``trainer.epoch == epochs``.

    Calls ``on_epoch(epoch, losses, seconds)`` after every epoch and ``save(trainer)`` every
    ``checkpoint_every`` epochs and on a stop signal (then raises :class:`Interrupted`). A
    non-finite loss raises :class:`Diverged` before anything of that epoch is saved, so the last
    checkpoint stays the last good state.
    """
    with stop_requests() as stop, progress.task(label, epochs) as bar:
        if trainer.epoch:
            bar.advance(trainer.epoch, info=f"resumed at epoch {trainer.epoch}", resumed=True)
        start_epoch, t_start = trainer.epoch, time.monotonic()
        while trainer.epoch < epochs:
            t0 = time.monotonic()
            losses = trainer.run_epoch()
            dt = time.monotonic() - t0
            for i, value in enumerate(losses):
                if not math.isfinite(value):
                    raise Diverged(trainer.epoch, i, value)
            on_epoch(trainer.epoch, losses, dt)
            if trainer.epoch % checkpoint_every == 0 or stop["signum"] is not None:
                if trainer.epoch < epochs or stop["signum"] is not None:
                    save(trainer)
            if stop["signum"] is not None:
                raise Interrupted(stop["signum"], trainer.epoch)
            per_epoch = (time.monotonic() - t_start) / (trainer.epoch - start_epoch)
            eta = per_epoch * (epochs - trainer.epoch)
            bar.advance(1, info=f"epoch {trainer.epoch}/{epochs} loss "
                                + " ".join(f"{v:.4f}" for v in losses) + f" ETA {eta:.0f}s")
