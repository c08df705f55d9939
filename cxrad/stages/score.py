"""`cxrad score`: every map and image score of a split, with the run's method -> RUN/maps/<split>.h5.

The normal training split (Dn) and the held-out normals (val), when present, are always scored as
well: `evaluate` and `predict` take their thresholds from them. File layout: cxrad/io/maps_store.py.
"""

from __future__ import annotations

import time
from pathlib import Path

from cxrad import progress
from cxrad.artifacts import begin_output, finish_output, input_record, remove_stale_temporaries, write_manifest
from cxrad.config import ScoreConfig
from cxrad.devices import device_name, resolve_device
from cxrad.errors import CxradError
from cxrad.io.maps_store import write_maps_h5
from cxrad.io.store import split_names
from cxrad.runs import open_run
from cxrad.scoring import artifact_records, maps_are_current, method_of, score_split


def splits_to_score(prepared: Path, split: str) -> list[str]:
    have = split_names(prepared)
    if split == "all":
        return have
    if split not in have:
        raise CxradError(f"{prepared}: prepared data has no '{split}' split (it has: {', '.join(have)}); pick one "
                         "of them.")
    # the normal training images and the held-out val images set the thresholds
    return sorted({split, "normal", "val"} & set(have), key=have.index)


def score(run: Path, cfg: ScoreConfig, force: bool = False) -> Path:
    """Write RUN/maps/<split>.h5 (+ normal.h5, val.h5) and the maps manifest; returns RUN/maps.

    Maps made from other method artifacts (e.g. before an ASR-Net was retrained) are replaced.
    """
    cfg.validate()
    info = open_run(run)
    method = method_of(info, command="cxrad score")
    device = resolve_device(cfg.device)
    prepared = info.prepared_checked
    splits = splits_to_score(prepared, cfg.split)
    out = info.layout.maps
    records = artifact_records(info, method)
    if (out / "manifest.json").is_file() and not maps_are_current(info, records):
        force = True  # derived from artifacts that changed since: stale, safe to replace
    # the models load before --force deletes the old maps: a damaged one is refused with nothing lost
    scorer = method.load_scorer(info, device) if force else None
    if not begin_output(out, "maps", cfg, force=force):
        progress.log(f"cxrad score: {out} is up to date.")
        return out
    remove_stale_temporaries(out)  # what a killed earlier run left half-written
    scorer = scorer or method.load_scorer(info, device)
    t0 = time.perf_counter()
    timings, counts = {}, {}
    for split in splits:
        t1 = time.perf_counter()
        scored = score_split(scorer, prepared, split, batch_size=cfg.batch_size)
        write_maps_h5(info.layout.maps_file(split), scored.scored, scored.ids, scored.labels,
                      {"split": split, "method": info.method})
        timings[split] = time.perf_counter() - t1
        counts[split] = len(scored.ids)
        progress.log(f"cxrad score: {split}: {counts[split]} images in {timings[split]:.1f} s")
    timings["total"] = time.perf_counter() - t0
    write_manifest(
        out, "maps", cfg, inputs={**records, "prepared": input_record(prepared)},
        outputs=[info.layout.maps_file(s).name for s in splits], timings=timings, device=device_name(device),
        extra={"splits": splits, "counts": counts, "method": info.method, "scores": list(scorer.names)},
    )
    finish_output(out)
    return out
