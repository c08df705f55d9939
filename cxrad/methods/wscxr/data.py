"""WSCXR's training set: normal patch features and mined abnormal prototypes.

From the prepared data it reads only Dn (``normal``) and the first K labelled abnormal images
(``anomaly``, written by `cxrad prepare --anomalies CSV --anomaly-shots K`) — never Du, never
test or val. Steps: patch features of both (:mod:`cxrad.methods.wscxr.features`); optionally a
greedy k-center coreset of the normal features as the mining reference (PatchCore's,
``coreset_ratio`` < 1); mining distances of every abnormal patch (per image, so that a memo
shared across K reuses them); the farthest ``mining_fraction`` of all K images' patches are the
prototypes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrad.errors import CxradError
from cxrad.methods.wscxr.config import WSCXRConfig
from cxrad.methods.wscxr.features import digest, extract, memoized
from cxrad.methods.wscxr.mining import mining_distance, select_farthest


@dataclass
class TrainingSet:
    """``normal`` (N, P, D) patch features of Dn; ``prototypes`` (M', D) mined abnormal patch
    features, farthest first; ``info``: counts for the model manifest."""

    normal: torch.Tensor
    prototypes: torch.Tensor
    info: dict[str, Any]


def _prepare_hint(prepared: Path) -> str:
    return (f"re-create it with `cxrad prepare SOURCE --out {prepared} --anomalies CSV --anomaly-shots K --force` "
            "(CSV: path,label rows of images labelled abnormal, not in the other sets)")


def load_anomalies(prepared: Path, shots: int | None) -> np.ndarray:
    """The first ``shots`` (None: all) labelled abnormal images (K, H, W) of ``prepared``; one-line
    refusal when the prepared data have none or fewer than ``shots``."""
    from cxrad.io.store import ANOMALY_SET, load_split, open_prepared

    with open_prepared(prepared) as h5:
        count = int(h5[ANOMALY_SET]["labels"].shape[0]) if ANOMALY_SET in h5 else 0
    if count == 0:
        raise CxradError(f"{prepared}: holds no labelled abnormal images (no '{ANOMALY_SET}' set); WSCXR trains on "
                         f"a few of them besides the normals: {_prepare_hint(prepared)}.")
    if shots is not None and shots > count:
        raise CxradError(f"--set shots={shots}: {prepared} holds only {count} labelled abnormal image(s); use "
                         f"shots <= {count}, or prepare more with a larger --anomaly-shots.")
    images = load_split(prepared, ANOMALY_SET, labelled_anomalies=True).images
    return images[:count if shots is None else shots]


def load_normals(prepared: Path) -> np.ndarray:
    from cxrad.io.store import load_split

    images = load_split(prepared, "normal").images
    if len(images) == 0:
        raise CxradError(f"{prepared}: the normal split (Dn) is empty; WSCXR learns normal patches from it — prepare "
                         "data with some.")
    return images


def mining_reference(normal_flat: torch.Tensor, normal_key: str, cfg: WSCXRConfig, device: torch.device) -> tuple[
        torch.Tensor, str]:
    """The normal features anomaly mining measures against: all of them (``coreset_ratio`` 1, the
    paper's Eq. 3) or their greedy k-center coreset (the code's ApproximateGreedyCoresetSampler).
    -> (reference (R, D), its memo key)."""
    if cfg.coreset_ratio >= 1.0:
        return normal_flat, normal_key
    from cxrad.methods.patchcore.coreset import greedy_coreset

    count = max(1, int(len(normal_flat) * cfg.coreset_ratio))
    key = f"{normal_key}/coreset/{count}/{cfg.seed}"
    index = memoized(("coreset", key), lambda: greedy_coreset(normal_flat.to(device), count, seed=cfg.seed).indices)
    return normal_flat[index.cpu()], key


def training_set(prepared: Path, cfg: WSCXRConfig, extractor, extractor_key: tuple,
                 device: torch.device) -> TrainingSet:
    """Dn and the first ``cfg.shots`` labelled anomalies of ``prepared`` -> :class:`TrainingSet`."""
    normals, anomalies = load_normals(prepared), load_anomalies(prepared, cfg.shots)
    common = dict(key=extractor_key, batch_size=cfg.feature_batch, device=device)
    normal = extract(extractor, normals, label="wscxr features (Dn)", **common)            # (N, P, D)
    abnormal = extract(extractor, anomalies, label="wscxr features (anomalies)", **common)  # (K, P, D)
    flat = normal.reshape(-1, normal.shape[-1])
    reference, ref_key = mining_reference(flat, digest(normal), cfg, device)
    ref = reference.to(device)
    # per image: S(m) of one image's patches does not depend on the other images, so a memo
    # shared by runs with K = 2, 4, ... computes each image once
    distances = [memoized(("mining", ref_key, digest(a), cfg.mining_k),
                          lambda a=a: mining_distance(a.to(device), ref, k=cfg.mining_k).cpu())
                 for a in abnormal]
    distance = torch.cat(distances)
    abnormal_flat = abnormal.reshape(-1, abnormal.shape[-1])
    index = select_farthest(distance, cfg.mining_fraction)
    prototypes = abnormal_flat[index].clone()
    info = {"train_images": len(normals), "anomaly_images": len(anomalies), "patches_per_image": normal.shape[1],
            "normal_patches": len(flat), "mining_reference": len(reference), "abnormal_patches": len(abnormal_flat),
            "prototypes": len(prototypes), "mined_distance_min": float(distance[index].min()),
            "abnormal_distance_median": float(distance.median())}
    return TrainingSet(normal, prototypes, info)
