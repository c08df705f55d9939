"""`cxrad prepare`: DICOM/PNG/JPEG files + labels -> ``OUT/data.h5`` + ``OUT/manifest.json``.

Flow: list SOURCE and labels (io.sources) -> keep the first ``anomaly_shots`` labelled anomalies
-> check the split request on the labels alone (fail before minutes of decoding) -> decode +
preprocess in ``workers`` processes (each returns one small (size, size) float16 array, so memory
grows with the output, not the source) -> draw Dn/Du/Dt among the images that decoded (splits)
-> write data.h5 atomically, then the manifest last.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from cxrad import progress
from cxrad.artifacts import begin_output, finish_output, remove_stale_temporaries, write_manifest
from cxrad.config import PrepareConfig, added_field
from cxrad.errors import CxradError
from cxrad.io.decode import decode_all, default_workers
from cxrad.io.preprocess import parameters
from cxrad.io.sources import ANOMALY, Entry, Listing, list_entries
from cxrad.io.store import SET_NAMES, STORED_SETS, ImageSet, write_prepared_h5
from cxrad.layout import DATA_FILE
from cxrad.splits import SplitRequest, auto_val_count, carve_val, select


@dataclass
class PrepareRecord:
    """What a prepared artifact records as its configuration: the options and what they read."""

    source: str
    labels: Optional[str]
    split_file: Optional[str]
    options: PrepareConfig
    anomalies: Optional[str] = added_field(None)   # --anomalies CSV


def _record(cfg: PrepareConfig, source: Path, labels: Optional[Path], split_file: Optional[Path],
            anomalies: Optional[Path] = None) -> PrepareRecord:
    return PrepareRecord(str(source.resolve()), str(labels.resolve()) if labels else None,
                         str(split_file.resolve()) if split_file else None, cfg,
                         str(Path(anomalies).resolve()) if anomalies else None)


def _keep_shots(listing: Listing, shots: int) -> list[str]:
    """Keep the first ``shots`` labelled anomalies (file order) in ``listing.entries``, drop the others;
    returns the kept ids. A kept row that is not in SOURCE is refused: the K-shot set is fixed by the
    file, never silently replaced by the next row."""
    rows, where = listing.anomaly_rows, listing.anomaly_file
    if shots > len(rows):
        if not rows:
            raise CxradError(f"--anomaly-shots {shots}: the labels name no labelled anomaly; list them with "
                             f"--anomalies CSV (or rows with split {ANOMALY} in --labels), or drop --anomaly-shots.")
        raise CxradError(f"{where}: lists {len(rows)} labelled anomalies (split {ANOMALY}), fewer than "
                         f"--anomaly-shots {shots}; lower --anomaly-shots to at most {len(rows)}.")
    kept = rows[:shots]
    found = {e.id for e in listing.entries}
    for e_id, line in kept:
        if e_id not in found:
            why = next((r for p, r in listing.rejects if p == e_id), "not found in SOURCE")
            raise CxradError(f"{where}: line {line}: labelled anomaly {e_id} is one of the first {shots} "
                             f"(--anomaly-shots) but cannot be used ({why}); fix the row or remove it.")
    if len(rows) > shots:
        progress.log(f"{where}: keeping the first {shots} of its {len(rows)} labelled anomalies (--anomaly-shots)")
    ids = [e_id for e_id, _ in kept]
    keep, dropped = set(ids), {e_id for e_id, _ in rows[shots:]}
    listing.entries = [e for e in listing.entries if e.split != ANOMALY or e.id in keep]
    listing.rejects = [(p, r) for p, r in listing.rejects if p not in dropped]
    return ids


def _assign(entries: list[Entry], ok: np.ndarray, cfg: PrepareConfig, *, dry: bool = False,
            anomaly_file: object = None) -> dict[str, np.ndarray]:
    """Set name -> indices into ``entries`` among those with ``ok``; pool images drawn by splits."""
    out: dict[str, list[int]] = {name: [] for name in STORED_SETS}
    pool = []
    for i, e in enumerate(entries):
        if not ok[i] or e.split == ANOMALY:  # labelled anomalies: _check_anomalies
            continue
        (out[e.split] if e.split else pool).append(i)
    requested = any(v is not None for v in (cfg.normal_count, cfg.unlabeled_count, cfg.anomaly_rate))
    if requested and not pool:
        raise CxradError("--normal-count/--unlabeled-count/--anomaly-rate given, but the labels name every "
                         "image's set directly (split column or split file); drop those options or the split column.")
    if cfg.val_normals and out["val"]:
        raise CxradError("--val-normals given, but SOURCE already names a val set; use that one or drop --val-normals.")
    if pool:
        if out["normal"] or out["unlabeled"]:
            raise CxradError("the labels name Dn/Du for some images (split normal/unlabeled) and leave others in "
                             "the pool (train or empty split); name every image's set or none.")
        req = SplitRequest(cfg.normal_count, cfg.unlabeled_count, cfg.anomaly_rate, cfg.seed, cfg.test_fraction,
                           cfg.val_normals or 0)
        pool_arr = np.array(pool)
        pool_sorted = pool_arr[np.argsort([entries[i].id for i in pool])]  # selection independent of listing order
        labels = np.array([entries[i].label for i in pool_sorted])
        pids = [entries[i].patient_id for i in pool_sorted]
        chosen = select(labels, req, pids if any(pids) else None, need_test=not out["test"],
                        pool_name="the training pool" + (" (before decoding)" if dry else ""))
        for name, idx in chosen.items():
            out[name].extend(pool_sorted[idx].tolist())
    if not out["normal"]:
        _no_normal_set(entries, ok, bool(pool))
    if not out["val"] and (cfg.val_normals is None or (cfg.val_normals and not pool)):
        _carve_val(entries, out, cfg, quiet=dry)
    _check_anomalies(entries, ok, out, anomaly_file)
    # sets in id order; the labelled anomalies keep their file order (the order of the K-shot ranking)
    return {k: np.array(v if k == ANOMALY else sorted(v, key=lambda i: entries[i].id), dtype=np.int64)
            for k, v in out.items() if v}


def _carve_val(entries: list[Entry], out: dict[str, list[int]], cfg: PrepareConfig, quiet: bool) -> None:
    """Move normal images of the chosen Dn to the val split: ``--val-normals N`` when the labels name
    Dn directly (exactly N, whole patients), or by default :func:`auto_val_count` of them."""
    dn = sorted(out["normal"], key=lambda i: entries[i].id)   # independent of listing order
    want = auto_val_count(len(dn)) if cfg.val_normals is None else cfg.val_normals
    if not want:
        return
    pids = [entries[i].patient_id for i in dn]
    val, kept = carve_val(len(dn), want, pids if any(pids) else None, cfg.seed)
    if cfg.val_normals is not None and len(val) < want:
        raise CxradError(f"--val-normals {want}: the named normal set (Dn, {len(dn)} images) cannot give exactly "
                         f"{want} images in whole patients (largest found: {len(val)}); lower --val-normals.")
    out["val"] = [dn[i] for i in val]
    out["normal"] = [dn[i] for i in kept]
    if not quiet:
        how = "by default (--val-normals 0 trains on all of them)" if cfg.val_normals is None else "(--val-normals)"
        progress.log(f"holding {len(val)} of the {len(dn)} normal training images out as the val split {how}: "
                     "thresholds come from their scores")


def _check_anomalies(entries: list[Entry], ok: np.ndarray, out: dict[str, list[int]], where: object) -> None:
    """Refuse a kept labelled anomaly that did not decode, or whose patient is in Dn/Du/test/val
    (its image path cannot be: io.sources refuses a path listed twice)."""
    kept = [i for i, e in enumerate(entries) if e.split == ANOMALY]
    for i in kept:
        if not ok[i]:
            raise CxradError(f"{where}: labelled anomaly {entries[i].id} could not be read (see the rejects "
                             "above); fix the file or remove its row.")
        out[ANOMALY].append(i)
    patients = {entries[i].patient_id: entries[i].id for i in kept if entries[i].patient_id}
    for name in SET_NAMES:
        for i in out[name]:
            other = patients.get(entries[i].patient_id)
            if other is not None:
                raise CxradError(f"{where}: labelled anomaly {other} belongs to patient {entries[i].patient_id}, "
                                 f"whose image {entries[i].id} is in the {name} set; a labelled anomaly must come "
                                 "from a patient in no other set: remove its row or that patient's images.")


def _no_normal_set(entries: list[Entry], ok: np.ndarray, pooled: bool) -> None:
    """Refuse a prepared folder without Dn: every method trains on the normal set."""
    named = [e.id for e in entries if e.split == "normal"]
    unread = [e.id for i, e in enumerate(entries) if e.split == "normal" and not ok[i]]
    if named:
        why = f"none of the {len(named)} images named for it (split normal) could be read (first: {unread[0]})"
    elif pooled:
        why = "the split request leaves it no image; raise --normal-count"
    else:
        why = "the labels name no image for it (no row with split normal)"
    raise CxradError(f"Dn, the normal training set, would be empty: {why}")


def _image_sets(entries: list[Entry], images: list, info: list, chosen: dict[str, np.ndarray]) -> dict[str, ImageSet]:
    """The decoded images of each chosen set with labels, ids and provenance. ``images`` entries are
    released (set to None) as they are stacked, so peak memory is one copy of the output."""
    sets = {}
    for name in STORED_SETS:
        idx = chosen.get(name)
        if idx is None:
            continue
        prov_rows = [info[i] for i in idx]
        prov = {key: np.array([p[key] for p in prov_rows]) for key in
                ("modality", "photometric", "transfer_syntax", "bits_stored")}
        prov["bits_stored"] = prov["bits_stored"].astype(np.int16)
        prov["original_shape"] = np.array([p["original_shape"] for p in prov_rows], dtype=np.int32).reshape(-1, 2)
        if any(entries[i].patient_id for i in idx):
            prov["patient_id"] = np.array([entries[i].patient_id for i in idx])
        ids = [entries[i].id for i in idx]
        sets[name] = ImageSet(
            images=np.stack([images[i] for i in idx]),
            labels=np.array([entries[i].label for i in idx], dtype=np.int8),
            ids=ids, source_paths=ids, provenance=prov,
        )
        for i in idx:
            images[i] = None
    return sets


def prepare(source: Path, out: Path, cfg: PrepareConfig, labels: Optional[Path] = None,
            split_file: Optional[Path] = None, force: bool = False, anomalies: Optional[Path] = None) -> Path:
    """Decode, preprocess and split SOURCE into a prepared artifact at ``out``; returns ``out``.

    ``anomalies``: a CSV of labelled abnormal training images (or rows with split ``anomaly`` in
    ``labels``), of which ``cfg.anomaly_shots`` are kept as the ``anomaly`` set.
    A valid artifact with the same configuration at ``out`` makes this a no-op unless ``force``.
    """
    t0 = time.monotonic()
    source, out = Path(source), Path(out)
    labels = Path(labels) if labels is not None else None
    split_file = Path(split_file) if split_file is not None else None
    anomalies = Path(anomalies) if anomalies is not None else None
    cfg.validate()
    record = _record(cfg, source, labels, split_file, anomalies)
    listing = list_entries(source, labels, split_file, anomalies)
    shots = _keep_shots(listing, cfg.anomaly_shots)
    entries = listing.entries
    where = listing.anomaly_file
    # Fail on impossible split requests before spending minutes decoding.
    _assign(entries, np.ones(len(entries), bool), cfg, dry=True, anomaly_file=where)
    if not begin_output(out, "prepared", record, force=force):
        progress.log(f"{out}: already prepared with this configuration; nothing to do (use --force to redo).")
        return out
    remove_stale_temporaries(out)  # what a killed earlier run left half-written
    for path, reason in listing.rejects:
        progress.log(f"rejected {path}: {reason}")
    t_list = time.monotonic()

    workers = cfg.workers or default_workers()
    images, info = decode_all(entries, cfg, workers)
    t_decode = time.monotonic()

    rejects = list(listing.rejects) + [(e.id, info[i]) for i, e in enumerate(entries) if images[i] is None]
    ok = np.array([im is not None for im in images], dtype=bool)
    if not ok.any():
        raise CxradError(f"{source}: none of the {len(entries)} files could be read "
                         f"(first reason: {rejects[0][1]}); nothing written.")
    try:
        chosen = _assign(entries, ok, cfg, anomaly_file=where)
    except CxradError as exc:
        rejected = len(entries) - int(ok.sum())
        raise CxradError(f"{exc} ({rejected} files were rejected while decoding; see above)") from None

    sets = _image_sets(entries, images, info, chosen)
    unused = int(ok.sum()) - sum(len(s) for s in sets.values())
    pre = parameters(cfg)
    write_prepared_h5(out / DATA_FILE, sets, rejects, pre, store_dtype=cfg.store_dtype)
    t_write = time.monotonic()

    counts = {name: {"count": len(s), "label_0": int((s.labels == 0).sum()), "label_1": int((s.labels == 1).sum()),
                     "unknown": int((s.labels == -1).sum())} for name, s in sets.items()}
    # what a weakly supervised run may see, for `cxrad compare` and readers of the manifest
    anomaly_record = ({"labelled_anomalies": {"count": len(shots), "ids": shots, "listed": len(listing.anomaly_rows),
                                              "file": str(Path(where).resolve())}} if shots else {})
    write_manifest(
        out, "prepared", record,
        inputs=listing.inputs,
        outputs=[DATA_FILE],
        timings={"list": t_list - t0, "decode": t_decode - t_list, "write": t_write - t_decode,
                 "total": time.monotonic() - t0},
        extra={"summary": {"layout": listing.layout, "sets": counts, "rejects": len(rejects),
                           "unused_pool_images": unused, "workers": workers,
                           "images_per_s": len(entries) / max(t_decode - t_list, 1e-9), **anomaly_record}},
    )
    finish_output(out)
    line = ", ".join(f"{n} {c['count']} ({c['label_0']}/{c['label_1']}/{c['unknown']} normal/abnormal/unknown)"
                     for n, c in counts.items())
    progress.log(f"prepared {out}: {line}; {len(rejects)} rejected; {unused} pool images unused; "
                 f"{cfg.size}x{cfg.size}; {time.monotonic() - t0:.1f} s")
    return out
