"""DICOM bytes -> one gray float image with "bright = dense" (docs/method.md, "Reading images").

Order: modality LUT (rescale slope/intercept or LUT) -> VOI LUT or window (when present, valid and
enabled) -> invert MONOCHROME1 / Presentation LUT Shape INVERSE. pydicom itself never inverts.
PALETTE COLOR images go through their palette to RGB, then the common luma formula.

Privacy: only the whitelisted, non-identifying provenance fields below leave this module, and no
DICOM value is ever put into a rejection reason (exception texts of pydicom can quote values); the
transfer syntax UID, which identifies an encoding and not a patient, is the one exception.
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from typing import Any, Iterable, Optional

import numpy as np

from cxrad.io.raster import RejectedImage, pixel_limit_reason, to_gray

# Projection radiography modalities accepted without --allow-modality.
XRAY_MODALITIES = ("CR", "DX", "DR", "RG", "XA", "PX")
DECODER_HINT = 'pip install "cxrad[dicom]" (pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg) or python-gdcm'
PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) as stored in a little-endian file
PALETTE_ELEMENTS = tuple(f"{c}PaletteColorLookupTable{p}" for c in ("Red", "Green", "Blue")
                         for p in ("Descriptor", "Data"))

logging.getLogger("pydicom").setLevel(logging.CRITICAL)  # its messages can quote header values


def is_dicom(data: bytes, name: str = "") -> bool:
    """Part-10 preamble, or a DICOM file extension."""
    return data[128:132] == b"DICM" or name.lower().endswith((".dcm", ".dicom"))


def _decoder_available(transfer_syntax: Any) -> bool:
    """Whether an installed plugin can decode this (compressed) transfer syntax."""
    from pydicom.pixels import get_decoder

    try:
        return bool(get_decoder(transfer_syntax).is_available)
    except NotImplementedError:
        return False


def _read_dataset(data: bytes) -> Any:
    """The parsed dataset of a DICOM file with pixel data; rejects text or other files named .dcm."""
    import pydicom
    from pydicom.datadict import dictionary_has_tag

    preamble = data[128:132] == b"DICM"
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=not preamble)
        first = next(iter(ds.keys()), None)
    except Exception as exc:
        raise RejectedImage(f"not a readable DICOM file ({type(exc).__name__})") from None
    standard = first is not None and (dictionary_has_tag(first) or (first.element == 0 and first.group % 2 == 0))
    if not preamble and not standard:
        # forced parsing reads any bytes as some elements; a real headerless file starts with standard ones
        raise RejectedImage("not a DICOM file (no DICM preamble and no DICOM data elements; "
                            "a text or other file named .dcm?)")
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        if PIXEL_DATA_TAG in data:
            raise RejectedImage("pixel data truncated (the file ends inside the pixel data element)")
        raise RejectedImage("DICOM without pixel data (not an image)")
    return ds


def _transfer_syntax(ds: Any) -> Any:
    """The dataset's transfer syntax, refused when cxrad cannot decode it (and why)."""
    from pydicom.uid import UID, MPEGTransferSyntaxes

    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts is None:
        from pydicom.uid import ImplicitVRLittleEndian as ts  # the default for headerless files
    ts = UID(str(ts))
    if ts in MPEGTransferSyntaxes:
        raise RejectedImage(f"video transfer syntax ({ts.name}): video (MPEG-2, MPEG-4, HEVC) is not supported; "
                            "cxrad reads still radiographs, export the frame as a still image")
    if not ts.is_transfer_syntax:
        uid = str(ts) if re.fullmatch(r"[0-9.]{1,64}", str(ts)) else "(not a valid UID)"
        raise RejectedImage(f"unknown or private transfer syntax {uid}; cxrad reads the standard DICOM "
                            "transfer syntaxes only")
    if ts.is_compressed and not _decoder_available(ts):
        raise RejectedImage(f"compressed DICOM ({ts.name}) needs a decoder that is not installed: {DECODER_HINT}")
    return ts


def _check_geometry(ds: Any, ts: Any, max_pixels: Optional[int]) -> None:
    """Refuse multi-frame images, images above the pixel limit and truncated pixel data, before decoding."""
    from pydicom.uid import JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes

    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise RejectedImage(f"multi-frame DICOM ({frames} frames); cxrad reads single radiographs")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if max_pixels and rows * cols > max_pixels:
        raise RejectedImage(pixel_limit_reason(cols, rows, max_pixels))
    pixels = ds.get("PixelData")
    if pixels is None:
        return
    if not ts.is_encapsulated:
        bits = int(ds.get("BitsAllocated", 8) or 8)
        expected = (rows * cols * samples * bits + 7) // 8
        if len(pixels) < expected:
            raise RejectedImage(f"pixel data truncated ({len(pixels)} of {expected} bytes)")
    elif ts in set(JPEGTransferSyntaxes) | set(JPEGLSTransferSyntaxes) | set(JPEG2000TransferSyntaxes):
        # every JPEG, JPEG-LS and JPEG 2000 codestream ends with the marker FF D9, which cannot occur
        # inside its coded data; a codestream cut short lacks it, and some decoders fill the rest silently
        from pydicom.encaps import generate_frames

        try:
            frame = next(generate_frames(pixels, number_of_frames=1), b"")
        except Exception:
            raise RejectedImage("pixel data truncated or malformed (encapsulated fragments)") from None
        if b"\xff\xd9" not in frame.rstrip(b"\0")[-16:]:
            raise RejectedImage(f"pixel data truncated ({ts.name} image without its end marker)")


def _usable_window(ds: Any) -> bool:
    """Whether a VOI window (when there is one and no VOI LUT) is valid: width >= 1 (LINEAR) or > 0.

    An invalid window (e.g. WindowWidth 0) is ignored, as if absent: documented in docs/method.md.
    """
    if "VOILUTSequence" in ds or "WindowWidth" not in ds:
        return True
    try:
        width = ds.WindowWidth
        width = float(width[0] if not isinstance(width, (int, float, str)) else width)
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    except Exception:
        return False
    return width >= 1 if function == "LINEAR" else width > 0


def _grey_values(arr: np.ndarray, ds: Any, voi_lut: bool) -> np.ndarray:
    """Modality LUT, then VOI LUT or window (when enabled, present and valid) of a monochrome image."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        arr = apply_modality_lut(arr, ds)
    except Exception as exc:
        raise RejectedImage(f"invalid modality LUT or rescale ({type(exc).__name__})") from None
    if voi_lut and str(ds.get("PhotometricInterpretation", "")).upper() in ("MONOCHROME1", "MONOCHROME2") \
            and _usable_window(ds):
        try:
            arr = apply_voi_lut(arr, ds)
        except Exception as exc:
            raise RejectedImage(f"invalid VOI LUT or window ({type(exc).__name__}); --no-voi-lut ignores "
                                "them") from None
    return arr


def _palette_rgb(arr: np.ndarray, ds: Any) -> np.ndarray:
    """A PALETTE COLOR image through its palette to RGB; refused without one (its values are indices)."""
    from pydicom.pixels import apply_color_lut

    segmented = all(f"Segmented{c}PaletteColorLookupTableData" in ds for c in ("Red", "Green", "Blue"))
    if not segmented and not all(e in ds for e in PALETTE_ELEMENTS):
        raise RejectedImage("PALETTE COLOR image without its colour palette (lookup tables missing); "
                            "its pixel values are palette indices, not grey levels")
    try:
        return apply_color_lut(arr, ds)
    except Exception as exc:
        raise RejectedImage(f"PALETTE COLOR palette could not be applied ({type(exc).__name__})") from None


def decode_dicom(data: bytes, allow_modality: Iterable[str] = (), voi_lut: bool = True,
                 max_pixels: Optional[int] = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode one DICOM file. Returns ((H, W) float32, higher = denser, provenance).

    Raises :class:`RejectedImage` (a per-file reason) for non-DICOM data, wrong modality,
    missing or truncated pixel data, an unsupported transfer syntax or missing decoder, more than
    ``max_pixels`` pixels (checked on the header, before decoding) or undecodable pixels.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warnings can quote header values
        ds = _read_dataset(data)
        modality = str(ds.get("Modality", "") or "").upper()
        allowed = set(XRAY_MODALITIES) | {m.upper() for m in allow_modality}
        if modality and modality not in allowed:
            raise RejectedImage(
                f"wrong modality {modality} (expected one of {', '.join(XRAY_MODALITIES)}); "
                f"use --allow-modality {modality} to accept it"
            )
        ts = _transfer_syntax(ds)
        _check_geometry(ds, ts, max_pixels)
        photometric = str(ds.get("PhotometricInterpretation", "") or "").upper()
        try:
            arr = ds.pixel_array
        except Exception as exc:
            raise RejectedImage(f"DICOM pixel data could not be decoded ({type(exc).__name__}; "
                                f"transfer syntax {ts.name})") from None
        if photometric == "PALETTE COLOR":
            arr = _palette_rgb(arr, ds)
        elif photometric in ("MONOCHROME1", "MONOCHROME2", ""):
            arr = _grey_values(arr, ds, voi_lut)
        shape = tuple(int(v) for v in np.shape(arr)[:2])
        img = to_gray(arr)
        invert = photometric == "MONOCHROME1" or str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE"
        if invert:
            # Negation; the [0, 1] scaling that follows turns it into max - x.
            img = -img
        prov = {
            "modality": modality,
            "photometric": photometric,
            "bits_stored": int(ds.get("BitsStored", 0) or 0),
            "transfer_syntax": str(ts),
            "original_shape": shape,
        }
    return img, prov
