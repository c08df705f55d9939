"""`cxrad synthesize`: FPI recipes for every ASR epoch -> RUN/synth/fpi.h5 (+ preview.png).

A recipe says, per normal training image and ASR epoch, whether it gets a patch, where, how large,
how strongly blended and from which donor (file layout: recipes_store.py). Drawing them once, as
an artifact, makes `refine` deterministic and resumable, and lets the preview show what ASR-Net
will be taught.

Why map space by default (docs/method.md, "Synthetic anomalies"): FPI patches blended into the
*image* leave the maps ASR-Net reads (A_inter, A_intra) unchanged inside the patch at 64 px —
measured on ZhangLab-OCSSL-64, patched/clean ratio 1.01 and 0.98 — so ASR-Net could only learn where
patches tend to lie. Blending a patch of the maps of an unlabelled image, which the UDM has learned
and the NDM has not, teaches it what a local discrepancy looks like without reading any label.

Epoch e is drawn from ``default_rng([seed, e])`` so the first epochs do not depend on how many
epochs were asked for.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrad import progress
from cxrad.artifacts import (
    begin_output,
    finish_output,
    input_record,
    read_manifest,
    remove_stale_temporaries,
    write_manifest,
)
from cxrad.errors import CxradError
from cxrad.io.store import load_split, split_names
from cxrad.layout import SYNTH_PREVIEW, SYNTH_RECIPES
from cxrad.methods.ddad.config import SynthConfig
from cxrad.methods.ddad.ensembles import to_network_space
from cxrad.methods.ddad.fpi import RECIPE_FIELDS, Recipes, apply_recipes, draw_recipes
from cxrad.methods.ddad.recipes_store import write_recipes_h5
from cxrad.runs import open_run


def epoch_recipes(cfg: SynthConfig, n: int, size: int, epoch: int, donor_pool_size: int | None = None) -> Recipes:
    return draw_recipes(n, size, np.random.default_rng([cfg.seed, epoch]), cfg.patch_probability,
                        cfg.centre_range, cfg.half_width_range, donor_pool_size)


def resolve_space(space: str, unlabeled_count: int, where: Path) -> str:
    """The blend space a synth config means for prepared data with ``unlabeled_count`` Du images."""
    if space == "auto":
        return "maps" if unlabeled_count > 0 else "image"
    if space == "maps" and unlabeled_count == 0:
        raise CxradError(f"{where}: map-space FPI takes its donors from the unlabelled set, which is empty; "
                         "use space = \"image\" (the reference FPI).")
    return space


def synthesize(run: Path, cfg: SynthConfig, force: bool = False, out: Path | None = None) -> Path:
    """Write the recipes of ``cfg.epochs`` epochs and a preview; returns the synth folder."""
    cfg.validate()
    info = open_run(run)
    run, prepared = info.root, info.prepared_checked
    out = Path(out) if out is not None else info.layout.synth
    t0 = time.perf_counter()
    # every check before begin_output: a refused --force must leave the old artifact intact
    pool = load_split(prepared, "normal").images
    n, size = pool.shape[0], pool.shape[-1]
    unlabeled = load_split(prepared, "unlabeled").images if "unlabeled" in split_names(prepared) else pool[:0]
    space = resolve_space(cfg.space, len(unlabeled), prepared)
    donor_pool = "unlabeled" if space == "maps" else "normal"
    if n < 2:
        raise CxradError(f"{prepared}: the normal split has {n} image(s); FPI needs at least 2.")
    if not begin_output(out, "synth", cfg, force=force):
        progress.log(f"cxrad synthesize: {out} is up to date.")
        return out
    remove_stale_temporaries(out)  # what a killed earlier run left half-written
    epochs = [epoch_recipes(cfg, n, size, e, len(unlabeled) if donor_pool == "unlabeled" else None)
              for e in range(cfg.epochs)]
    # preview: the first patched samples of epoch 0, blended in network space like training
    r0 = epochs[0]
    pick = np.flatnonzero(r0.patched)[: cfg.preview_count]
    sub = Recipes(*(getattr(r0, f)[pick] for f in RECIPE_FIELDS))
    donors = to_network_space(torch.as_tensor(unlabeled)) if donor_pool == "unlabeled" else None
    xs, masks = apply_recipes(to_network_space(torch.as_tensor(pool)), sub, donors)
    preview = ((xs + 1) / 2).clamp(0, 1).numpy()
    write_recipes_h5(out / SYNTH_RECIPES, epochs, preview, masks.numpy(), pick,
                     {"size": size, "n": n, "seed": cfg.seed, "pool": "normal", "epochs": cfg.epochs,
                      "space": space, "donor_pool": donor_pool})
    from cxrad.report.plots import contact_sheet

    contact_sheet(out / SYNTH_PREVIEW, preview, masks.numpy(), alphas=sub.alpha)
    patched = float(np.mean([r.patched.mean() for r in epochs]))
    write_manifest(
        out, "synth", cfg,
        inputs={"run": input_record(run), "prepared": input_record(prepared)},
        outputs=[SYNTH_RECIPES, SYNTH_PREVIEW], timings={"total": time.perf_counter() - t0},
        extra={"pool_size": n, "image_size": size, "patched_fraction": patched, "space": space,
               "donor_pool": donor_pool, "donor_pool_size": len(unlabeled) if donor_pool == "unlabeled" else n},
    )
    finish_output(out)
    progress.log(f"cxrad synthesize: {cfg.epochs} epochs × {n} recipes ({patched:.1%} patched, {space} space, "
                 f"donors from {donor_pool}) -> {out}")
    return out


def summarize_synth(folder: Path) -> dict[str, Any]:
    m = read_manifest(folder, "synth")
    return {"epochs": m["config"]["epochs"], "pool_size": m.get("pool_size"),
            "image_size": m.get("image_size"), "patched_fraction": m.get("patched_fraction"),
            "space": m.get("space", "image"), "donor_pool": m.get("donor_pool", "normal")}
