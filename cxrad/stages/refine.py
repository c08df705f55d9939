"""`cxrad refine`: train ASR-Net on maps of FPI pseudo-anomalies -> RUN/refine/<dual|intra>/.

Every batch: apply the stored recipes to the normal pool on the device, run the frozen ensembles
(eval mode) on the synthetic images, build the input maps, one focal-loss step. No per-sample
Python, no test data, no selection: the kept model is the final one (its EMA weights, with
BatchNorm statistics recomputed over one synthetic epoch — see RefineConfig for why).

Options studied on ZhangLab-OCSSL-64 and left off by default (benchmarks/results/
zhanglab-asr-study.md): ``level_jitter`` (random gain on the input maps) and ``clip_quantile``
(clip inputs at a Dn quantile); neither fixed the inverted R scores of the 5-epoch variant.

Folder: ``asr.pt`` (the kept model + what applying it needs: inputs, channel scales),
``checkpoint.ckpt`` (resume state, atomic), ``log.json`` (per-epoch loss), ``manifest.json``.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from cxrad import progress
from cxrad.artifacts import (atomic_path, begin_output, finish_output, input_record, read_manifest,
                             write_json_atomic, write_manifest)
from cxrad.config import RefineConfig
from cxrad.devices import device_name, resolve_device
from cxrad.ensemble_maps import RunEnsembles, open_run, to_network_space
from cxrad.errors import CxradError
from cxrad.fpi import apply_recipes
from cxrad.io.store import load_split
from cxrad.models.asr_net import INPUT_CHANNELS, ASRNet, anomaly_probability, asr_inputs, focal_loss, scale_inputs
from cxrad.models.weight_average import ema_decay_at, ema_update, precise_bn
from cxrad.stages.synthesize import read_recipes, synth_epochs, synth_space

MODEL_FILE, CKPT_FILE, LOG_FILE = "asr.pt", "checkpoint.ckpt", "log.json"
NORMALIZATIONS = ("normal-mean", "normal-pixel-mean", "none")


# ---------------------------------------------------------------------------------------------
# pieces
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def channel_stats(ens: RunEnsembles, pool: torch.Tensor, inputs: str, quantile: float = 0.0,
                  batch_size: int = 256) -> tuple[np.ndarray, list[float] | None]:
    """Statistics of each input map over the (clean) normal training images.

    Returns (pixel_means (C, H, W) float64 — the mean map per channel, clips — the ``quantile`` of
    each channel over all pixels, or None when quantile is 0).
    """
    names = INPUT_CHANNELS[inputs]
    sums: dict[str, torch.Tensor] = {}
    vals: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for i in range(0, len(pool), batch_size):
        m = ens.maps(pool[i:i + batch_size])
        for n in names:
            part = m[n].double().sum(0).cpu()
            sums[n] = sums[n] + part if n in sums else part
            if quantile > 0:
                vals[n].append(m[n].float().flatten().cpu())
    pixel_means = np.stack([(sums[n] / len(pool)).numpy() for n in names])
    clips = [float(np.quantile(torch.cat(vals[n]).numpy(), quantile)) for n in names] if quantile > 0 else None
    return pixel_means, clips


def input_scales(pixel_means: np.ndarray, normalize: str) -> list | None:
    """What ASR inputs are divided by, from the normal images' mean maps (C, H, W).

    ``normal-mean``: one number per channel (nested list (C,)). ``normal-pixel-mean``: the mean map
    itself (nested list (C, H, W)), so a value is read relative to what normal images show *at that
    pixel* — borders and anatomy, where clean normals already have the largest discrepancies, stop
    looking extreme, and the net cannot learn "extreme = normal" from them. Each pixel's mean is
    floored at 10 % of its channel's mean so near-zero corners do not blow up. ``none``: None.
    """
    channel = np.maximum(pixel_means.reshape(len(pixel_means), -1).mean(1), 1e-12)
    if normalize == "normal-mean":
        return [float(c) for c in channel]
    if normalize == "normal-pixel-mean":
        return np.maximum(pixel_means, 0.1 * channel[:, None, None]).astype(np.float32).tolist()
    return None


def level_gains(n: int, channels: int, jitter: tuple[float, float], seed: int, epoch: int) -> np.ndarray:
    """(n, channels) gains, log-uniform in [lo, hi], drawn from (seed, epoch) so resume repeats them."""
    lo, hi = float(jitter[0]), float(jitter[1])
    rng = np.random.default_rng([seed, epoch, 7919])
    return np.exp(rng.uniform(np.log(lo), np.log(hi), size=(n, channels))).astype(np.float32)


@torch.no_grad()
def stacked_maps(ens: RunEnsembles, images: torch.Tensor, inputs: str, batch_size: int = 256) -> torch.Tensor:
    """Raw ASR input maps of ``images`` (N, H, W) in network space -> (N, C, H, W) float32."""
    names = INPUT_CHANNELS[inputs]
    out = []
    for i in range(0, len(images), batch_size):
        m = ens.maps(images[i:i + batch_size])
        out.append(torch.stack([m[n].float() for n in names], dim=1))
    return torch.cat(out) if out else images.new_zeros((0, len(names)) + tuple(images.shape[1:]))


def synthetic_batches(ens: RunEnsembles, pool: torch.Tensor, recipes, batch_size: int, inputs: str,
                      scales, gains: Optional[np.ndarray] = None, clip: Optional[list[float]] = None,
                      map_pools: Optional[tuple[torch.Tensor, torch.Tensor]] = None):
    """Yield (ASR input (B, C, H, W), mask (B, H, W)) for one epoch of recipes, in order.

    Image space (``map_pools`` None): blend images of ``pool``, then run the ensembles on them.
    Map space: ``map_pools`` = (source maps (N, C, H, W) of ``pool``, donor maps (M, C, H, W)),
    blended directly. ``gains`` (n, C): optional per-sample, per-channel factors (level jitter).
    """
    for i in range(0, len(recipes), batch_size):
        r = recipes.slice(slice(i, i + batch_size))
        if map_pools is None:
            xs, mask = apply_recipes(pool, r)
            x = asr_inputs(ens.maps(xs), inputs, scales, clip)
        else:
            raw, mask = apply_recipes(map_pools[0], r, map_pools[1])
            x = scale_inputs(raw, scales, clip)
        if gains is not None:
            x = x * torch.as_tensor(gains[i:i + batch_size], device=x.device)[:, :, None, None]
        yield x, mask


def load_asr(folder: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load ``asr.pt`` -> {"net" (eval mode), "inputs", "scales", ...}."""
    folder = Path(folder)
    read_manifest(folder, "refine")
    blob = torch.load(folder / MODEL_FILE, map_location=device, weights_only=True)
    net = ASRNet(len(INPUT_CHANNELS[blob["inputs"]]), int(blob["hidden"])).to(device)
    net.load_state_dict(blob["state_dict"])
    net.eval()
    return {**blob, "net": net}


@torch.no_grad()
def refined_maps(asr: dict[str, Any], maps: dict[str, np.ndarray], device: torch.device | str = "cpu",
                 batch_size: int = 64) -> np.ndarray:
    """Apply a loaded ASR-Net to stored maps (name -> (N, H, W)) -> anomaly probability (N, H, W)."""
    names = INPUT_CHANNELS[asr["inputs"]]
    n = len(maps[names[0]])
    out = []
    for i in range(0, n, batch_size):
        batch = {k: torch.as_tensor(maps[k][i:i + batch_size], device=device) for k in names}
        x = asr_inputs(batch, asr["inputs"], asr["scales"], asr.get("clip"))
        out.append(anomaly_probability(asr["net"](x)).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,) + maps[names[0]].shape[1:], np.float32)


def _model_blob(net: nn.Module, cfg: RefineConfig, scales, clip, epochs_done: int) -> dict[str, Any]:
    return {"state_dict": net.state_dict(), "inputs": cfg.inputs, "hidden": cfg.hidden_channels,
            "scales": scales, "clip": clip, "normalize": cfg.normalize, "epochs": epochs_done}


def _save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


# ---------------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------------
def refine(run: Path, cfg: RefineConfig, resume: bool = False, force: bool = False, *,
           synth: Path | None = None, out: Path | None = None,
           on_epoch: Optional[Callable[[int, dict[str, Any]], None]] = None) -> Path:
    """Train ASR-Net; returns the refine folder.

    ``synth``/``out`` default to RUN/synth and RUN/refine/<inputs>. ``on_epoch(epoch, asr)`` is for
    analysis (benchmarks): it receives an eval-mode copy of the model as `evaluate` would use it
    (EMA + precise BN) and must not influence training — nothing is selected from it.
    """
    run = Path(run)
    if cfg.inputs not in INPUT_CHANNELS:
        raise CxradError(f"--inputs {cfg.inputs}: use dual or intra.")
    if cfg.normalize not in NORMALIZATIONS:
        raise CxradError(f"normalize={cfg.normalize!r}: use one of {', '.join(NORMALIZATIONS)}.")
    device = resolve_device(cfg.device)
    ens = open_run(run, device, need_udm=cfg.inputs == "dual", command="cxrad refine")
    if cfg.inputs == "intra":
        ens.udm = None  # intra inputs never need the UDM; skip its forward pass
    synth = Path(synth) if synth is not None else run / "synth"
    read_manifest(synth, "synth")
    if synth_epochs(synth) < cfg.epochs:
        raise CxradError(
            f"{synth}: holds FPI recipes for {synth_epochs(synth)} epochs, refine asks for {cfg.epochs}; "
            f"run `cxrad synthesize --epochs {cfg.epochs} --force` first."
        )
    out = Path(out) if out is not None else run / "refine" / cfg.inputs
    ckpt_path = out / CKPT_FILE
    if resume:
        if not ckpt_path.is_file():
            raise CxradError(f"{out}: nothing to resume (no {CKPT_FILE}); run without --resume.")
        # the old manifest must not describe the files this run rewrites
        (out / "manifest.json").unlink(missing_ok=True)
        (out / ".cxrad-partial").touch()
    elif not begin_output(out, "refine", cfg, force=force):
        progress.log(f"cxrad refine: {out} is up to date.")
        return out
    elif ckpt_path.exists():
        ckpt_path.unlink()  # a fresh start must not mix with an old checkpoint

    t0 = time.perf_counter()
    pool = to_network_space(torch.as_tensor(load_split(ens.prepared, "normal").images).to(device))
    torch.manual_seed(cfg.seed)
    net = ASRNet(len(INPUT_CHANNELS[cfg.inputs]), cfg.hidden_channels).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    ema = copy.deepcopy(net) if cfg.ema_decay > 0 else None
    space, donor_pool = synth_space(synth)
    map_pools = None
    if space == "maps":  # the ensembles are frozen: each image's maps are computed once, not per epoch
        donors = to_network_space(torch.as_tensor(load_split(ens.prepared, donor_pool).images).to(device))
        map_pools = (stacked_maps(ens, pool, cfg.inputs), stacked_maps(ens, donors, cfg.inputs))
        del donors
    pixel_means, clip = channel_stats(ens, pool, cfg.inputs, cfg.clip_quantile)
    scales = input_scales(pixel_means, cfg.normalize)
    log: list[dict[str, Any]] = []
    start, step = 0, 0
    if resume:
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        if _what(state["config"]) != _what(_jsonable_cfg(cfg)):
            raise CxradError(f"{ckpt_path}: was written with another configuration; resume with the same options or use --force.")
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng"])
        start, step, log = int(state["epoch"]), int(state["step"]), json.loads(state["log"])
        scales = state["scales"] if scales is not None else None
        clip = state.get("clip", clip)
        progress.log(f"cxrad refine: resuming {out} after epoch {start}")

    def epoch_gains(epoch: int, n: int):
        if tuple(cfg.level_jitter) == (1.0, 1.0):
            return None
        return level_gains(n, len(INPUT_CHANNELS[cfg.inputs]), cfg.level_jitter, cfg.seed, epoch)

    def kept_model(last_recipes, last_epoch: int) -> nn.Module:
        model = copy.deepcopy(ema if ema is not None else net)
        if cfg.precise_bn:  # over the last epoch's inputs, as training saw them
            precise_bn(model, (x for x, _ in synthetic_batches(
                ens, pool, last_recipes, max(cfg.batch_size, 32), cfg.inputs, scales,
                epoch_gains(last_epoch, len(last_recipes)), clip, map_pools)))
        model.eval()
        return model

    recipes = None
    for epoch in range(start, cfg.epochs):
        te = time.perf_counter()
        recipes = read_recipes(synth, epoch)
        net.train()
        losses = []
        nb = math.ceil(len(recipes) / cfg.batch_size)
        with progress.task(f"refine {cfg.inputs} epoch {epoch + 1}/{cfg.epochs}", nb) as bar:
            gains = epoch_gains(epoch, len(recipes))
            for x, mask in synthetic_batches(ens, pool, recipes, cfg.batch_size, cfg.inputs, scales, gains, clip,
                                             map_pools):
                loss = focal_loss(net(x), mask, cfg.focal_gamma)
                if not torch.isfinite(loss):
                    raise CxradError(
                        f"{out}: loss became {loss.item()} in epoch {epoch + 1}; lower --lr or check the maps "
                        f"(`cxrad inspect {run}/maps`); the last checkpoint is intact, resume with --resume."
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                if ema is not None:
                    ema_update(ema, net, ema_decay_at(cfg.ema_decay, step))
                losses.append(loss.item())
                bar.advance(1, f"loss {np.mean(losses):.4f}")
        log.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": time.perf_counter() - te})
        if on_epoch is not None:
            on_epoch(epoch + 1, {"net": kept_model(recipes, epoch), "inputs": cfg.inputs, "scales": scales, "clip": clip})
        if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
            _save({"net": net.state_dict(), "opt": opt.state_dict(),
                   "ema": ema.state_dict() if ema is not None else {}, "rng": torch.get_rng_state(),
                   "epoch": epoch + 1, "step": step, "log": json.dumps(log), "scales": scales, "clip": clip,
                   "config": _jsonable_cfg(cfg)}, ckpt_path)

    if recipes is None:  # resumed a finished run: rebuild what the kept model needs
        recipes = read_recipes(synth, cfg.epochs - 1)
    final = kept_model(recipes, cfg.epochs - 1)
    _save(_model_blob(final.cpu(), cfg, scales, clip, cfg.epochs), out / MODEL_FILE)
    write_json_atomic(out / LOG_FILE, log)
    write_manifest(
        out, "refine", cfg,
        inputs={"run": input_record(run), "ensemble": input_record(run / "ensemble"), "synth": input_record(synth)},
        outputs=[MODEL_FILE, LOG_FILE, CKPT_FILE], timings={"total": time.perf_counter() - t0,
                                                         "per_epoch": float(np.mean([r["seconds"] for r in log]))},
        device=device_name(device),
        extra={"scales": _scale_summary(scales), "clip": clip, "synthesis": {"space": space, "donor_pool": donor_pool}, "channels": list(INPUT_CHANNELS[cfg.inputs]), "final_loss": log[-1]["loss"],
               "kept": "final epoch" + (", EMA weights" if ema is not None else "") +
                       (", precise BN" if cfg.precise_bn else "")},
    )
    finish_output(out)
    progress.log(f"cxrad refine: {cfg.inputs}: {cfg.epochs} epochs, final loss {log[-1]['loss']:.4f} -> {out}")
    return out


def _scale_summary(scales) -> list[float] | None:
    """Per-channel scale for the manifest: the list itself, or each channel's mean of a per-pixel map."""
    if scales is None:
        return None
    arr = np.asarray(scales, dtype=np.float64)
    return [float(v) for v in (arr if arr.ndim == 1 else arr.reshape(len(arr), -1).mean(1))]


def _what(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a refine config that changes the result (not where or how often it saves)."""
    return {k: v for k, v in json.loads(json.dumps(config)).items() if k not in ("device", "checkpoint_every")}


def _jsonable_cfg(cfg: RefineConfig) -> dict[str, Any]:
    from cxrad.artifacts import to_jsonable

    return to_jsonable(cfg)


def summarize_refine(folder: Path) -> dict[str, Any]:
    m = read_manifest(folder, "refine")
    log = json.loads((Path(folder) / LOG_FILE).read_text())
    return {"inputs": m["config"]["inputs"], "epochs": len(log), "final_loss": m.get("final_loss"),
            "scales": m.get("scales"), "kept": m.get("kept")}
