"""DICOM bytes -> one gray float image with "bright = dense" (docs/method.md, "Reading images").

Order: modality LUT (rescale slope/intercept or LUT) -> VOI LUT or window (when present and
enabled) -> invert MONOCHROME1 / Presentation LUT Shape INVERSE. pydicom itself never inverts.

Privacy: only the whitelisted, non-identifying provenance fields below leave this module, and no
DICOM value is ever put into a rejection reason (exception texts of pydicom can quote values).
"""

from __future__ import annotations

import io
import logging
import warnings
from typing import Any, Iterable

import numpy as np

from cxrad.io.raster import RejectedImage, to_gray

# Projection radiography modalities accepted without --allow-modality.
XRAY_MODALITIES = ("CR", "DX", "DR", "RG", "XA", "PX")
DECODER_HINT = 'pip install "cxrad[dicom]" (pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg) or python-gdcm'

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


def decode_dicom(data: bytes, allow_modality: Iterable[str] = (), voi_lut: bool = True
                 ) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode one DICOM file. Returns ((H, W) float32, higher = denser, provenance).

    Raises :class:`RejectedImage` (a per-file reason) for non-DICOM data, wrong modality,
    missing pixel data, a missing decoder or undecodable pixels.
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warnings can quote header values
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=data[128:132] != b"DICM")
        except Exception as exc:
            raise RejectedImage(f"not a readable DICOM file ({type(exc).__name__})") from None
        if "PixelData" not in ds and "FloatPixelData" not in ds:
            raise RejectedImage("DICOM without pixel data (not an image)")
        modality = str(ds.get("Modality", "") or "").upper()
        allowed = set(XRAY_MODALITIES) | {m.upper() for m in allow_modality}
        if modality and modality not in allowed:
            raise RejectedImage(
                f"wrong modality {modality} (expected one of {', '.join(XRAY_MODALITIES)}); "
                f"use --allow-modality {modality} to accept it"
            )
        meta = getattr(ds, "file_meta", None)
        ts = meta.get("TransferSyntaxUID") if meta is not None else None
        if ts is None:
            from pydicom.uid import ImplicitVRLittleEndian as ts  # the default for headerless files
        ts_name = getattr(ts, "name", str(ts))
        if ts.is_compressed and not _decoder_available(ts):
            raise RejectedImage(f"compressed DICOM ({ts_name}) needs a decoder that is not installed: {DECODER_HINT}")
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            raise RejectedImage(f"multi-frame DICOM ({frames} frames); cxrad reads single radiographs")
        photometric = str(ds.get("PhotometricInterpretation", "") or "").upper()
        try:
            arr = ds.pixel_array
            if photometric in ("MONOCHROME1", "MONOCHROME2", ""):
                arr = apply_modality_lut(arr, ds)
                if voi_lut:
                    arr = apply_voi_lut(arr, ds)
        except RejectedImage:
            raise
        except Exception as exc:
            raise RejectedImage(f"DICOM pixel data could not be decoded ({type(exc).__name__}; "
                                f"transfer syntax {ts_name})") from None
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
