"""`cxrad score`: discrepancy maps of a split with the run's frozen ensembles -> RUN/maps/<split>.h5.

The normal training split (Dn) is always scored as well: `evaluate` takes its thresholds from it.

Layout of ``<split>.h5``::

    /maps/A_rec, /maps/A_intra, /maps/A_inter   (N, H, W) float16
    /scores/A_rec, ...                          (N,) float32, mean of the full-precision map
    /ids (N,) str, /labels (N,) int8            attrs: split, backbone
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from cxrad import progress
from cxrad.artifacts import atomic_path, begin_output, finish_output, input_record, read_manifest, write_manifest
from cxrad.config import ScoreConfig
from cxrad.devices import device_name, resolve_device
from cxrad.ensemble_maps import maps_of_images, open_run
from cxrad.errors import CxradError
from cxrad.io.store import load_split, split_names

_STR = h5py.string_dtype(encoding="utf-8")


def splits_to_score(prepared: Path, split: str) -> list[str]:
    have = split_names(prepared)
    if split == "all":
        return have
    if split not in have:
        raise CxradError(f"{prepared}: prepared data has no '{split}' split (it has: {', '.join(have)}); pick one of them.")
    # the normal training images and the held-out val images set evaluate's thresholds
    return sorted({split, "normal", "val"} & set(have), key=have.index)


def write_maps_h5(path: Path, maps: dict[str, np.ndarray], ids: list[str], labels: np.ndarray,
                  attrs: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as h5:
            for k, v in attrs.items():
                h5.attrs[k] = v
            for name, arr in maps.items():
                group, key = ("scores", name[6:]) if name.startswith("score/") else ("maps", name)
                dtype = np.float32 if group == "scores" else np.float16
                h5.create_dataset(f"{group}/{key}", data=arr.astype(dtype),
                                  chunks=(1,) + arr.shape[1:] if group == "maps" and len(arr) else None)
            h5.create_dataset("ids", data=np.array(ids, dtype=object), dtype=_STR)
            h5.create_dataset("labels", data=np.asarray(labels, np.int8))


def read_maps_h5(path: Path) -> dict[str, Any]:
    """-> {"maps": name -> (N,H,W) float32, "scores": name -> (N,), "ids", "labels", "attrs"}."""
    with h5py.File(path, "r") as h5:
        return {
            "maps": {k: v[...].astype(np.float32) for k, v in h5["maps"].items()},
            "scores": {k: v[...] for k, v in h5["scores"].items()},
            "ids": list(h5["ids"].asstr()[...]),
            "labels": h5["labels"][...],
            "attrs": dict(h5.attrs),
        }


def maps_file(run: Path, split: str) -> Path:
    return Path(run) / "maps" / f"{split}.h5"


def score(run: Path, cfg: ScoreConfig, force: bool = False) -> Path:
    """Write RUN/maps/<split>.h5 (+ normal.h5) and the maps manifest; returns RUN/maps."""
    run = Path(run)
    device = resolve_device(cfg.device)
    ens = open_run(run, device, command="cxrad score")
    out = run / "maps"
    splits = splits_to_score(ens.prepared, cfg.split)
    if not begin_output(out, "maps", cfg, force=force):
        progress.log(f"cxrad score: {out} is up to date.")
        return out
    t0 = time.perf_counter()
    timings, counts = {}, {}
    for split in splits:
        t1 = time.perf_counter()
        data = load_split(ens.prepared, split)
        maps = maps_of_images(ens, data.images, cfg.batch_size)
        write_maps_h5(maps_file(run, split), maps, data.ids, data.labels,
                      {"split": split, "backbone": ens.backbone})
        timings[split] = time.perf_counter() - t1
        counts[split] = len(data)
        progress.log(f"cxrad score: {split}: {len(data)} images in {timings[split]:.1f} s")
    timings["total"] = time.perf_counter() - t0
    write_manifest(
        out, "maps", cfg,
        inputs={"run": input_record(run), "ensemble": input_record(run / "ensemble"),
                "prepared": input_record(ens.prepared)},
        outputs=[f"{s}.h5" for s in splits], timings=timings, device=device_name(device),
        extra={"splits": splits, "counts": counts, "backbone": ens.backbone},
    )
    finish_output(out)
    return out


def summarize_maps(folder: Path) -> dict[str, Any]:
    """`cxrad inspect` summary: per split, count and mean image score of each map."""
    m = read_manifest(folder, "maps")
    out = {}
    for split in m.get("splits", []):
        with h5py.File(Path(folder) / f"{split}.h5", "r") as h5:
            out[split] = {"count": int(h5["labels"].shape[0]),
                          **{f"mean {k}": float(np.mean(v[...])) for k, v in h5["scores"].items()}}
    return out


