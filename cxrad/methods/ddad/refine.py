"""`cxrad refine`: train ASR-Net on maps of FPI pseudo-anomalies -> RUN/refine/<dual|intra>/.

Every batch: apply the stored recipes (maps or images of the normal pool) on the device, build the
input maps, one focal-loss step. No per-sample Python, no test data, no selection: the kept model
is the final one (its EMA weights, with BatchNorm statistics recomputed over one synthetic epoch;
docs/method.md, "ASR-Net", says why). The epoch loop is the one every cxrad training uses
(cxrad/training_loop.py): SIGTERM/SIGUSR1 checkpoint the finished epoch and stop, ``--resume``
continues bit for bit, a non-finite loss stops before anything of that epoch is saved.

Folder: ``asr.pt`` (the kept model + what applying it needs: inputs, channel scales),
``checkpoint.ckpt`` (resume state, atomic), ``log.json`` (per-epoch loss), ``manifest.json``.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from cxrad import locks, progress
from cxrad.artifacts import (
    begin_output,
    finish_output,
    input_record,
    load_torch,
    read_manifest,
    remove_stale_temporaries,
    save_torch_atomic,
    write_json_atomic,
    write_manifest,
)
from cxrad.config import identity_digest
from cxrad.devices import device_name, resolve_device
from cxrad.errors import CxradError
from cxrad.io.store import load_split
from cxrad.layout import ASR_CHECKPOINT, ASR_LOG, ASR_MODEL, MANIFEST, PARTIAL_MARKER
from cxrad.methods.ddad.asr_net import INPUT_CHANNELS, ASRNet, focal_loss
from cxrad.methods.ddad.config import RefineConfig
from cxrad.methods.ddad.ensembles import open_ensembles, to_network_space
from cxrad.methods.ddad.recipes_store import read_recipes, synth_epochs, synth_space, verify_recipes
from cxrad.methods.ddad.refinement import (
    channel_stats,
    input_scales,
    level_gains,
    stacked_maps,
    synthetic_batches,
    top_donors,
)
from cxrad.methods.ddad.weight_average import ema_decay_at, ema_update, precise_bn
from cxrad.runs import open_run
from cxrad.training_loop import Diverged, Interrupted, fit


class ASRTrainer:
    """ASR-Net, its optimiser and weight average, one epoch of stored recipes at a time.

    ``batches(epoch, recipes, batch_size)`` yields (input (B, C, H, W), mask (B, H, W)); it holds
    the frozen ensembles, the normal pool and the input scaling.
    """

    def __init__(self, cfg: RefineConfig, synth: Path, batches: Callable, device: torch.device):
        self.cfg, self.synth, self.batches = cfg, synth, batches
        torch.manual_seed(cfg.seed)
        self.net = ASRNet(len(INPUT_CHANNELS[cfg.inputs]), cfg.hidden_channels).to(device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, betas=tuple(cfg.betas),
                                    weight_decay=cfg.weight_decay)
        self.ema = copy.deepcopy(self.net) if cfg.ema_decay > 0 else None
        self.device_type = device.type
        self.epoch, self.step = 0, 0
        self.log: list[dict[str, Any]] = []

    def run_epoch(self) -> list[float]:
        cfg, te = self.cfg, time.perf_counter()
        recipes = read_recipes(self.synth, self.epoch)
        self.net.train()
        losses = []
        for x, mask in self.batches(self.epoch, recipes, cfg.batch_size):
            with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=cfg.amp):
                logits = self.net(x)
            loss = focal_loss(logits, mask, cfg.focal_gamma)  # in float32 (it casts the logits)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.step += 1
            if self.ema is not None:
                ema_update(self.ema, self.net, ema_decay_at(cfg.ema_decay, self.step))
            losses.append(loss.item())
        self.epoch += 1
        mean = float(np.mean(losses))
        self.log.append({"epoch": self.epoch, "loss": mean, "seconds": time.perf_counter() - te})
        return [mean]

    def kept_model(self) -> nn.Module:
        """The model to keep after the epochs done so far, in eval mode (EMA + precise BN).

        Precise BN runs in fp32 even with ``amp``: the statistics must be those of the fp32 forward
        pass that scoring uses."""
        model = copy.deepcopy(self.ema if self.ema is not None else self.net)
        if self.cfg.precise_bn:  # over the last epoch's inputs, as training saw them
            last = self.epoch - 1
            precise_bn(model, (x for x, _ in self.batches(last, read_recipes(self.synth, last),
                                                          max(self.cfg.batch_size, 32))))
        return model.eval()

    def checkpoint(self, digest: str, scales, clip) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else {}, "rng": torch.get_rng_state(),
                "epoch": self.epoch, "step": self.step, "log": json.dumps(self.log), "scales": scales,
                "clip": clip, "config_sha256": digest}

    def restore(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng"])
        self.epoch, self.step, self.log = int(state["epoch"]), int(state["step"]), json.loads(state["log"])


def _begin(out: Path, cfg: RefineConfig, *, resume: bool, force: bool) -> bool:
    """Prepare the output folder; False when a finished artifact of this config is already there."""
    ckpt = out / ASR_CHECKPOINT
    if resume:
        if not ckpt.is_file():
            raise CxradError(f"{out}: nothing to resume (no {ASR_CHECKPOINT}); run without --resume.")
        locks.acquire(out)  # as begin_output does; finish_output releases it
        # the old manifest must not describe the files this run rewrites
        (out / MANIFEST).unlink(missing_ok=True)
        (out / PARTIAL_MARKER).touch()
        return True
    if not begin_output(out, "refine", cfg, force=force):
        return False
    ckpt.unlink(missing_ok=True)  # a fresh start must not mix with an old checkpoint
    return True


def refine(run: Path, cfg: RefineConfig, resume: bool = False, force: bool = False, *,
           synth: Path | None = None, out: Path | None = None,
           on_epoch: Optional[Callable[[int, Callable[[], dict[str, Any]]], None]] = None) -> Path:
    """Train ASR-Net; returns the refine folder.

    ``synth``/``out`` default to RUN/synth and RUN/refine/<inputs>. ``on_epoch(epoch, kept)`` is for
    analysis (benchmarks): ``kept()`` builds an eval-mode copy of the model as the scorer would use
    it (EMA + precise BN over the epoch's batches: a third of an epoch's compute, so a caller that
    looks at some epochs only pays for those). It must not influence training; nothing is selected
    from it.
    """
    cfg.validate()
    if resume and force:
        raise CxradError("--resume and --force exclude each other: --resume continues, --force restarts.")
    info = open_run(run)
    device = resolve_device(cfg.device)
    ens = open_ensembles(info, device, need_udm=cfg.inputs == "dual", command="cxrad refine")
    if cfg.inputs == "intra":
        ens.udm = None  # intra inputs never need the UDM; skip its forward pass
    synth = Path(synth) if synth is not None else info.layout.synth
    read_manifest(synth, "synth")
    if synth_epochs(synth) < cfg.epochs:
        raise CxradError(
            f"{synth}: holds FPI recipes for {synth_epochs(synth)} epochs, refine asks for {cfg.epochs}; "
            f"run `cxrad synthesize --epochs {cfg.epochs} --force` first."
        )
    verify_recipes(synth)
    out = Path(out) if out is not None else info.layout.refine(cfg.inputs)
    digest = identity_digest(cfg)
    state = None
    if resume and (out / ASR_CHECKPOINT).is_file():
        fix = (f"start over without --resume (`cxrad refine {info.root} --inputs {cfg.inputs}` deletes it), "
               "or with --force.")
        state = load_torch(out / ASR_CHECKPOINT, map_location=device, fix=fix)
        if not isinstance(state, dict) or "epoch" not in state:
            raise CxradError(f"{out / ASR_CHECKPOINT}: not a cxrad checkpoint; {fix}")
        if state.get("config_sha256") != digest:
            raise CxradError(f"{out / ASR_CHECKPOINT}: was written with another configuration; resume with the "
                             "same options or use --force.")
    if not _begin(out, cfg, resume=resume, force=force):
        progress.log(f"cxrad refine: {out} is up to date.")
        return out
    remove_stale_temporaries(out)  # what a killed earlier run left half-written

    t0 = time.perf_counter()
    batches, scales, clip, space, donor_pool = _batch_source(info, ens, synth, cfg, device, state)
    trainer = ASRTrainer(cfg, synth, batches, device)
    if state is not None:
        trainer.restore(state)
        progress.log(f"cxrad refine: resuming {out} after epoch {trainer.epoch}")
    # the CLI only knows the run's own folders; a refine into others (benchmark studies) resumes from Python
    if out.resolve() == info.layout.refine(cfg.inputs).resolve() and synth.resolve() == info.layout.synth.resolve():
        resume_hint = f"`cxrad refine {info.root} --inputs {cfg.inputs} --resume` (same options)"
    else:
        resume_hint = f"refine(..., synth={str(synth)!r}, out={str(out)!r}, resume=True) (same configuration)"
    _train(trainer, cfg, out, info.root, digest, scales, clip, on_epoch, resume_hint)

    final = trainer.kept_model()
    save_torch_atomic({"state_dict": final.cpu().state_dict(), "inputs": cfg.inputs, "hidden": cfg.hidden_channels,
                       "scales": scales, "clip": clip, "normalize": cfg.normalize, "epochs": cfg.epochs},
                      out / ASR_MODEL)
    log = trainer.log
    write_json_atomic(out / ASR_LOG, log)
    write_manifest(
        out, "refine", cfg,
        inputs={"run": input_record(info.root), "ensemble": input_record(info.layout.ensemble),
                "synth": input_record(synth)},
        outputs=[ASR_MODEL, ASR_LOG, ASR_CHECKPOINT],
        timings={"total": time.perf_counter() - t0, "per_epoch": float(np.mean([r["seconds"] for r in log]))},
        device=device_name(device),
        extra={"scales": _scale_summary(scales), "clip": clip, "synthesis": {"space": space, "donor_pool": donor_pool},
               "channels": list(INPUT_CHANNELS[cfg.inputs]), "final_loss": log[-1]["loss"],
               "kept": "final epoch" + (", EMA weights" if trainer.ema is not None else "") +
                       (", precise BN" if cfg.precise_bn else "")},
    )
    finish_output(out)
    progress.log(f"cxrad refine: {cfg.inputs}: {cfg.epochs} epochs, final loss {log[-1]['loss']:.4f} -> {out}")
    return out


def _batch_source(info, ens, synth: Path, cfg: RefineConfig, device: torch.device, state: dict | None):
    """The normal pool (and, for map-space FPI, every image's maps, computed once: the ensembles
    are frozen) and the input scaling -> (batches(epoch, recipes, batch_size), scales, clip,
    space, donor_pool)."""
    prepared = info.prepared_checked
    pool = to_network_space(torch.as_tensor(load_split(prepared, "normal").images).to(device))
    space, donor_pool = synth_space(synth)
    map_pools = None
    if space == "maps":
        donors = to_network_space(torch.as_tensor(load_split(prepared, donor_pool).images).to(device))
        donor_maps = stacked_maps(ens, donors, cfg.inputs)
        del donors
        if cfg.donor_fraction < 1:
            donor_maps = donor_maps[top_donors(donor_maps, cfg.donor_fraction)]
        map_pools = (stacked_maps(ens, pool, cfg.inputs), donor_maps)
    elif cfg.donor_fraction < 1:
        # the reference's image-space FPI blends Dn images, which have no maps to rank by
        progress.log(f"cxrad refine: {synth} holds image-space recipes; --donor-fraction applies to map-space "
                     "FPI only, every recipe's donor is used as written.")
    pixel_means, clip = channel_stats(ens, pool, cfg.inputs, cfg.clip_quantile)
    scales = input_scales(pixel_means, cfg.normalize)
    if state is not None:  # the recorded statistics, so a resumed run scales exactly like the first
        scales = state["scales"] if scales is not None else None
        clip = state.get("clip", clip)

    def batches(epoch: int, recipes, batch_size: int):
        gains = None
        if tuple(cfg.level_jitter) != (1.0, 1.0):
            gains = level_gains(len(recipes), len(INPUT_CHANNELS[cfg.inputs]), cfg.level_jitter, cfg.seed, epoch)
        return synthetic_batches(ens, pool, recipes, batch_size, cfg.inputs, scales, gains, clip, map_pools)

    return batches, scales, clip, space, donor_pool


def _train(trainer: ASRTrainer, cfg: RefineConfig, out: Path, run: Path, digest: str, scales, clip,
           on_epoch: Optional[Callable[[int, Callable[[], dict[str, Any]]], None]], resume_cmd: str) -> None:
    """Epochs up to ``cfg.epochs`` through the shared loop; a checkpoint at the end so that
    ``--resume`` of a finished run can rebuild the kept model. ``resume_cmd``: how to continue,
    for the message of a stopped or diverged run."""
    def save(_trainer) -> None:
        save_torch_atomic(trainer.checkpoint(digest, scales, clip), out / ASR_CHECKPOINT, checksum=True)

    def after_epoch(epoch: int, losses: list[float], _seconds: float) -> None:
        if on_epoch is not None:
            on_epoch(epoch, lambda: {"net": trainer.kept_model(), "inputs": cfg.inputs, "scales": scales,
                                     "clip": clip})

    try:
        fit(trainer, epochs=cfg.epochs, checkpoint_every=cfg.checkpoint_every, save=save,
            on_epoch=after_epoch, label=f"refine {cfg.inputs}")
    except Diverged as exc:
        raise CxradError(f"{out}: ASR-Net {exc}; lower --lr or check the maps (`cxrad inspect {run}/maps`); the last "
                         f"checkpoint is intact, continue with {resume_cmd}.", exit_code=3) from None
    except Interrupted as exc:
        raise CxradError(f"{out}: refine {exc}; checkpoint saved; continue with {resume_cmd}.",
                         exit_code=128 + exc.signum) from None
    save(trainer)


def _scale_summary(scales) -> list[float] | None:
    """Per-channel scale for the manifest: the list itself, or each channel's mean of a per-pixel map."""
    if scales is None:
        return None
    arr = np.asarray(scales, dtype=np.float64)
    return [float(v) for v in (arr if arr.ndim == 1 else arr.reshape(len(arr), -1).mean(1))]


def summarize_refine(folder: Path) -> dict[str, Any]:
    m = read_manifest(folder, "refine")
    log = json.loads((Path(folder) / ASR_LOG).read_text())
    return {"inputs": m["config"]["inputs"], "epochs": len(log), "final_loss": m.get("final_loss"),
            "scales": m.get("scales"), "kept": m.get("kept")}
