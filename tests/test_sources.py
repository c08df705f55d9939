"""SOURCE listing and labels (cxrad.io.sources): folder layout, CSV, data.json, tar."""

from __future__ import annotations

import gzip
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from cxrad.errors import CxradError
from cxrad.io.sources import list_entries, read_bytes

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"
JPEGS = sorted((SAMPLE / "kermany" / "train" / "NORMAL").glob("*.jpeg"))


def _write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_folder_layout_in_single_top_folder_any_case(tmp_path):
    for split, cls in [("train", "normal"), ("train", "Bacteria"), ("Test", "NORMAL"), ("Test", "virus")]:
        d = tmp_path / "top" / split / cls
        d.mkdir(parents=True)
        shutil.copy(JPEGS[0], d / "a.jpeg")
    listing = list_entries(tmp_path)
    got = {(e.id, e.label, e.split) for e in listing.entries}
    assert got == {("top/train/normal/a.jpeg", 0, ""), ("top/train/Bacteria/a.jpeg", 1, ""),
                   ("top/Test/NORMAL/a.jpeg", 0, "test"), ("top/Test/virus/a.jpeg", 1, "test")}


def test_sample_data_csv_names_sets_directly():
    listing = list_entries(SAMPLE, SAMPLE / "labels.csv")
    splits = {}
    for e in listing.entries:
        splits[e.split] = splits.get(e.split, 0) + 1
    assert splits == {"normal": 30, "unlabeled": 25, "test": 65} and not listing.rejects
    assert listing.inputs["labels"]["sha256"] and listing.inputs["source"]["listing_sha256"]


@pytest.mark.parametrize("text, match", [
    ("path,split\nkermany/a.jpeg,test\n", "missing column.*label"),
    ("file,label\nx,0\n", "missing column.*path"),
    ("path,label\nkermany/train/NORMAL/IM-0248-0001.jpeg,7\n", "line 2: label '7'"),
    ("path,label\nkermany/train/NORMAL/IM-0248-0001.jpeg,0\n./kermany/train/NORMAL/IM-0248-0001.jpeg,1\n",
     "line 3: duplicate path"),
    ("path,label,split\nkermany/train/NORMAL/IM-0248-0001.jpeg,0,holdout\n", "split 'holdout'"),
    ("path,label,split\nkermany/train/PNEUMONIA/x.jpeg,1,normal\n", "label 1"),
    ("path,label\n", "no rows"),
])
def test_bad_csv_is_a_one_line_error(tmp_path, text, match):
    with pytest.raises(CxradError, match=match):
        list_entries(SAMPLE, _write_csv(tmp_path / "l.csv", text))


def test_csv_missing_file_and_escaping_path_are_rejected(tmp_path):
    csv = _write_csv(tmp_path / "l.csv", "path,label\nkermany/train/NORMAL/IM-0248-0001.jpeg,0\n"
                                         "kermany/nope.jpeg,0\n../outside.jpeg,1\n")
    listing = list_entries(SAMPLE, csv)
    assert [e.id for e in listing.entries] == ["kermany/train/NORMAL/IM-0248-0001.jpeg"]
    reasons = dict(listing.rejects)
    assert "not found" in reasons["kermany/nope.jpeg"] and "leaves SOURCE" in reasons["../outside.jpeg"]


def test_split_file_authors_format_with_images_folder(tmp_path):
    (tmp_path / "images").mkdir()
    for i, p in enumerate(JPEGS[:5]):
        shutil.copy(p, tmp_path / "images" / f"{i}.jpeg")
    spec = {"train": {"0": ["0.jpeg"], "unlabeled": {"0": ["1.jpeg"], "1": ["2.jpeg"]}},
            "test": {"0": ["3.jpeg"], "1": ["4.jpeg"]}}
    (tmp_path / "data.json").write_text(json.dumps(spec))
    listing = list_entries(tmp_path, split_file=tmp_path / "data.json")
    got = {(e.id, e.split, e.label) for e in listing.entries}
    assert got == {("images/0.jpeg", "normal", 0), ("images/1.jpeg", "unlabeled", 0),
                   ("images/2.jpeg", "unlabeled", 1), ("images/3.jpeg", "test", 0), ("images/4.jpeg", "test", 1)}
    spec["test"]["1"].append("0.jpeg")
    (tmp_path / "dup.json").write_text(json.dumps(spec))
    with pytest.raises(CxradError, match="listed twice"):
        list_entries(tmp_path, split_file=tmp_path / "dup.json")
    (tmp_path / "bad.json").write_text('{"train": []}')
    with pytest.raises(CxradError, match="not a benchmark split file"):
        list_entries(tmp_path, split_file=tmp_path / "bad.json")


def test_tar_read_by_offset_and_unsafe_members_rejected(tmp_path):
    tar = tmp_path / "s.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(JPEGS[0], "d/train/NORMAL/a.jpeg")
        tf.add(JPEGS[1], "d/test/PNEUMONIA/b.jpeg")
        for path, name in ((JPEGS[2], "../evil.jpeg"), (JPEGS[3], "/abs.jpeg")):
            info = tarfile.TarInfo(name)  # set by hand: tarfile.add would strip a leading "/"
            info.size = path.stat().st_size
            with open(path, "rb") as fh:
                tf.addfile(info, fh)
    listing = list_entries(tar)
    assert {e.id for e in listing.entries} == {"d/train/NORMAL/a.jpeg", "d/test/PNEUMONIA/b.jpeg"}
    e = next(e for e in listing.entries if e.id.endswith("a.jpeg"))
    assert read_bytes(e.loc) == JPEGS[0].read_bytes()
    assert {r[0] for r in listing.rejects} == {"../evil.jpeg", "/abs.jpeg"}
    assert all("unsafe member name" in r[1] for r in listing.rejects)


def test_whole_input_errors(tmp_path):
    with pytest.raises(CxradError, match="no such file or folder"):
        list_entries(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CxradError, match="holds no files"):
        list_entries(tmp_path / "empty")
    (tmp_path / "flat").mkdir()
    shutil.copy(JPEGS[0], tmp_path / "flat" / "a.jpeg")
    with pytest.raises(CxradError, match="no folder layout found"):
        list_entries(tmp_path / "flat")
    gz = tmp_path / "s.tar.gz"
    with tarfile.open(gz, "w:gz") as tf:
        tf.add(JPEGS[0], "train/NORMAL/a.jpeg")
    with pytest.raises(CxradError, match="decompress it first"):
        list_entries(gz)
    (tmp_path / "junk.tar").write_bytes(gzip.compress(b"not a tar"))
    with pytest.raises(CxradError):
        list_entries(tmp_path / "junk.tar")
