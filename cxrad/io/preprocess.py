"""Decoded pixels -> the model's input: intensity to [0, 1], optional centre crop, resize — pure.

Every function takes and returns a 2-D float array ``(H, W)``; nothing here reads files, so
`predict` repeats exactly what `prepare` did by calling :func:`preprocess` with the recorded
parameters (:func:`parameters`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

# PIL's bilinear filter widens its triangle kernel by the reduction factor when shrinking, so it
# averages over every source pixel (antialiased) and never overshoots [0, 1] (unlike bicubic/Lanczos).
RESAMPLE = "pil-bilinear-antialiased"


def to_unit(img: np.ndarray, method: str, percentiles: tuple[float, float]) -> np.ndarray:
    """Scale intensities to [0, 1]: min–max, or between two percentiles (in %) then clip. (H, W) float32.

    No defaults here: PrepareConfig holds them, and a prepared folder records the ones it used."""
    x = np.asarray(img, dtype=np.float32)
    if method == "minmax":
        lo, hi = float(x.min()), float(x.max())
    elif method == "percentile":
        lo, hi = (float(v) for v in np.percentile(x, percentiles))
        if hi <= lo:  # a nearly constant image: fall back to the full range rather than divide by 0
            lo, hi = float(x.min()), float(x.max())
    else:
        raise ValueError(f"intensity method {method!r}: use 'minmax' or 'percentile'")
    if hi <= lo:
        return np.zeros_like(x)
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0, out=x if x is not img else None)


def center_crop(img: np.ndarray) -> np.ndarray:
    """The largest centred square of ``img`` (H, W) -> (s, s), s = min(H, W)."""
    h, w = img.shape
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return img[top:top + s, left:left + s]


def resize(img: np.ndarray, size: int) -> np.ndarray:
    """Antialiased resize of a float image (H, W) to (size, size), float32, aspect not kept."""
    if img.shape == (size, size):
        return np.asarray(img, dtype=np.float32)
    im = Image.fromarray(np.ascontiguousarray(img, dtype=np.float32), mode="F")
    return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)


def preprocess(img: np.ndarray, size: int, intensity: str, percentiles: tuple[float, float],
               crop: str = "none") -> np.ndarray:
    """The chain of docs/method.md, "Reading images": to [0, 1], optional crop, resize. (size, size) float32."""
    x = to_unit(img, intensity, percentiles)
    if crop == "center":
        x = center_crop(x)
    elif crop != "none":
        raise ValueError(f"crop {crop!r}: use 'none' or 'center'")
    return np.clip(resize(x, size), 0.0, 1.0)


def parameters(cfg: Any) -> dict[str, Any]:
    """Every preprocessing parameter, as recorded in ``data.h5`` (``cfg``: a PrepareConfig)."""
    return {
        "size": cfg.size,
        "intensity": cfg.intensity,
        "percentiles": list(cfg.percentiles),
        "crop": cfg.crop,
        "resample": RESAMPLE,
        "range": [0.0, 1.0],
        "gray": "float luma 0.299 R + 0.587 G + 0.114 B for every colour file; gray files unchanged",
        "dicom": {
            "order": ["modality LUT (rescale)", "VOI LUT or window" if cfg.voi_lut else "no VOI",
                      "invert MONOCHROME1 / Presentation LUT Shape INVERSE"],
            "voi_lut": cfg.voi_lut,
            "allow_modality": list(cfg.allow_modality),
        },
        "store_dtype": cfg.store_dtype,
        "max_megapixels": cfg.max_megapixels,
    }


def config_from_parameters(params: dict[str, Any]) -> Any:
    """The PrepareConfig that reproduces recorded ``parameters`` (so `predict` reads new files exactly
    as `prepare` read the training data)."""
    from cxrad.config import PrepareConfig

    dicom = params.get("dicom", {})
    return PrepareConfig(size=int(params["size"]), intensity=params["intensity"],
                         percentiles=tuple(params["percentiles"]), crop=params["crop"],
                         voi_lut=bool(dicom.get("voi_lut", True)),
                         allow_modality=tuple(dicom.get("allow_modality", ())),
                         **({"max_megapixels": float(params["max_megapixels"])} if "max_megapixels" in params else {}))
