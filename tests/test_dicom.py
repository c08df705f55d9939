"""DICOM and raster decoding on real files: LUT order, MONOCHROME1, compressed, modality, colour."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from cxrad.config import PrepareConfig
from cxrad.io import dicom
from cxrad.io.images import load_image
from cxrad.io.raster import RejectedImage, decode_raster

REPO = Path(__file__).resolve().parents[1]
DICOM = REPO / "sample_data" / "dicom"
SHARED_DICOM = REPO.parent / "shared" / "data" / "dicom"
MONO1 = DICOM / "pydicom-data_RG1_UNCR_chest_CR.dcm"  # 1955x1841, MONOCHROME1, uncompressed
JPEG_DCM = DICOM / "txv_siim_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819_chest_CR.dcm"
KERMANY_JPEG = REPO / "sample_data" / "kermany" / "train" / "PNEUMONIA"
CFG = PrepareConfig(size=64)


def _lungs_darker_than_mediastinum(img: np.ndarray) -> bool:
    """64x64 PA chest: lung fields (left/right of centre) are darker than the central column."""
    lungs = (img[18:40, 8:22].mean() + img[18:40, 42:56].mean()) / 2
    return lungs < img[18:44, 29:35].mean() - 0.1


@pytest.mark.parametrize("path", [MONO1, JPEG_DCM], ids=["monochrome1", "jpeg-baseline"])
def test_chest_dicoms_lungs_dark_bones_bright(path):
    img, prov = load_image(path.read_bytes(), path.name, CFG)
    assert img.shape == (64, 64) and img.min() >= 0 and img.max() <= 1
    assert prov["modality"] == "CR"
    assert _lungs_darker_than_mediastinum(img)


def test_jpeg_compressed_dicom_decodes():
    _, prov = load_image(JPEG_DCM.read_bytes(), JPEG_DCM.name, CFG)
    assert prov["transfer_syntax"] == "1.2.840.10008.1.2.4.50" and prov["original_shape"] == (1024, 1024)


def test_monochrome1_is_the_inverse_of_the_same_file_tagged_monochrome2():
    ds = pydicom.dcmread(MONO1)
    ds.PhotometricInterpretation = "MONOCHROME2"
    buf = io.BytesIO()
    ds.save_as(buf)
    mono1, _ = load_image(MONO1.read_bytes(), "a.dcm", CFG)
    mono2, prov = load_image(buf.getvalue(), "b.dcm", CFG)
    assert prov["photometric"] == "MONOCHROME2"
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-5)


def test_presentation_lut_inverse_inverts():
    ds = pydicom.dcmread(JPEG_DCM)
    ds.PresentationLUTShape = "INVERSE"
    buf = io.BytesIO()
    ds.save_as(buf)
    plain, _ = load_image(JPEG_DCM.read_bytes(), "a.dcm", CFG)
    inv, _ = load_image(buf.getvalue(), "b.dcm", CFG)
    np.testing.assert_allclose(plain, 1.0 - inv, atol=1e-5)


def test_modality_lut_before_window():
    """The cspine CR has rescale 0.684/200 and a window 1600/2800 in output units: both applied."""
    path = SHARED_DICOM / "pydicom_dicomdirtests_CR_cspine_16x16.dcm"
    if not path.exists():
        pytest.skip("shared data not available")
    ds = pydicom.dcmread(path)
    img, _ = dicom.decode_dicom(path.read_bytes())
    raw = ds.pixel_array.astype(np.float64) * 0.684 + 200
    lo, hi = 1600 - 0.5 - (2800 - 1) / 2, 1600 - 0.5 + (2800 - 1) / 2
    expect = -np.clip((raw - lo) / (hi - lo), 0, 1)  # MONOCHROME1: negated
    c = np.corrcoef(img.ravel(), expect.ravel())[0, 1]
    assert c > 0.999


@pytest.mark.parametrize("name", ["pydicom_CT_small.dcm", "pydicom_MR_small.dcm"])
def test_ct_mr_rejected_unless_allowed(name):
    path = SHARED_DICOM / name
    if not path.exists():
        pytest.skip("shared data not available")
    modality = name.split("_")[1]
    with pytest.raises(RejectedImage, match=f"wrong modality {modality}.*--allow-modality {modality}"):
        load_image(path.read_bytes(), name, CFG)
    img, prov = load_image(path.read_bytes(), name, PrepareConfig(size=32, allow_modality=(modality,)))
    assert img.shape == (32, 32) and prov["modality"] == modality


def test_missing_decoder_names_the_package(monkeypatch):
    monkeypatch.setattr(dicom, "_decoder_available", lambda ts: False)
    with pytest.raises(RejectedImage, match=r'pip install "cxrad\[dicom\]".*pylibjpeg'):
        load_image(JPEG_DCM.read_bytes(), JPEG_DCM.name, CFG)


def test_every_raster_converted_alike_rgb_vs_gray():
    """An RGB file whose channels are equal gives exactly the numbers of its gray version."""
    src = sorted(KERMANY_JPEG.glob("*.jpeg"))[0]
    gray = Image.open(src).convert("L")
    rgb = Image.merge("RGB", [gray] * 3)
    outs = []
    for im in (gray, rgb):
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        outs.append(load_image(buf.getvalue(), "x.png", CFG)[0])
    np.testing.assert_array_equal(outs[0], outs[1])


def test_16bit_png_keeps_full_depth():
    src = np.asarray(Image.open(sorted(KERMANY_JPEG.glob("*.jpeg"))[0]).convert("L"), dtype=np.float64)
    # a real image spread over 16 bits with low-order detail 8 bits cannot hold
    arr16 = (src * 257 + np.random.default_rng(0).integers(0, 200, src.shape)).clip(0, 65535).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr16).save(buf, format="PNG")
    img, prov = decode_raster(buf.getvalue())
    assert prov["bits_stored"] == 16
    np.testing.assert_array_equal(img, arr16.astype(np.float32))  # nothing dropped before scaling
