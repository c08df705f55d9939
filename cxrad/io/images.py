"""File bytes -> preprocessed model input: picks the DICOM or raster decoder, then preprocesses.

Shared by `prepare` and `predict` so both treat a file identically.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cxrad.io.dicom import decode_dicom, is_dicom
from cxrad.io.preprocess import preprocess
from cxrad.io.raster import RejectedImage, decode_raster


def load_image(data: bytes, name: str, cfg: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode and preprocess one file. ``cfg``: a PrepareConfig.

    Returns ((size, size) float32 in [0, 1], provenance). Raises :class:`RejectedImage` with the
    reason for files that must be skipped (empty, not an image, truncated, all-constant, ...).
    """
    if len(data) == 0:
        raise RejectedImage("empty file (0 bytes)")
    max_pixels = int(cfg.max_megapixels * 1e6)
    if is_dicom(data, name):
        img, prov = decode_dicom(data, cfg.allow_modality, cfg.voi_lut, max_pixels)
    else:
        img, prov = decode_raster(data, max_pixels)
    if img.size == 0:
        raise RejectedImage("image has no pixels")
    if not np.isfinite(img).all():
        raise RejectedImage("pixel values are not all finite")
    if float(img.max()) == float(img.min()):
        raise RejectedImage("all pixels have the same value (blank image)")
    out = preprocess(img, cfg.size, cfg.intensity, tuple(cfg.percentiles), cfg.crop)
    return out, prov
