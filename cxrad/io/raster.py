"""PNG / JPEG bytes -> one gray float image, the same conversion for every file (docs/method.md, "Reading images").

Colour is removed by one float luma formula applied to every colour file; a gray file whose three
channels are equal gives exactly the same numbers as its gray version. A mode-dependent path
(e.g. PIL ``convert("L")`` for some files only) would leak the label in the Kermany set, where only
abnormal files are RGB. 16-bit files keep all their bits until the [0, 1] scaling.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxrad.errors import CxradError

# ITU-R BT.601, as PIL's "L". Applied in float64 so equal channels v give exactly v once cast to float32.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)
Image.MAX_IMAGE_PIXELS = 400_000_000  # radiographs are large; still guard against decompression bombs


class RejectedImage(CxradError):
    """A per-file problem: the file is skipped and listed with this reason."""


def to_gray(arr: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) numeric array -> (H, W) float32; alpha dropped, colour -> luma."""
    a = np.asarray(arr)
    if a.ndim == 2:
        return a.astype(np.float32)
    if a.ndim == 3 and a.shape[2] in (3, 4):
        return (a[..., :3].astype(np.float64) @ LUMA).astype(np.float32)
    if a.ndim == 3 and a.shape[2] in (1, 2):  # gray (+ alpha)
        return a[..., 0].astype(np.float32)
    raise RejectedImage(f"unsupported pixel layout {a.shape}")


def decode_raster(data: bytes) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode PNG/JPEG/other Pillow formats. Returns ((H, W) float32, provenance)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            fmt, mode = im.format or "", im.mode
            if mode == "P":  # palette: expand through the palette, then the common colour path
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            elif mode == "1":
                im = im.convert("L")
            arr = np.asarray(im)
    except UnidentifiedImageError:
        raise RejectedImage("not an image (unrecognised file format)") from None
    except Image.DecompressionBombError as exc:
        raise RejectedImage(f"image too large ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise RejectedImage(f"unreadable or truncated image ({exc})") from None
    except Exception as exc:  # Pillow plugins raise assorted errors on malformed files
        raise RejectedImage(f"unreadable image ({type(exc).__name__}: {exc})") from None
    bits = 16 if arr.dtype in (np.uint16, np.int32, np.int16) else (32 if arr.dtype == np.float32 else 8)
    if mode.startswith("I") and arr.dtype == np.int32:
        # PIL opens 16-bit PNGs as mode "I" (int32); record the real depth from the data range
        bits = 16 if arr.max(initial=0) < 65536 and arr.min(initial=0) >= 0 else 32
    prov = {
        "modality": "",
        "photometric": mode,
        "bits_stored": bits,
        "transfer_syntax": fmt,
        "original_shape": arr.shape[:2],
    }
    return to_gray(arr), prov
