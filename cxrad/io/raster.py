"""PNG / JPEG bytes -> one gray float image, the same conversion for every file (docs/method.md, "Reading images").

Colour is removed by one float luma formula applied to every colour file; a gray file whose three
channels are equal gives exactly the same numbers as its gray version. A mode-dependent path
(e.g. PIL ``convert("L")`` for some files only) would leak the label in the Kermany set, where only
abnormal files are RGB. 16-bit files keep all their bits until the [0, 1] scaling.
"""

from __future__ import annotations

import io
from typing import Any, Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxrad.errors import CxradError

# ITU-R BT.601, as PIL's "L". Applied in float64 so equal channels v give exactly v once cast to float32.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)
Image.MAX_IMAGE_PIXELS = 400_000_000  # radiographs are large; still guard against decompression bombs
LUMA_BLOCK_PIXELS = 1 << 18            # pixels converted to luma at a time
JPEG_DRAFT_SCALES = (2, 4, 8)          # libjpeg decodes at these reductions directly (DCT scaling)


class RejectedImage(CxradError):
    """A per-file problem: the file is skipped and listed with this reason."""


def to_gray(arr: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) numeric array -> (H, W) float32; alpha dropped, colour -> luma."""
    a = np.asarray(arr)
    if a.ndim == 2:
        return a.astype(np.float32)
    if a.ndim == 3 and a.shape[2] in (3, 4):
        # by blocks of rows: the float64 temporaries stay small (24 bytes per pixel for the whole image
        # otherwise); the numbers are the same as one product over the whole image
        out = np.empty(a.shape[:2], dtype=np.float32)
        step = max(1, LUMA_BLOCK_PIXELS // max(1, a.shape[1]))
        for r in range(0, a.shape[0], step):
            out[r:r + step] = a[r:r + step, :, :3].astype(np.float64) @ LUMA
        return out
    if a.ndim == 3 and a.shape[2] in (1, 2):  # gray (+ alpha)
        return a[..., 0].astype(np.float32)
    raise RejectedImage(f"unsupported pixel layout {a.shape}")


def pixel_limit_reason(width: int, height: int, max_pixels: int) -> str:
    """The reject reason of an image above the pixel limit (PrepareConfig.max_megapixels)."""
    return (f"image of {width} x {height} = {width * height / 1e6:.1f} megapixels is above the limit of "
            f"{max_pixels / 1e6:g} megapixels (--max-megapixels); not decoded")


def _fit_pixel_limit(im: Image.Image, max_pixels: int) -> None:
    """Before loading: decode a JPEG above ``max_pixels`` at 1/2, 1/4 or 1/8 scale (the least reduction that
    fits); refuse any other image above it. Images within the limit are decoded in full."""
    width, height = im.size
    if width * height <= max_pixels:
        return
    for scale in JPEG_DRAFT_SCALES if im.format in ("JPEG", "MPO") else ():
        if -(-width // scale) * -(-height // scale) <= max_pixels:
            request = (max(1, width // scale), max(1, height // scale))
            if im.draft(None, request) is not None and im.size[0] * im.size[1] <= max_pixels:
                return
            break
    raise RejectedImage(pixel_limit_reason(width, height, max_pixels))


def decode_raster(data: bytes, max_pixels: Optional[int] = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode PNG/JPEG/other Pillow formats. Returns ((H, W) float32, provenance).

    ``max_pixels`` bounds the decoded size (and so the memory): it is checked on the header, before
    any pixel is decoded (:func:`_fit_pixel_limit`).
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            original = (im.size[1], im.size[0])
            if max_pixels:
                _fit_pixel_limit(im, max_pixels)
            im.load()
            fmt, mode = im.format or "", im.mode
            if mode == "P":  # palette: expand through the palette, then the common colour path
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            elif mode == "1":
                im = im.convert("L")
            arr = np.asarray(im)
    except RejectedImage:
        raise
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
        "original_shape": original,
    }
    return to_gray(arr), prov
