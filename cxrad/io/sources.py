"""Where images come from and what they are labelled: folder, .tar, labels CSV, data.json.

A SOURCE is a folder or an uncompressed ``.tar``; a tar is read member by member at its byte
offset and never extracted, so member names (even ``../x``) never become paths we write to.
Image ids are paths relative to SOURCE (POSIX separators), never patient attributes.

Three ways to label (:func:`list_entries`):

* folder layout ``[<top>/]{train,test,val}/{NORMAL,<other>}/...`` — NORMAL (any case) is 0, every
  other class 1; ``<top>`` is the single top folder when SOURCE holds nothing else.
* ``--labels CSV`` with ``path,label[,split][,patient_id]`` (extra columns ignored): label 0, 1 or
  empty (unknown); split ``normal``/``unlabeled``/``test``/``val`` names a final set, ``train`` or
  empty puts the image in the pool from which Dn/Du are drawn; ``anomaly`` (label 1) marks a
  labelled abnormal *training* image for weakly supervised methods (`prepare --anomaly-shots K`
  keeps the first K such rows in file order).
* ``--split-file data.json`` of the authors' benchmarks: ``{"train": {"0": [...], "unlabeled":
  {"0": [...], "1": [...]}}, "test": {"0": [...], "1": [...]}}``; names are looked up relative to
  SOURCE, then to ``SOURCE/images`` (where the authors' archives keep them).

Labelled anomalies may instead come from a second CSV (``--anomalies``, same columns, split
``anomaly`` or empty, label 1), so that a benchmark's split file stays as published.

Whole-input problems raise :class:`CxradError`; per-file problems become (path, reason) rejects.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import posixpath
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from cxrad.artifacts import sha256_file
from cxrad.errors import CxradError

ANOMALY = "anomaly"   # the labelled-anomaly set (cxrad.io.store.ANOMALY_SET)
SPLIT_ALIASES = {"normal": "normal", "unlabeled": "unlabeled", "unlabelled": "unlabeled", "test": "test",
                 "val": "val", "train": "", "": "", ANOMALY: ANOMALY}
LAYOUT_SPLITS = {"train": "", "test": "test", "val": "val"}

# The file names a folder scan reads, for `prepare` (folder layout) and `predict` (folders) alike:
# DICOM (also extension-less and UID-style names such as 1.2.840.113619.2.55.3.604688119.868, whose
# "suffix" is a number) and every raster format Pillow decodes for us. Files named in a labels CSV,
# a data.json or on the `predict` command line are read whatever their name.
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic", ".ima"})
RASTER_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".gif", ".bmp", ".tif", ".tiff",
                             ".webp", ".jp2", ".j2k", ".pgm", ".ppm", ".pnm"})
IMAGE_SUFFIXES = DICOM_SUFFIXES | RASTER_SUFFIXES | {""}


def is_image_name(name: str) -> bool:
    """Whether a folder scan reads the file ``name`` (:data:`IMAGE_SUFFIXES`, or a numeric suffix)."""
    suffix = posixpath.splitext(name.replace("\\", "/").rsplit("/", 1)[-1])[1].lower()
    return suffix in IMAGE_SUFFIXES or suffix[1:].isdigit()


def not_image_name_reason(name: str) -> str:
    suffix = posixpath.splitext(name)[1]
    return (f"file name suffix {suffix} is not an image type cxrad reads (DICOM: {', '.join(sorted(DICOM_SUFFIXES))} "
            f"or none; images: {', '.join(sorted(RASTER_SUFFIXES))}); skipped")


def file_problem(path: os.PathLike | str) -> Optional[str]:
    """Why ``path`` cannot be read as one image file (None: a regular file, directly or through a link).

    Dangling links, link loops, FIFOs, sockets and devices are reported rather than opened: reading a
    FIFO would block for ever.
    """
    try:
        st = os.stat(path)  # follows links
    except FileNotFoundError:
        if os.path.islink(path):
            return "dangling symbolic link (its target does not exist); skipped"
        return "no such file"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop (the link leads back to itself); skipped"
        return f"cannot read ({exc.strerror or type(exc).__name__}); skipped"
    if stat.S_ISREG(st.st_mode):
        return None
    if stat.S_ISDIR(st.st_mode):
        return "a folder, not a file"
    kind = ("FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode)
            else "device file")
    return f"not a regular file ({kind}); not read"


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
    # every row that names a labelled anomaly, in file order, found in SOURCE or not: (id, line);
    # `prepare --anomaly-shots K` keeps the first K and refuses one it cannot read
    anomaly_rows: list[tuple[str, int]] = field(default_factory=list)
    anomaly_file: Optional[Path] = None   # the CSV those rows are in


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
            try:
                for m in tf:  # streams headers; member data is never read here
                    self._add_member(m)
            except (tarfile.TarError, EOFError, OSError) as exc:
                raise CxradError(f"{self.source}: truncated or corrupt tar archive ({exc} after "
                                 f"{len(self._members)} member(s)); re-create or re-download it.") from None
            self._check_complete(tf.offset)

    def _add_member(self, m: tarfile.TarInfo) -> None:
        rel = _safe_rel(m.name)
        if rel is None:
            if m.isfile():
                self.rejects.append((m.name, "unsafe member name in archive (absolute or leaves the "
                                             "archive root); skipped, nothing extracted"))
            return
        if m.isdir() or _hidden(rel):
            return
        if not m.isfile():
            self.rejects.append((rel, "archive member is a link or special file; not followed"))
            return
        if rel in self._members:
            raise CxradError(f"{self.source}: member {rel} appears twice in the archive; "
                             "rebuild the tar with unique names.")
        self._members[rel] = Locator(str(self.source.resolve()), m.offset_data, m.size)

    def _check_complete(self, end: int) -> None:
        """A tar cut at a member boundary reads as a shorter archive: require every member's data and
        the end-of-archive block of zeros (tarfile itself stops silently at a missing or cut header)."""
        size = self.source.stat().st_size
        cut = next((rel for rel, loc in self._members.items() if loc.offset + loc.size > size), None)
        with open(self.source, "rb") as fh:
            fh.seek(end)
            tail = fh.read(tarfile.BLOCKSIZE)
        if cut is not None or len(tail) < tarfile.BLOCKSIZE or tail.strip(b"\0"):
            where = f"member {cut} is cut short" if cut else "no end-of-archive marker"
            raise CxradError(f"{self.source}: truncated tar archive ({where}, after {len(self._members)} "
                             "member(s)); re-create or re-download it.")

    def locate(self, rel: str) -> Optional[Locator]:
        if self.is_tar:
            return self._members.get(rel)
        p = self.source / rel
        return Locator(str(p.resolve())) if p.is_file() else None

    def problem(self, rel: str) -> Optional[str]:
        """Why ``rel``, present in a SOURCE folder, is no readable file (a dangling link, a FIFO ...);
        None when it is a regular file or absent."""
        if self.is_tar:
            return None
        why = file_problem(self.source / rel)
        return None if why == "no such file" else why

    def walk(self) -> Iterator[str]:
        """Every non-hidden file (or link, FIFO ...; see :meth:`problem`), as a relative POSIX path, sorted.

        Folders that cannot be listed and links to folders (not followed) become rejects.
        """
        if self.is_tar:
            yield from sorted(self._members)
            return
        found = []

        def unlistable(exc: OSError) -> None:
            rel = os.path.relpath(exc.filename or self.source, self.source).replace(os.sep, "/")
            self.rejects.append((rel, f"cannot list folder ({exc.strerror or type(exc).__name__}); skipped"))

        for root, dirs, files in os.walk(self.source, onerror=unlistable):
            rel_root = os.path.relpath(root, self.source)

            def rel(f: str) -> str:
                return f if rel_root == "." else f"{rel_root}/{f}".replace(os.sep, "/")

            keep = [d for d in dirs if not d.startswith(".") and d != "__MACOSX"]
            for d in keep:
                if os.path.islink(os.path.join(root, d)):
                    self.rejects.append((rel(d), "symbolic link to a folder; not followed (copy or link the "
                                                 "files themselves)"))
            dirs[:] = [d for d in keep if not os.path.islink(os.path.join(root, d))]
            found += [rel(f) for f in files if not f.startswith(".")]
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
        try:
            size = e.loc.size if e.loc.offset >= 0 else os.stat(e.loc.path).st_size
        except OSError:  # vanished since it was listed: decoding will reject it with the reason
            size = -1
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


def _layout_file(index: SourceIndex, rel: str) -> tuple[Optional[Locator], str]:
    """(locator, '') of a file the folder layout reads, or (None, why it is skipped)."""
    if not is_image_name(rel):
        return None, not_image_name_reason(rel)
    why = index.problem(rel)
    loc = index.locate(rel) if why is None else None
    return loc, why or "disappeared from SOURCE while it was listed"


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
        loc, why = _layout_file(index, rel)
        if loc is None:
            rejects.append((rel, why))
            continue
        label = 0 if parts[1].lower() == "normal" else 1
        entries.append(Entry(rel, loc, label, LAYOUT_SPLITS[split]))
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
    rejects.append((rel, index.problem(rel) or f"listed in {what} but not found in SOURCE"))
    return None


CSV_COLUMNS = ("path", "label", "split", "patient_id")


def _values(row: dict) -> list[str]:
    """Every value of a DictReader row, extra columns (key None) included."""
    out: list[str] = []
    for v in row.values():
        out += v if isinstance(v, list) else [v or ""]
    return out


def _check_record(labels: Path, row: dict, end: int) -> int:
    """The line a CSV record starts on (records may span lines inside quotes); refuses NUL bytes and
    line breaks in the columns cxrad reads, the marks of an unclosed quote that swallowed rows."""
    line = end - sum(v.count("\n") for v in _values(row))
    if any("\0" in v for v in _values(row)):
        raise CxradError(f"{labels}: line {line}: contains a NUL byte; file names and labels cannot hold one "
                         "(a binary or corrupted file?).")
    broken = [c for c in CSV_COLUMNS if "\n" in (row.get(c) or "") or "\r" in (row.get(c) or "")]
    if broken:
        raise CxradError(f"{labels}: line {line}: the {broken[0]} value runs over lines {line}-{end} (an unclosed "
                         "quote swallows the rows after it); close the quote or remove it.")
    return line


def _read_csv_rows(labels: Path) -> list[tuple[int, dict[str, str]]]:
    """(line, row) of each record of a labels CSV (header checked), or a one-line error naming the fix."""
    if not labels.is_file():
        raise CxradError(f"{labels}: no such labels file; give a CSV with columns path,label[,split][,patient_id].")
    rows: list[tuple[int, dict[str, str]]] = []
    end = 1
    try:
        with open(labels, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh, strict=True)
            cols = [c.strip() for c in (reader.fieldnames or [])]
            reader.fieldnames = cols
            missing = [c for c in ("path", "label") if c not in cols]
            if missing:
                raise CxradError(f"{labels}: missing column(s) {', '.join(missing)} (header has: "
                                 f"{', '.join(cols) or 'nothing'}); the header must be "
                                 "path,label[,split][,patient_id].")
            end = reader.line_num
            for row in reader:
                rows.append((_check_record(labels, row, reader.line_num), row))
                end = reader.line_num
    except UnicodeDecodeError:
        raise CxradError(f"{labels}: not a UTF-8 text CSV; save it as UTF-8 CSV with columns "
                         "path,label[,split].") from None
    except csv.Error as exc:
        if "end of data" in str(exc):
            raise CxradError(f"{labels}: line {end + 1}: a quote opened on this line is never closed (csv: {exc}); "
                             "close it or remove it.") from None
        raise CxradError(f"{labels}: line {end + 1}: malformed CSV ({exc}); fix the file.") from None
    if not rows:
        raise CxradError(f"{labels}: has a header but no rows; list one image per row.")
    return rows


def _csv_label_split(labels: Path, line: int, raw: str, row: dict[str, str],
                     anomalies_only: bool = False) -> tuple[int, str]:
    """(label, set) of one CSV row: label 0/1/-1 (unknown), set a final set name or '' (the pool).
    ``anomalies_only``: a ``--anomalies`` file, whose rows are all labelled anomalies."""
    lab = (row.get("label") or "").strip()
    if lab not in ("0", "1", "", "-1"):
        raise CxradError(f"{labels}: line {line}: label {lab!r} for {raw}; labels must be 0 (normal), "
                         "1 (abnormal) or empty (unknown).")
    split_raw = (row.get("split") or "").strip().lower()
    if anomalies_only:
        if split_raw not in ("", ANOMALY):
            raise CxradError(f"{labels}: line {line}: split {split_raw!r}; an --anomalies file lists labelled "
                             f"abnormal training images only (split {ANOMALY} or empty).")
        split_raw = ANOMALY
    if split_raw not in SPLIT_ALIASES:
        raise CxradError(f"{labels}: line {line}: split {split_raw!r}; use normal, unlabeled, test, val, "
                         f"train, {ANOMALY} or leave it empty.")
    split = SPLIT_ALIASES[split_raw]
    label = int(lab) if lab else -1
    if split == "normal" and label == 1:
        raise CxradError(f"{labels}: line {line}: {raw} is in split 'normal' (Dn) with label 1; "
                         "Dn holds normal images only.")
    if split == ANOMALY and label != 1:
        raise CxradError(f"{labels}: line {line}: {raw} is in split '{ANOMALY}' (labelled abnormal training "
                         f"images) with label {lab or 'empty'}; its label must be 1.")
    return (0 if split == "normal" else label), split


def from_csv(index: SourceIndex, labels: Path, anomalies_only: bool = False) -> Listing:
    """Entries of a labels CSV in file order (``anomalies_only``: an ``--anomalies`` file)."""
    rows = _read_csv_rows(labels)
    seen: dict[str, int] = {}
    entries, rejects = [], []
    anomaly_rows: list[tuple[str, int]] = []
    for line, row in rows:
        raw = (row.get("path") or "").strip()
        if not raw:
            raise CxradError(f"{labels}: line {line}: empty path; every row needs a path relative to SOURCE.")
        key = _safe_rel(raw) or raw
        if key in seen:
            raise CxradError(f"{labels}: line {line}: duplicate path {raw} (first on line {seen[key]}); "
                             "list each image once.")
        seen[key] = line
        label, split = _csv_label_split(labels, line, raw, row, anomalies_only)
        found = _lookup(index, raw, labels.name, rejects)
        if found is not None:
            entries.append(Entry(found[0], found[1], label, split, (row.get("patient_id") or "").strip()))
        if split == ANOMALY:
            anomaly_rows.append((found[0] if found else key, line))
    if not entries:
        raise CxradError(f"{labels}: none of its {len(rows)} paths exists under {index.source}; "
                         "paths must be relative to SOURCE.")
    return Listing(entries, rejects, layout=f"labels CSV {labels.name}", anomaly_rows=anomaly_rows,
                   anomaly_file=labels if anomaly_rows else None)


SPLIT_FILE_FORMAT = '{"train": {"0": [...], "unlabeled": {"0": [...], "1": [...]}}, "test": {"0": [...], "1": [...]}}'
# table -> its keys: (key, set name, label); "unlabeled" is a table of its own
SPLIT_FILE_TABLES = {"train": (("0", "normal", 0), ("unlabeled", "", -1)),
                     "train/unlabeled": (("0", "unlabeled", 0), ("1", "unlabeled", 1)),
                     "test": (("0", "test", 0), ("1", "test", 1)),
                     "val": (("0", "val", 0), ("1", "val", 1))}


def _split_file_error(split_file: Path, why: str) -> CxradError:
    return CxradError(f"{split_file}: not a benchmark split file ({why}); expected {SPLIT_FILE_FORMAT}.")


def _split_table(split_file: Path, spec: dict, key: str) -> list[tuple[str, int, str, list]]:
    """(set, label, key path, names) of one table of a data.json (its unknown keys are refused)."""
    obj = spec
    for part in key.split("/"):
        obj = obj[part]
    if not isinstance(obj, dict):
        raise _split_file_error(split_file, f"key {key} holds a {type(obj).__name__}, not an object")
    known = {k for k, _, _ in SPLIT_FILE_TABLES[key]}
    unknown = sorted(set(obj) - known)
    if unknown:
        raise _split_file_error(split_file, f"unknown key {key}/{unknown[0]}; {key} holds only "
                                            f"{' and '.join(repr(k) for k in sorted(known))}")
    return [(name, label, f"{key}/{k}", obj[k]) for k, name, label in SPLIT_FILE_TABLES[key] if name and k in obj]


def _split_groups(split_file: Path, spec: Any) -> list[tuple[str, int, str, list]]:
    """Every (set, label, key path, names) group of a data.json, checked: nothing in it is ignored."""
    if not isinstance(spec, dict):
        raise _split_file_error(split_file, f"the top level is a {type(spec).__name__}, not an object")
    unknown = sorted(set(spec) - {"train", "test", "val"})
    if unknown or "train" not in spec:
        raise _split_file_error(split_file, f"unknown top-level key {unknown[0]!r}" if unknown else 'no "train" key')
    groups = []
    for key in SPLIT_FILE_TABLES:
        if key.split("/")[0] in spec and (key != "train/unlabeled" or "unlabeled" in spec["train"]):
            groups += _split_table(split_file, spec, key)
    if "0" not in spec["train"]:
        raise _split_file_error(split_file, 'no "train": {"0": [...]} (the normal images)')
    for _, _, key, names in groups:
        if not isinstance(names, list):
            raise _split_file_error(split_file, f"key {key} holds a {type(names).__name__}, not a list of file names")
        for i, name in enumerate(names):
            why = _bad_name(name)
            if why:
                raise CxradError(f"{split_file}: {key}[{i}]: {why}; list file names relative to SOURCE.")
    return groups


def _bad_name(name: Any) -> str:
    """Why ``name`` cannot be a file name ('' when it can)."""
    if not isinstance(name, str):
        return f"holds {type(name).__name__} {name!r}, not a file name"[:200]
    if "\0" in name:
        return "contains a NUL byte"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "contains an unpaired UTF-16 surrogate escape"
    return "" if name.strip() else "empty file name"


def from_split_file(index: SourceIndex, split_file: Path) -> Listing:
    if not split_file.is_file():
        raise CxradError(f"{split_file}: no such split file; give the data.json of the authors' benchmark.")
    try:
        spec = json.loads(split_file.read_text(encoding="utf-8"))
    except RecursionError:
        raise _split_file_error(split_file, "nested too deeply") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _split_file_error(split_file, f"{type(exc).__name__}: {exc}") from None
    groups = [(name, label, names) for name, label, _, names in _split_groups(split_file, spec)]
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


def _add_anomalies(index: SourceIndex, listing: Listing, anomalies: Path) -> None:
    """Append the labelled anomalies of an ``--anomalies`` CSV to ``listing``; an image listed in both
    files is refused (it would be a labelled anomaly and in Dn/Du/test/val or the pool at once)."""
    extra = from_csv(index, anomalies, anomalies_only=True)
    if listing.anomaly_rows:
        raise CxradError(f"{anomalies}: --anomalies given, but {listing.anomaly_file} names labelled anomalies "
                         f"too (split {ANOMALY}); list them in one of the two files.")
    named = listing.inputs.get("labels") or listing.inputs.get("split_file")
    where = named["path"] if named else f"the folder layout of {index.source}"
    have = {e.id for e in listing.entries}
    for e_id, line in extra.anomaly_rows:
        if e_id in have:
            raise CxradError(f"{anomalies}: line {line}: {e_id} is also listed in {where}; a labelled anomaly "
                             "must not be in Dn/Du/test/val or their pool: remove it from one of the files.")
    listing.entries += extra.entries
    listing.rejects += extra.rejects
    listing.anomaly_rows, listing.anomaly_file = extra.anomaly_rows, anomalies
    listing.inputs["anomalies"] = {"path": str(anomalies.resolve()), "sha256": sha256_file(anomalies)}


def list_entries(source: Path, labels: Optional[Path] = None, split_file: Optional[Path] = None,
                 anomalies: Optional[Path] = None) -> Listing:
    """Resolve SOURCE and its labels into entries + early rejects + manifest input records.

    ``anomalies``: an optional CSV of labelled abnormal training images (split ``anomaly``).
    """
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
    if anomalies is not None:
        _add_anomalies(index, listing, Path(anomalies))
    listing.rejects = index.rejects + listing.rejects
    listing.inputs["source"] = {**index.record(), "files": len(listing.entries),
                                "listing_sha256": listing_digest(listing.entries)}
    return listing
