"""Where images come from and what they are labelled: folder, .tar, labels CSV, data.json.

A SOURCE is a folder or an uncompressed ``.tar``; a tar is read member by member at its byte
offset and never extracted, so member names (even ``../x``) never become paths we write to.
Image ids are paths relative to SOURCE (POSIX separators), never patient attributes.

Three ways to label (:func:`list_entries`):

* folder layout ``[<top>/]{train,test,val}/{NORMAL,<other>}/...`` — NORMAL (any case) is 0, every
  other class 1; ``<top>`` is the single top folder when SOURCE holds nothing else.
* ``--labels CSV`` with ``path,label[,split][,patient_id]`` (extra columns ignored): label 0, 1 or
  empty (unknown); split ``normal``/``unlabeled``/``test``/``val`` names a final set, ``train`` or
  empty puts the image in the pool from which Dn/Du are drawn.
* ``--split-file data.json`` of the authors' benchmarks: ``{"train": {"0": [...], "unlabeled":
  {"0": [...], "1": [...]}}, "test": {"0": [...], "1": [...]}}``; names are looked up relative to
  SOURCE, then to ``SOURCE/images`` (where the authors' archives keep them).

Whole-input problems raise :class:`CxradError`; per-file problems become (path, reason) rejects.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import posixpath
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from cxrad.artifacts import sha256_file
from cxrad.errors import CxradError

SPLIT_ALIASES = {"normal": "normal", "unlabeled": "unlabeled", "unlabelled": "unlabeled", "test": "test",
                 "val": "val", "train": "", "": ""}
LAYOUT_SPLITS = {"train": "", "test": "test", "val": "val"}


@dataclass(frozen=True)
class Locator:
    """Where one file's bytes are: a file path, or (tar path, byte offset, size)."""

    path: str
    offset: int = -1   # -1: ``path`` is the file itself
    size: int = -1


@dataclass
class Entry:
    """One image to decode. ``split`` '' = pool (Dn/Du drawn later); ``label`` -1 = unknown."""

    id: str
    loc: Locator
    label: int
    split: str
    patient_id: str = ""


@dataclass
class Listing:
    entries: list[Entry]
    rejects: list[tuple[str, str]] = field(default_factory=list)
    inputs: dict = field(default_factory=dict)   # manifest "inputs" records (paths + digests)
    layout: str = ""


def read_bytes(loc: Locator) -> bytes:
    """The bytes of one file (works in worker processes; tar members by offset, no extraction)."""
    if loc.offset < 0:
        with open(loc.path, "rb") as fh:
            return fh.read()
    fd = os.open(loc.path, os.O_RDONLY)
    try:
        return os.pread(fd, loc.size, loc.offset)
    finally:
        os.close(fd)


def _safe_rel(name: str) -> Optional[str]:
    """Normalised relative POSIX path, or None when it is absolute or leaves the root."""
    name = name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return None
    norm = posixpath.normpath(name)
    if norm == ".." or norm.startswith("../") or norm == ".":
        return None
    return norm


def _hidden(rel: str) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in rel.split("/"))


# ---------------------------------------------------------------------------------------------
# the SOURCE index: folder or tar
# ---------------------------------------------------------------------------------------------
class SourceIndex:
    """Lists and locates files under SOURCE (folder or uncompressed tar)."""

    def __init__(self, source: Path):
        self.source = source
        self.rejects: list[tuple[str, str]] = []
        if not source.exists():
            raise CxradError(f"{source}: no such file or folder; give a folder of images or a .tar archive.")
        self.is_tar = source.is_file()
        self._members: dict[str, Locator] = {}
        if self.is_tar:
            self._index_tar()

    def _index_tar(self) -> None:
        try:
            tf = tarfile.open(self.source, "r:")  # "r:" = uncompressed only: offsets must be file offsets
        except tarfile.ReadError:
            try:
                tarfile.open(self.source, "r:*").close()
            except (tarfile.ReadError, OSError):
                raise CxradError(f"{self.source}: not a folder and not a tar archive; give a folder of images "
                                 "or an uncompressed .tar.") from None
            raise CxradError(f"{self.source}: compressed tar archives cannot be read member by member at speed; "
                             "decompress it first (e.g. `gunzip -k`), which gives an uncompressed .tar.") from None
        with tf:
            for m in tf:  # streams headers; member data is never read here
                rel = _safe_rel(m.name)
                if rel is None:
                    if m.isfile():
                        self.rejects.append((m.name, "unsafe member name in archive (absolute or leaves the "
                                                     "archive root); skipped, nothing extracted"))
                    continue
                if m.isdir() or _hidden(rel):
                    continue
                if not m.isfile():
                    self.rejects.append((rel, "archive member is a link or special file; not followed"))
                    continue
                if rel in self._members:
                    raise CxradError(f"{self.source}: member {rel} appears twice in the archive; "
                                     "rebuild the tar with unique names.")
                self._members[rel] = Locator(str(self.source.resolve()), m.offset_data, m.size)

    def locate(self, rel: str) -> Optional[Locator]:
        if self.is_tar:
            return self._members.get(rel)
        p = self.source / rel
        return Locator(str(p.resolve())) if p.is_file() else None

    def walk(self) -> Iterator[str]:
        """Every non-hidden regular file, as a relative POSIX path, sorted."""
        if self.is_tar:
            yield from sorted(self._members)
            return
        found = []
        for root, dirs, files in os.walk(self.source):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__MACOSX"]
            rel_root = os.path.relpath(root, self.source)
            for f in files:
                if f.startswith("."):
                    continue
                rel = f if rel_root == "." else f"{rel_root}/{f}".replace(os.sep, "/")
                found.append(rel)
        yield from sorted(found)

    def record(self) -> dict:
        """Manifest record: a tar by its sha256, a folder by a digest of its listing."""
        if self.is_tar:
            return {"path": str(self.source.resolve()), "kind": "tar", "sha256": sha256_file(self.source)}
        return {"path": str(self.source.resolve()), "kind": "folder"}


def listing_digest(entries: list[Entry]) -> str:
    """sha256 over the sorted (id, size) pairs of the files used: changes when files are added/resized."""
    h = hashlib.sha256()
    for e in sorted(entries, key=lambda e: e.id):
        size = e.loc.size if e.loc.offset >= 0 else os.stat(e.loc.path).st_size
        h.update(f"{e.id}\t{size}\n".encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# the three labelling schemes
# ---------------------------------------------------------------------------------------------
def _layout_root(index: SourceIndex, files: list[str]) -> str:
    """'' when SOURCE itself holds train/test/val folders, else its single top folder that does."""
    def has_splits(prefix: str) -> bool:
        n = len(prefix)
        return any(f[n:].split("/", 1)[0].lower() in LAYOUT_SPLITS and f[n:].count("/") >= 2
                   for f in files if f.startswith(prefix))

    if has_splits(""):
        return ""
    tops = {f.split("/", 1)[0] for f in files if "/" in f}
    if len(tops) == 1:
        top = tops.pop() + "/"
        if has_splits(top):
            return top
    raise CxradError(
        f"{index.source}: no folder layout found; expected train/ and test/ folders (each holding NORMAL/ and "
        "one folder per abnormal class) at the top or inside a single top folder, or give --labels CSV."
    )


def from_layout(index: SourceIndex) -> Listing:
    files = list(index.walk())
    if not files:
        raise CxradError(f"{index.source}: holds no files; point SOURCE at a folder or .tar of images.")
    root = _layout_root(index, files)
    entries, rejects = [], []
    for rel in files:
        if not rel.startswith(root):
            continue
        parts = rel[len(root):].split("/")
        split = parts[0].lower()
        if split not in LAYOUT_SPLITS:
            continue
        if len(parts) < 3:
            rejects.append((rel, f"not inside a class folder of {parts[0]}/ (NORMAL/ or an abnormal class)"))
            continue
        label = 0 if parts[1].lower() == "normal" else 1
        entries.append(Entry(rel, index.locate(rel), label, LAYOUT_SPLITS[split]))
    if not entries:
        raise CxradError(f"{index.source}: the folder layout holds no image files.")
    return Listing(entries, rejects, layout=f"folder layout under '{root or '.'}'")


def _lookup(index: SourceIndex, raw: str, what: str, rejects: list,
            fallbacks: tuple[str, ...] = ()) -> Optional[tuple[str, Locator]]:
    rel = _safe_rel(raw.strip())
    if rel is None:
        rejects.append((raw, f"{what} path is absolute or leaves SOURCE; skipped"))
        return None
    for prefix in ("",) + fallbacks:
        loc = index.locate(prefix + rel)
        if loc is not None:
            return prefix + rel, loc
    rejects.append((rel, f"listed in {what} but not found in SOURCE"))
    return None


def _read_csv_rows(labels: Path) -> list[dict[str, str]]:
    """The rows of a labels CSV (header checked), or a one-line error naming the fix."""
    if not labels.is_file():
        raise CxradError(f"{labels}: no such labels file; give a CSV with columns path,label[,split][,patient_id].")
    try:
        with open(labels, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            cols = [c.strip() for c in (reader.fieldnames or [])]
            reader.fieldnames = cols
            missing = [c for c in ("path", "label") if c not in cols]
            if missing:
                raise CxradError(f"{labels}: missing column(s) {', '.join(missing)} (header has: "
                                 f"{', '.join(cols) or 'nothing'}); the header must be "
                                 "path,label[,split][,patient_id].")
            rows = list(reader)
    except UnicodeDecodeError:
        raise CxradError(f"{labels}: not a UTF-8 text CSV; save it as UTF-8 CSV with columns "
                         "path,label[,split].") from None
    except csv.Error as exc:
        raise CxradError(f"{labels}: malformed CSV ({exc}); fix the file.") from None
    if not rows:
        raise CxradError(f"{labels}: has a header but no rows; list one image per row.")
    return rows


def _csv_label_split(labels: Path, line: int, raw: str, row: dict[str, str]) -> tuple[int, str]:
    """(label, set) of one CSV row: label 0/1/-1 (unknown), set a final set name or '' (the pool)."""
    lab = (row.get("label") or "").strip()
    if lab not in ("0", "1", "", "-1"):
        raise CxradError(f"{labels}: line {line}: label {lab!r} for {raw}; labels must be 0 (normal), "
                         "1 (abnormal) or empty (unknown).")
    split_raw = (row.get("split") or "").strip().lower()
    if split_raw not in SPLIT_ALIASES:
        raise CxradError(f"{labels}: line {line}: split {split_raw!r}; use normal, unlabeled, test, val, "
                         "train or leave it empty.")
    split = SPLIT_ALIASES[split_raw]
    label = int(lab) if lab else -1
    if split == "normal" and label == 1:
        raise CxradError(f"{labels}: line {line}: {raw} is in split 'normal' (Dn) with label 1; "
                         "Dn holds normal images only.")
    return (0 if split == "normal" else label), split


def from_csv(index: SourceIndex, labels: Path) -> Listing:
    rows = _read_csv_rows(labels)
    seen: dict[str, int] = {}
    entries, rejects = [], []
    for line, row in enumerate(rows, start=2):
        raw = (row.get("path") or "").strip()
        if not raw:
            raise CxradError(f"{labels}: line {line}: empty path; every row needs a path relative to SOURCE.")
        key = _safe_rel(raw) or raw
        if key in seen:
            raise CxradError(f"{labels}: line {line}: duplicate path {raw} (first on line {seen[key]}); "
                             "list each image once.")
        seen[key] = line
        label, split = _csv_label_split(labels, line, raw, row)
        found = _lookup(index, raw, labels.name, rejects)
        if found is not None:
            entries.append(Entry(found[0], found[1], label, split, (row.get("patient_id") or "").strip()))
    if not entries:
        raise CxradError(f"{labels}: none of its {len(rows)} paths exists under {index.source}; "
                         "paths must be relative to SOURCE.")
    return Listing(entries, rejects, layout=f"labels CSV {labels.name}")


def from_split_file(index: SourceIndex, split_file: Path) -> Listing:
    if not split_file.is_file():
        raise CxradError(f"{split_file}: no such split file; give the data.json of the authors' benchmark.")
    try:
        spec = json.loads(split_file.read_text(encoding="utf-8"))
        groups = [
            ("normal", 0, spec["train"]["0"]),
            ("unlabeled", 0, spec["train"].get("unlabeled", {}).get("0", [])),
            ("unlabeled", 1, spec["train"].get("unlabeled", {}).get("1", [])),
        ]
        for name in ("test", "val"):
            for lab in ("0", "1"):
                if name in spec:
                    groups.append((name, int(lab), spec[name].get(lab, [])))
        if not all(isinstance(v, list) and all(isinstance(x, str) for x in v) for _, _, v in groups):
            raise TypeError("lists of file names expected")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise CxradError(f"{split_file}: not a benchmark split file ({type(exc).__name__}: {exc}); expected "
                         '{"train": {"0": [...], "unlabeled": {"0": [...], "1": [...]}}, '
                         '"test": {"0": [...], "1": [...]}}.') from None
    seen: set[str] = set()
    entries, rejects = [], []
    for split, label, names in groups:
        for raw in names:
            if raw in seen:
                raise CxradError(f"{split_file}: {raw} is listed twice; each image may be in one set only.")
            seen.add(raw)
            found = _lookup(index, raw, split_file.name, rejects, fallbacks=("images/",))
            if found is not None:
                entries.append(Entry(found[0], found[1], label, split))
    if not entries:
        raise CxradError(f"{split_file}: none of its files exists under {index.source} (or {index.source}/images).")
    return Listing(entries, rejects, layout=f"split file {split_file.name}")


def list_entries(source: Path, labels: Optional[Path] = None, split_file: Optional[Path] = None) -> Listing:
    """Resolve SOURCE and its labels into entries + early rejects + manifest input records."""
    if labels is not None and split_file is not None:
        raise CxradError("give either --labels or --split-file, not both.")
    index = SourceIndex(Path(source))
    if labels is not None:
        listing = from_csv(index, Path(labels))
        listing.inputs["labels"] = {"path": str(Path(labels).resolve()), "sha256": sha256_file(Path(labels))}
    elif split_file is not None:
        listing = from_split_file(index, Path(split_file))
        listing.inputs["split_file"] = {"path": str(Path(split_file).resolve()),
                                        "sha256": sha256_file(Path(split_file))}
    else:
        listing = from_layout(index)
    listing.rejects = index.rejects + listing.rejects
    listing.inputs["source"] = {**index.record(), "files": len(listing.entries),
                                "listing_sha256": listing_digest(listing.entries)}
    return listing
