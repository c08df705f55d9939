"""`cxrad synthesize`: FPI recipes for every ASR epoch -> RUN/synth/fpi.h5 (+ preview).

Layout of ``fpi.h5``: datasets ``source, donor, cy, cx, half, alpha, patched`` of shape
(epochs, n) — row e is epoch e, in training order; attrs size, n, seed, pool ("normal").
``preview/images`` (P, H, W) float16 in [0, 1] and ``preview/masks`` (P, H, W) uint8 materialise
the first P samples of epoch 0 that carry a patch; ``preview.png`` shows them with their masks.

Epoch e is drawn from ``default_rng([seed, e])`` so the first epochs do not depend on how many
epochs were asked for.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from cxrad import progress
from cxrad.artifacts import atomic_path, begin_output, finish_output, input_record, read_manifest, write_manifest
from cxrad.config import SynthConfig
from cxrad.ensemble_maps import run_prepared, to_network_space
from cxrad.errors import CxradError
from cxrad.fpi import RECIPE_FIELDS, Recipes, apply_recipes, draw_recipes
from cxrad.io.store import load_split

FPI_FILE = "fpi.h5"


def epoch_recipes(cfg: SynthConfig, n: int, size: int, epoch: int) -> Recipes:
    return draw_recipes(n, size, np.random.default_rng([cfg.seed, epoch]), cfg.patch_probability,
                        cfg.centre_range, cfg.half_width_range)


def read_recipes(synth_dir: Path, epoch: int) -> Recipes:
    with h5py.File(Path(synth_dir) / FPI_FILE, "r") as h5:
        if epoch >= h5["source"].shape[0]:
            raise CxradError(
                f"{synth_dir}: holds recipes for {h5['source'].shape[0]} epochs, epoch {epoch + 1} asked; "
                "re-run `cxrad synthesize --epochs N --force` with N at least the refine epochs."
            )
        return Recipes(*(h5[f][epoch] for f in RECIPE_FIELDS))


def synth_epochs(synth_dir: Path) -> int:
    with h5py.File(Path(synth_dir) / FPI_FILE, "r") as h5:
        return int(h5["source"].shape[0])


def synthesize(run: Path, cfg: SynthConfig, force: bool = False, out: Path | None = None) -> Path:
    """Write the recipes of ``cfg.epochs`` epochs and a preview; returns the synth folder."""
    run = Path(run)
    manifest = read_manifest(run, "run")
    prepared = run_prepared(run, manifest)
    out = Path(out) if out is not None else run / "synth"
    if not begin_output(out, "synth", cfg, force=force):
        progress.log(f"cxrad synthesize: {out} is up to date.")
        return out
    t0 = time.perf_counter()
    pool = load_split(prepared, "normal").images
    n, size = pool.shape[0], pool.shape[-1]
    if n < 2:
        raise CxradError(f"{prepared}: the normal split has {n} image(s); FPI needs at least 2.")
    epochs = [epoch_recipes(cfg, n, size, e) for e in range(cfg.epochs)]
    # preview: the first patched samples of epoch 0, blended in network space like training
    r0 = epochs[0]
    pick = np.flatnonzero(r0.patched)[: cfg.preview_count]
    sub = Recipes(*(getattr(r0, f)[pick] for f in RECIPE_FIELDS))
    xs, masks = apply_recipes(to_network_space(torch.as_tensor(pool)), sub)
    preview = ((xs + 1) / 2).clamp(0, 1).numpy()
    with atomic_path(out / FPI_FILE) as tmp:
        with h5py.File(tmp, "w") as h5:
            h5.attrs.update({"size": size, "n": n, "seed": cfg.seed, "pool": "normal", "epochs": cfg.epochs})
            for f in RECIPE_FIELDS:
                h5.create_dataset(f, data=np.stack([getattr(r, f) for r in epochs]), compression="gzip")
            h5.create_dataset("preview/images", data=preview.astype(np.float16))
            h5.create_dataset("preview/masks", data=masks.numpy().astype(np.uint8))
            h5.create_dataset("preview/index", data=pick)
    from cxrad.report.plots import contact_sheet

    contact_sheet(out / "preview.png", preview, masks.numpy(), alphas=sub.alpha)
    patched = float(np.mean([r.patched.mean() for r in epochs]))
    write_manifest(
        out, "synth", cfg,
        inputs={"run": input_record(run), "prepared": input_record(prepared)},
        outputs=[FPI_FILE, "preview.png"], timings={"total": time.perf_counter() - t0},
        extra={"pool_size": n, "image_size": size, "patched_fraction": patched},
    )
    finish_output(out)
    progress.log(f"cxrad synthesize: {cfg.epochs} epochs × {n} recipes ({patched:.1%} patched) -> {out}")
    return out


def summarize_synth(folder: Path) -> dict[str, Any]:
    m = read_manifest(folder, "synth")
    return {"epochs": m["config"]["epochs"], "pool_size": m.get("pool_size"),
            "image_size": m.get("image_size"), "patched_fraction": m.get("patched_fraction")}
