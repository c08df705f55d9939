"""Hostile inputs (issue 19): every one is a per-file reject with an accurate reason, or a one-line
error naming the file (and line or key) raised before decoding, never a traceback, a silent wrong
answer or a half-written artifact. Each hostile file is built here from the real sample files."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import SAMPLE
from PIL import Image
from toy_method import ToyMethod

from cxrad import methods
from cxrad.artifacts import input_record, is_valid, write_manifest
from cxrad.config import PrepareConfig
from cxrad.errors import CxradError
from cxrad.io.images import load_image
from cxrad.io.raster import LUMA, decode_raster, to_gray
from cxrad.io.sources import list_entries
from cxrad.io.store import load_split, preprocessing_of, read_rejects

MONO1 = SAMPLE / "dicom" / "pydicom-data_RG1_UNCR_chest_CR.dcm"  # native, MONOCHROME1, window 30000
JPEG_DCM = SAMPLE / "dicom" / "txv_siim_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819_chest_CR.dcm"
NORMALS = sorted((SAMPLE / "kermany" / "train" / "NORMAL").glob("*.jpeg"))
ABNORMALS = sorted((SAMPLE / "kermany" / "train" / "PNEUMONIA").glob("*.jpeg"))
CFG = PrepareConfig(size=32)


# ---------------------------------------------------------------------------------------------
# hostile files, built from the real samples
# ---------------------------------------------------------------------------------------------
def _dicom_bytes(path: Path, **changes) -> bytes:
    """A sample DICOM with ``changes`` (meta element TransferSyntaxUID, data elements, PixelData slice)."""
    ds = pydicom.dcmread(path)
    if "TransferSyntaxUID" in changes:
        ds.file_meta.TransferSyntaxUID = changes.pop("TransferSyntaxUID")
    for key, value in changes.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG declaring ``width`` x ``height`` 8-bit grey pixels with data for its first 64 rows only:
    1.5 KB on disk, gigabytes once decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"".join(b"\0" + bytes([r]) * width for r in range(64)), 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A real sample JPEG whose frame header (SOF0) declares ``width`` x ``height``."""
    data = bytearray(NORMALS[0].read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _write(folder: Path, name: str, data: bytes) -> str:
    (folder / name).write_bytes(data)
    return name


def _symlink(folder: Path, name: str, target: str) -> str:
    os.symlink(target, folder / name)
    return name


def _fifo(folder: Path, name: str) -> str:
    os.mkfifo(folder / name)
    return name


HALF_JPEG_DCM = JPEG_DCM.read_bytes()[:JPEG_DCM.stat().st_size // 2]

# id -> (builder(folder) -> file name, words the reject reason must hold)
PER_FILE = {
    "unknown-transfer-syntax": (lambda d: _write(d, "u.dcm", _dicom_bytes(JPEG_DCM, TransferSyntaxUID="1.2.3.4.5.6")),
                                "unknown or private transfer syntax 1.2.3.4.5.6"),
    "private-transfer-syntax": (lambda d: _write(d, "p.dcm", _dicom_bytes(MONO1,
                                                                         TransferSyntaxUID="1.3.46.670589.33.1.4.1")),
                                "unknown or private transfer syntax"),
    "mpeg2-video": (lambda d: _write(d, "m.dcm", _dicom_bytes(JPEG_DCM, TransferSyntaxUID="1.2.840.10008.1.2.4.100")),
                    "video (MPEG-2, MPEG-4, HEVC) is not supported"),
    "hevc-video": (lambda d: _write(d, "h.dcm", _dicom_bytes(JPEG_DCM, TransferSyntaxUID="1.2.840.10008.1.2.4.107")),
                   "video transfer syntax"),
    "text-named-dcm": (lambda d: _write(d, "t.dcm", b"PatientName,Study\nnot a DICOM file at all\n" * 20),
                       "not a DICOM file"),
    "png-named-dcm": (lambda d: _write(d, "png.dcm", NORMALS[0].read_bytes()), "not a DICOM file"),
    "file-cut-in-jpeg-pixel-data": (lambda d: _write(d, "cut.dcm", HALF_JPEG_DCM), "pixel data truncated"),
    "jpeg-pixel-data-cut": (lambda d: _write(d, "cutpix.dcm", _dicom_bytes(
        JPEG_DCM, PixelData=pydicom.dcmread(JPEG_DCM).PixelData[:60000])), "pixel data truncated"),
    "native-pixel-data-cut": (lambda d: _write(d, "native.dcm", MONO1.read_bytes()[:3_000_000]),
                              "pixel data truncated"),
    "palette-without-lut": (lambda d: _write(d, "pal.dcm", _dicom_bytes(MONO1,
                                                                       PhotometricInterpretation="PALETTE COLOR")),
                            "PALETTE COLOR image without its colour palette"),
    "png-declaring-400-megapixels": (lambda d: _write(d, "bomb.png", _png_header_only(20000, 20000)),
                                     "above the limit of 50 megapixels"),
    "dangling-symlink": (lambda d: _symlink(d, "gone.jpeg", "nowhere.jpeg"), "dangling symbolic link"),
    "self-loop-symlink": (lambda d: _symlink(d, "loop.jpeg", "loop.jpeg"), "symbolic link loop"),
    "fifo": (lambda d: _fifo(d, "pipe.jpeg"), "not a regular file (FIFO"),
}


def _source(tmp_path: Path) -> Path:
    """SOURCE with img/ (4 Dn, 2 + 2 test JPEGs) and an empty bad/ for the hostile file."""
    src = tmp_path / "src"
    (src / "img").mkdir(parents=True)
    (src / "bad").mkdir()
    for i, f in enumerate(NORMALS[:6]):
        shutil.copy(f, src / "img" / f"n{i}.jpeg")
    for i, f in enumerate(ABNORMALS[:2]):
        shutil.copy(f, src / "img" / f"a{i}.jpeg")
    return src


def _labels(path: Path, extra_rows: str = "") -> Path:
    rows = [f"img/n{i}.jpeg,0,normal" for i in range(4)]
    rows += ["img/n4.jpeg,0,test", "img/n5.jpeg,0,test", "img/a0.jpeg,1,test", "img/a1.jpeg,1,test"]
    path.write_text("path,label,split\n" + "\n".join(rows) + "\n" + extra_rows)
    return path


def _one_line_error(code: int, out: str, err: str, *words: str, decoded: bool = False) -> str:
    """The one error line (the last of stderr; before it only progress and reject lines when ``decoded``)."""
    assert code == 2, (code, out, err)
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("cxrad: error: ") and sum("error" in line for line in lines) == 1, err
    assert decoded or len(lines) == 1, err
    for w in words:
        assert w in lines[-1], (w, lines[-1])
    return lines[-1]


# ---------------------------------------------------------------------------------------------
# item 4 and 12: per-file problems are rejects with an accurate reason, the rest is prepared
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(PER_FILE))
def test_hostile_file_is_a_reject_with_its_reason(cli, tmp_path, case):
    build, reason = PER_FILE[case]
    src = _source(tmp_path)
    name = build(src / "bad")
    labels = _labels(tmp_path / "l.csv", f"bad/{name},1,test\n")
    out = tmp_path / "out"
    code, stdout, err = cli("prepare", src, "--labels", labels, "--out", out, "--size", 32, "--workers", 1)
    assert code == 0, err
    assert "Traceback" not in stdout + err
    assert is_valid(out, "prepared")
    rejects = dict(read_rejects(out))
    assert list(rejects) == [f"bad/{name}"]
    assert reason in rejects[f"bad/{name}"], rejects
    assert f"rejected bad/{name}: " in err
    assert len(load_split(out, "test").ids) == 4


@pytest.mark.parametrize("case", ["dangling-symlink", "self-loop-symlink", "fifo", "png-declaring-400-megapixels"])
def test_folder_layout_with_links_and_fifos_is_prepared(cli, tmp_path, case):
    """Folder layout (no labels): links and FIFOs used to crash the listing digest (AttributeError)."""
    build, reason = PER_FILE[case]
    for split, cls, files in (("train", "NORMAL", NORMALS[:6]), ("train", "PNEUMONIA", ABNORMALS[:4]),
                              ("test", "NORMAL", NORMALS[6:8]), ("test", "PNEUMONIA", ABNORMALS[4:6])):
        (tmp_path / "src" / split / cls).mkdir(parents=True)
        for f in files:
            shutil.copy(f, tmp_path / "src" / split / cls / f.name)
    name = build(tmp_path / "src" / "train" / "NORMAL")
    (tmp_path / "src" / "train" / "NORMAL" / "notes.txt").write_text("not an image name")
    out = tmp_path / "out"
    code, stdout, err = cli("prepare", tmp_path / "src", "--out", out, "--size", 32, "--workers", 1,
                            "--normal-count", 2, "--unlabeled-count", 4, "--anomaly-rate", 0.5)
    assert code == 0 and "Traceback" not in stdout + err, err
    assert is_valid(out, "prepared")
    rejects = dict(read_rejects(out))
    assert reason in rejects[f"train/NORMAL/{name}"]
    assert "suffix .txt is not an image type" in rejects["train/NORMAL/notes.txt"]


def test_window_width_zero_is_ignored_as_no_window():
    """WindowWidth 0 is invalid (DICOM requires >= 1): the image is read as without a window."""
    for path in (JPEG_DCM, MONO1):
        data = _dicom_bytes(path, WindowCenter=100, WindowWidth=0)
        got, prov = load_image(data, "w.dcm", CFG)
        plain, _ = load_image(data, "w.dcm", PrepareConfig(size=32, voi_lut=False))
        np.testing.assert_array_equal(got, plain)
        assert prov["modality"] == "CR"


def test_palette_color_goes_through_its_palette():
    """A PALETTE COLOR image whose palette is a falling grey ramp reads as the inverse of the same pixels
    tagged MONOCHROME2 (its values are indices: read as grey levels they would give the MONOCHROME2 image)."""
    ds = pydicom.dcmread(MONO1)
    ds.PhotometricInterpretation = "MONOCHROME2"
    for key in ("WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept"):
        if key in ds:
            delattr(ds, key)
    buf = io.BytesIO()
    ds.save_as(buf)
    grey, _ = load_image(buf.getvalue(), "g.dcm", CFG)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ramp = np.arange(65535, 0, -2, dtype=np.uint16)  # 32768 entries: index i -> 65535 - 2i
    for colour in ("Red", "Green", "Blue"):
        ds.add_new(f"{colour}PaletteColorLookupTableDescriptor", "US", [32768, 0, 16])
        ds.add_new(f"{colour}PaletteColorLookupTableData", "OW", ramp.tobytes())
    buf = io.BytesIO()
    ds.save_as(buf)
    got, prov = load_image(buf.getvalue(), "p.dcm", CFG)
    assert prov["photometric"] == "PALETTE COLOR"
    np.testing.assert_allclose(got, 1.0 - grey, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# item 8: whole-input problems are one line naming the file (and line or key), before decoding
# ---------------------------------------------------------------------------------------------
def _tar(tmp_path: Path) -> Path:
    tar = tmp_path / "s.tar"
    with tarfile.open(tar, "w") as tf:
        for split, cls, files in (("train", "NORMAL", NORMALS[:4]), ("train", "PNEUMONIA", ABNORMALS[:4]),
                                  ("test", "NORMAL", NORMALS[4:6]), ("test", "PNEUMONIA", ABNORMALS[4:6])):
            for f in files:
                tf.add(f, f"{split}/{cls}/{f.name}")
    return tar


def _cut_tar_mid_member(tar: Path) -> int:
    return tar.stat().st_size // 2 + 100


def _cut_tar_at_member_boundary(tar: Path) -> int:
    with tarfile.open(tar) as tf:
        members = tf.getmembers()
    return members[5].offset  # the header of member 6: tarfile alone reads the first 5 and stops quietly


@pytest.mark.parametrize("cut", [_cut_tar_mid_member, _cut_tar_at_member_boundary], ids=["mid-member", "boundary"])
def test_truncated_tar_is_a_one_line_error(cli, tmp_path, cut):
    tar = _tar(tmp_path)
    cut_tar = tmp_path / "cut.tar"
    cut_tar.write_bytes(tar.read_bytes()[:cut(tar)])
    out = tmp_path / "out"
    code, stdout, err = cli("prepare", cut_tar, "--out", out, "--size", 32, "--workers", 1, "--normal-count", 2,
                            "--unlabeled-count", 2, "--anomaly-rate", 0.5)
    _one_line_error(code, stdout, err, str(cut_tar), "truncated")
    assert not out.exists()


GOOD = "img/n0.jpeg"


@pytest.mark.parametrize("text, words", [
    (f"path,label,split\n{GOOD},0,normal\nimg/n1\0.jpeg,0,normal\n", ["line 3", "NUL byte"]),
    (f"path,label,split\n{GOOD},0,normal\nimg/n1.jpeg,0,normal,\0\n", ["line 3", "NUL byte"]),
    (f'path,label,split\n{GOOD},0,normal\n"img/n1.jpeg,0,normal\nimg/n2.jpeg,0,normal\n', ["line 3", "never closed"]),
    (f'path,label,split\n{GOOD},0,normal\n\n"img/n1.jpeg,0,normal\nimg/n2.jpeg",0,normal\nimg/n3.jpeg,0,test\n',
     ["line 4", "runs over lines 4-5", "unclosed quote"]),
], ids=["nul-in-path", "nul-in-extra-column", "unterminated-quote", "quote-swallows-a-row"])
def test_bad_labels_csv_is_refused_before_decoding(cli, tmp_path, text, words):
    src = _source(tmp_path)
    labels = tmp_path / "labels.csv"
    labels.write_text(text)
    out = tmp_path / "out"
    code, stdout, err = cli("prepare", src, "--labels", labels, "--out", out, "--size", 32, "--workers", 1)
    _one_line_error(code, stdout, err, str(labels), *words)
    assert not out.exists()


@pytest.mark.parametrize("spec, words", [
    ({"train": {"0": ["img/n0.jpeg"], "2": ["img/a0.jpeg"]}}, ["unknown key train/2"]),
    ({"train": {"0": ["img/n0.jpeg"]}, "test": {"0": ["img/n4.jpeg"], "2": ["img/a0.jpeg"]}}, ["unknown key test/2"]),
    ({"train": {"0": ["img/n0.jpeg"], "unlabeled": {"0": [], "2": ["img/a0.jpeg"]}}},
     ["unknown key train/unlabeled/2"]),
    ({"train": {"0": ["img/n0.jpeg"]}, "valid": {"0": ["img/n4.jpeg"]}}, ["unknown top-level key 'valid'"]),
    ({"train": {"0": ["img/n0.jpeg", "img/n1\0.jpeg"]}}, ["train/0[1]", "NUL byte"]),
    ('{"train": {"0": ["img/n0.jpeg", "img/\\ud800.jpeg"]}}', ["train/0[1]", "surrogate"]),
    ('{"train": ' + "[" * 100_000 + "]" * 100_000 + "}", ["nested too deeply"]),
], ids=["train-class-2", "test-class-2", "unlabeled-class-2", "unknown-top-key", "nul-in-name",
        "lone-surrogate", "deeply-nested"])
def test_bad_split_file_is_refused_before_decoding(cli, tmp_path, spec, words):
    src = _source(tmp_path)
    split_file = tmp_path / "data.json"
    split_file.write_text(spec if isinstance(spec, str) else json.dumps(spec))
    out = tmp_path / "out"
    code, stdout, err = cli("prepare", src, "--split-file", split_file, "--out", out, "--size", 32, "--workers", 1)
    _one_line_error(code, stdout, err, str(split_file), *words)
    assert not out.exists()


def test_unreadable_normal_set_is_refused(cli, tmp_path):
    """Every Dn row unreadable: no artifact without a normal set."""
    src = _source(tmp_path)
    for i in range(4):
        (src / "img" / f"n{i}.jpeg").write_bytes(b"")  # the four Dn files
    out = tmp_path / "out"
    code, stdout, err = cli("prepare", src, "--labels", _labels(tmp_path / "l.csv"), "--out", out, "--size", 32,
                            "--workers", 1)
    _one_line_error(code, stdout, err, "Dn", "would be empty", "none of the 4 images", "img/n0.jpeg", decoded=True)
    assert "rejected img/n0.jpeg: empty file" in err
    assert not is_valid(out, "prepared")


def test_labels_naming_no_normal_image_are_refused_before_decoding(cli, tmp_path):
    src = _source(tmp_path)
    labels = tmp_path / "l.csv"
    labels.write_text("path,label,split\nimg/n4.jpeg,0,test\nimg/a0.jpeg,1,test\n")
    out = tmp_path / "out"
    code, stdout, err = cli("prepare", src, "--labels", labels, "--out", out, "--size", 32, "--workers", 1)
    _one_line_error(code, stdout, err, "Dn", "no row with split normal")
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# item 10a: decode memory is bounded
# ---------------------------------------------------------------------------------------------
PROBE = """
import json, resource, sys
vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))  # never more than 1 GB more
from cxrad.config import PrepareConfig
from cxrad.io.images import load_image
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_image(data, sys.argv[1], PrepareConfig(size=32))
    reason = "accepted"
except MemoryError:
    reason = "MemoryError"
except Exception as exc:
    reason = str(exc)
grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"reason": reason, "grew_mb": grew / 1024}))
"""


def _probe(tmp_path: Path, name: str, data: bytes) -> dict:
    path = tmp_path / name
    path.write_bytes(data)
    r = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("name, build, reason", [
    ("bomb.png", lambda: _png_header_only(20000, 20000), "above the limit of 50 megapixels"),
    ("bomb.jpeg", lambda: _jpeg_declaring(20000, 20000), ""),  # decoded at 1/8 scale: 6 MP, whatever it holds
], ids=["png", "jpeg"])
def test_huge_declared_image_stays_small_in_memory(tmp_path, name, build, reason):
    """400 megapixels declared: 1.6 GB as float32 before any copy. Refused (PNG) or decoded at 1/8 scale
    (JPEG), the decoding process grows by less than 64 MB (and is capped at 1 GB more in any case)."""
    data = build()
    assert len(data) < 400_000
    got = _probe(tmp_path, name, data)
    assert reason in got["reason"] and got["reason"] != "MemoryError", got
    assert got["grew_mb"] < 64, got


def test_large_jpeg_is_decoded_at_reduced_size_within_the_limit():
    data = NORMALS[0].read_bytes()
    full, prov_full = decode_raster(data)
    h, w = full.shape
    limit = (h * w) // 3  # half the side fits, the full image does not
    small, prov = decode_raster(data, max_pixels=limit)
    assert small.shape == ((h + 1) // 2, (w + 1) // 2) and small.size <= limit
    assert prov["original_shape"] == prov_full["original_shape"] == (h, w)
    # the model's input differs little from a full decode
    cfg = PrepareConfig(size=32, max_megapixels=limit / 1e6)
    a, _ = load_image(data, "x.jpeg", CFG)
    b, _ = load_image(data, "x.jpeg", cfg)
    assert np.abs(a - b).mean() < 0.02
    with pytest.raises(CxradError, match="above the limit"):  # PNG: no reduced decoding, refused
        buf = io.BytesIO()
        Image.fromarray((full * 0).astype(np.uint8) + 7).save(buf, format="PNG")
        load_image(buf.getvalue(), "x.png", cfg)


def test_max_megapixels_is_validated(cli, tmp_path):
    code, stdout, err = cli("prepare", SAMPLE, "--labels", SAMPLE / "labels.csv", "--out", tmp_path / "o",
                            "--max-megapixels", 0)
    _one_line_error(code, stdout, err, "--max-megapixels 0")
    assert not (tmp_path / "o").exists()


def test_luma_by_row_blocks_is_the_whole_image_product():
    rng = np.random.default_rng(0)
    for shape, dtype in (((700, 1301, 3), np.uint8), ((257, 2049, 4), np.uint16)):
        a = rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype)
        np.testing.assert_array_equal(to_gray(a), (a[..., :3].astype(np.float64) @ LUMA).astype(np.float32))



def _chunks(png: bytes) -> list[tuple[int, bytes]]:
    """(offset, type) of every chunk of a PNG file."""
    out, pos = [], 8
    while pos + 8 <= len(png):
        (length,) = struct.unpack(">I", png[pos:pos + 4])
        out.append((pos, png[pos + 4:pos + 8]))
        pos += 12 + length
    return out


@pytest.mark.parametrize("keep", ["all-pixel-data", "half-of-last-idat", "first-idat-byte"])
def test_cut_png_is_rejected_unless_every_pixel_byte_is_there(keep):
    """A PNG cut anywhere inside its pixel data is a reject; one that lost only its IEND trailer decodes to
    exactly the full image. So no cut file is ever decoded with made-up (padded) rows."""
    full_gray = np.asarray(Image.open(NORMALS[0]).convert("L"))
    buf = io.BytesIO()
    Image.fromarray(full_gray).save(buf, "PNG")
    png = buf.getvalue()
    chunks = _chunks(png)
    idats = [off for off, kind in chunks if kind == b"IDAT"]
    assert idats and chunks[-1][1] == b"IEND"
    cut = {"all-pixel-data": chunks[-1][0],                          # only IEND missing
           "half-of-last-idat": (idats[-1] + chunks[-1][0]) // 2,
           "first-idat-byte": idats[0] + 9}[keep]
    if keep == "all-pixel-data":
        img, _ = decode_raster(png[:cut])
        np.testing.assert_array_equal(img, full_gray.astype(np.float32))
    else:
        with pytest.raises(CxradError, match="truncated"):
            decode_raster(png[:cut])

# ---------------------------------------------------------------------------------------------
# predict: the same readers, suffixes and rejects (a toy method: no training)
# ---------------------------------------------------------------------------------------------
class _MeanMethod(ToyMethod):
    name = "hostile-mean"


@pytest.fixture
def mean_run(cli, tmp_path):
    src = _source(tmp_path)
    prepared = tmp_path / "prepared"
    code, _, err = cli("prepare", src, "--labels", _labels(tmp_path / "l.csv"), "--out", prepared, "--size", 32,
                       "--workers", 1)
    assert code == 0, err
    run = tmp_path / "run"
    run.mkdir()
    np.save(run / "mean.npy", load_split(prepared, "normal").images.mean(axis=0).astype(np.float32))
    write_manifest(run, "run", {"method": _MeanMethod.name, "preprocessing": preprocessing_of(prepared)},
                   inputs={"prepared": input_record(prepared)}, outputs=["mean.npy"],
                   extra={"method": _MeanMethod.name})
    methods.register(_MeanMethod.name, _MeanMethod())
    yield run
    methods._REGISTRY.pop(_MeanMethod.name, None)


PREDICT_CASES = ("unknown-transfer-syntax", "mpeg2-video", "text-named-dcm", "file-cut-in-jpeg-pixel-data",
                 "palette-without-lut", "png-declaring-400-megapixels", "dangling-symlink", "self-loop-symlink",
                 "fifo")


def test_predict_rejects_hostile_files_and_reads_what_prepare_reads(cli, mean_run, tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    expected = {}
    for case in PREDICT_CASES:
        build, reason = PER_FILE[case]
        expected[build(studies)] = reason
    gray = np.asarray(Image.open(NORMALS[7]).convert("L"))
    for suffix in ("gif", "tif", "bmp", "webp"):  # `prepare` reads these: so does predict
        Image.fromarray(gray).save(studies / f"study.{suffix}")
    shutil.copy(JPEG_DCM, studies / "1.2.840.113619.2.55.3.604688119")  # a UID-named DICOM
    (studies / "notes.txt").write_text("not an image name: skipped like prepare's folder scan does")
    fifo = _fifo(tmp_path, "input.fifo")
    out = tmp_path / "pred"
    code, stdout, err = cli("predict", mean_run, studies, tmp_path / fifo, "--out", out, "--device", "cpu",
                            "--no-overlays")
    assert code == 1 and "Traceback" not in stdout + err, err
    assert is_valid(out, "predictions")
    import csv

    rejects = {Path(r["path"]).name: r["reason"] for r in csv.DictReader(open(out / "rejects.csv"))}
    assert rejects.pop(fifo).startswith("not a regular file (FIFO")
    assert set(rejects) == set(expected)
    for name, reason in expected.items():
        assert reason in rejects[name], (name, rejects[name])
    scored = {Path(r["path"]).name for r in csv.DictReader(open(out / "predictions.csv"))}
    assert scored == {"study.gif", "study.tif", "study.bmp", "study.webp", "1.2.840.113619.2.55.3.604688119"}


def test_prepare_and_predict_scan_folders_for_the_same_names(tmp_path):
    from cxrad.stages.predict import collect_inputs

    names = ["a.dcm", "b.DICOM", "c", "d.png", "e.JPG", "f.gif", "g.tif", "h.bmp", "i.webp", "1.2.840.10008.5",
             "j.txt", "k.json", "l.pdf", "m.dcm.bak"]
    for split, cls in (("train", "NORMAL"), ("test", "NORMAL")):
        (tmp_path / "src" / split / cls).mkdir(parents=True)
        for n in names:
            (tmp_path / "src" / split / cls / n).write_bytes(b"x")
    listing = list_entries(tmp_path / "src")
    prepared = {Path(e.id).name for e in listing.entries if e.id.startswith("train/")}
    files, _ = collect_inputs([tmp_path / "src" / "train"])
    assert prepared == {f.name for f in files} == set(names[:10])
    assert {Path(p).name for p, _ in listing.rejects if p.startswith("train/")} == set(names[10:])
