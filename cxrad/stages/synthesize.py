"""`cxrad synthesize`: FPI recipes for every ASR epoch -> RUN/synth/fpi.h5 (+ preview).

Layout of ``fpi.h5``: datasets ``source, donor, cy, cx, half, alpha, patched`` of shape
(epochs, n) — row e is epoch e, in training order; attrs size, n, seed, pool ("normal": sources),
space ("maps" or "image"), donor_pool ("unlabeled" or "normal"). ``preview/images`` (P, H, W)
float16 in [0, 1] and ``preview/masks`` (P, H, W) uint8 materialise the first P samples of epoch 0
that carry a patch, blended in image space; ``preview.png`` shows them with their masks. (With
``space = "maps"`` the blend ASR-Net trains on happens in the discrepancy maps, computed by the
ensembles at refine time; the preview shows what each recipe takes from its donor image.)

Why map space by default: FPI patches blended into the *image* leave the maps ASR-Net reads
(A_inter, A_intra) unchanged inside the patch — measured on ZhangLab-OCSSL-64, the patched/clean
ratio of A_inter and A_intra inside the patch is 1.01 and 0.98 (A_rec: 1.46) — so ASR-Net can only
learn where patches tend to lie, and learned "extreme discrepancy = normal" (R_dual AUC 38 < 50).
Blending a patch of the maps of an unlabelled image, which the UDM has learned and the NDM has not,
teaches it what a local discrepancy looks like without reading any label.

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
from cxrad.io.store import load_split, split_names

FPI_FILE = "fpi.h5"


SPACES = ("auto", "maps", "image")


def epoch_recipes(cfg: SynthConfig, n: int, size: int, epoch: int, donor_pool_size: int | None = None) -> Recipes:
    return draw_recipes(n, size, np.random.default_rng([cfg.seed, epoch]), cfg.patch_probability,
                        cfg.centre_range, cfg.half_width_range, donor_pool_size)


def resolve_space(space: str, unlabeled_count: int, where: Path) -> str:
    """The blend space a synth config means for prepared data with ``unlabeled_count`` Du images."""
    if space not in SPACES:
        raise CxradError(f"space={space!r}: use one of {', '.join(SPACES)}.")
    if space == "auto":
        return "maps" if unlabeled_count > 0 else "image"
    if space == "maps" and unlabeled_count == 0:
        raise CxradError(f"{where}: map-space FPI takes its donors from the unlabelled set, which is empty; "
                         "use space = \"image\" (the reference FPI).")
    return space


def synth_space(synth_dir: Path) -> tuple[str, str]:
    """(space, donor_pool) of a synth artifact; files written before map-space FPI are image/normal."""
    with h5py.File(Path(synth_dir) / FPI_FILE, "r") as h5:
        return str(h5.attrs.get("space", "image")), str(h5.attrs.get("donor_pool", "normal"))


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
    epochs = [epoch_recipes(cfg, n, size, e, len(unlabeled) if donor_pool == "unlabeled" else None)
              for e in range(cfg.epochs)]
    # preview: the first patched samples of epoch 0, blended in network space like training
    r0 = epochs[0]
    pick = np.flatnonzero(r0.patched)[: cfg.preview_count]
    sub = Recipes(*(getattr(r0, f)[pick] for f in RECIPE_FIELDS))
    donors = to_network_space(torch.as_tensor(unlabeled)) if donor_pool == "unlabeled" else None
    xs, masks = apply_recipes(to_network_space(torch.as_tensor(pool)), sub, donors)
    preview = ((xs + 1) / 2).clamp(0, 1).numpy()
    with atomic_path(out / FPI_FILE) as tmp:
        with h5py.File(tmp, "w") as h5:
            h5.attrs.update({"size": size, "n": n, "seed": cfg.seed, "pool": "normal", "epochs": cfg.epochs,
                             "space": space, "donor_pool": donor_pool})
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
