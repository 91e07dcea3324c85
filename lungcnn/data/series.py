"""A patient's study: image sources (files, zip members, uploads) grouped into ordered series.

A CT series exported from a PACS is a folder or a zip of DICOM files, often with meaningless names. Slices
are grouped and ordered the way a viewer does it:

- DICOM: by SeriesInstanceUID, ordered along the slice normal (ImagePositionPatient projected on the cross
  product of ImageOrientationPatient's row and column directions), then InstanceNumber, then name. Only
  those four tags are read (`specific_tags`, no pixel data), so grouping costs little and patient tags
  (name, ID, birth date, accession number) are never read at all.
- Other images: by a groups table (`file,group` CSV, paths relative to the CSV's own folder; the data set's
  `groups.csv`, columns file,label,group, is one), else one folder (or one zip, or one upload batch) is one
  series, ordered by name with numbers compared as numbers ("case (2)" before "case (10)").

Zip files are opened in memory, never extracted: a member-count limit, a size limit per member (the single
file limit) and in total, and member names that try a path trick (absolute, `..`, drive letters, links)
refuse the archive with a reason. Declared sizes are checked before inflating, and reads are capped.
"""

from __future__ import annotations

import csv
import io
import math
import re
import stat
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from lungcnn.data.io import DICOM_SUFFIXES, MAX_BYTES, SUPPORTED_SUFFIXES
from lungcnn.errors import LungCNNInputError

ZIP_SUFFIX = ".zip"
HEADER_TAGS = ["SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient", "InstanceNumber"]


@dataclass(frozen=True)
class ArchiveLimits:
    """Limits on one zip file, checked on its directory before any member is inflated.

    Args:
        max_member_bytes: largest member once inflated (the single-file limit).
        max_total_bytes: all members together once inflated.
        max_members: number of entries (files and folders) in the archive.
    """

    max_member_bytes: int = MAX_BYTES
    max_total_bytes: int = 2 * 2**30
    max_members: int = 10_000

    def __post_init__(self) -> None:
        for key in ("max_member_bytes", "max_total_bytes", "max_members"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LungCNNInputError(f"archive limit {key} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class Source:
    """One image to read: a file on disk (`path`) or bytes in memory (`data`: a zip member, an upload).

    Args:
        name: how the image is named in tables and on the page (a path, `archive.zip/member`, an upload's name).
        folder: the series it falls in when nothing better is known (its folder, zip or upload batch).
    """

    name: str
    folder: str
    path: Path | None = None
    data: bytes | None = None

    @property
    def content(self) -> Path | bytes:
        return self.path if self.path is not None else self.data


@dataclass(frozen=True)
class Series:
    """One series: its key (SeriesInstanceUID, group name or folder) and its sources in slice order."""

    key: str
    sources: tuple[Source, ...]


# -- sources -------------------------------------------------------------------------------------------
def sources_from_files(files: Iterable[Path], limits: ArchiveLimits = ArchiveLimits()) -> list[Source]:
    """Files -> sources; a `.zip` becomes its members (a refused zip raises, naming the reason)."""
    out: list[Source] = []
    for path in files:
        path = Path(path)
        if path.suffix.lower() == ZIP_SUFFIX:
            size = path.stat().st_size
            if size > limits.max_total_bytes:
                raise LungCNNInputError(f"{path}: the zip file is {size / 2**20:.0f} MiB, over the "
                                        f"{limits.max_total_bytes / 2**20:.0f} MiB limit")
            out.extend(open_zip(path.read_bytes(), str(path), limits))
        else:
            out.append(Source(str(path), str(path.parent), path=path))
    return out


def open_zip(data: bytes, name: str, limits: ArchiveLimits = ArchiveLimits()) -> list[Source]:
    """The images in a zip held in memory, in member-name order (folders, hidden files and other files skipped)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as e:
        raise LungCNNInputError(f"{name}: not a readable zip file ({e})") from None
    if len(infos) > limits.max_members:
        raise LungCNNInputError(f"{name}: the zip holds {len(infos):,} entries, over the {limits.max_members:,} limit")
    seen: set[str] = set()
    for info in infos:
        _check_member_name(name, info)
        if info.filename in seen:
            raise LungCNNInputError(f"{name}: the member {info.filename!r} appears twice; refusing the archive")
        seen.add(info.filename)
        if info.flag_bits & 0x1:
            raise LungCNNInputError(f"{name}: the member {info.filename!r} is encrypted; lungcnn reads unencrypted zips only")
        if info.file_size > limits.max_member_bytes:
            raise LungCNNInputError(f"{name}: the member {info.filename!r} expands to {info.file_size / 2**20:.0f} MiB, over "
                                    f"the {limits.max_member_bytes / 2**20:.0f} MiB limit per file (a zip bomb?)")
    total = sum(info.file_size for info in infos)
    if total > limits.max_total_bytes:
        raise LungCNNInputError(f"{name}: the zip expands to {total / 2**20:.0f} MiB, over the "
                                f"{limits.max_total_bytes / 2**20:.0f} MiB limit (a zip bomb?)")
    out = []
    for info in sorted(infos, key=lambda i: natural_key(i.filename)):
        member = PurePosixPath(info.filename)
        if info.is_dir() or any(p.startswith(".") or p == "__MACOSX" for p in member.parts):
            continue
        try:
            with archive.open(info) as f:
                content = f.read(limits.max_member_bytes + 1)
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError, OSError, ValueError) as e:
            raise LungCNNInputError(f"{name}: the member {info.filename!r} cannot be read ({e})") from None
        if len(content) > limits.max_member_bytes:  # never trust the declared size
            raise LungCNNInputError(f"{name}: the member {info.filename!r} expands past the "
                                    f"{limits.max_member_bytes / 2**20:.0f} MiB limit per file (a zip bomb?)")
        if member.suffix.lower() in SUPPORTED_SUFFIXES or content[128:132] == b"DICM":
            folder = str(PurePosixPath(name) / member.parent) if str(member.parent) != "." else name
            out.append(Source(f"{name}/{info.filename}", folder, data=content))
    return out


def _check_member_name(name: str, info: zipfile.ZipInfo) -> None:
    member = info.filename
    reason = None
    if "\x00" in member or "\\" in member:
        reason = "a backslash or NUL character"
    elif member.startswith("/") or re.match(r"^[A-Za-z]:", member):
        reason = "an absolute path"
    elif ".." in PurePosixPath(member).parts:
        reason = "a '..' part that points outside the archive"
    elif stat.S_ISLNK(info.external_attr >> 16):
        reason = "a symbolic link"
    if reason:
        raise LungCNNInputError(f"{name}: the member name {member!r} has {reason}; refusing the archive")


# -- groups ---------------------------------------------------------------------------------------------
def read_groups(path: str | Path) -> dict[Path, str]:
    """A `file,group` CSV -> {resolved file path: group}; paths are relative to the CSV's own folder."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise LungCNNInputError(f"--groups {path}: cannot read it ({e})") from None
    if not rows or not {"file", "group"} <= set(rows[0]):
        raise LungCNNInputError(f"--groups {path}: expected a CSV with columns file,group (one row per image)")
    groups = {}
    for i, row in enumerate(rows, start=2):
        if not row["file"] or not row["group"]:
            raise LungCNNInputError(f"--groups {path}: line {i} lacks a file or a group")
        groups[(path.parent / row["file"]).resolve()] = row["group"]
    return groups


@dataclass(frozen=True)
class SliceHeader:
    """What grouping needs from a DICOM header (None where the tag is absent or invalid)."""

    series_uid: str | None = None
    position: float | None = None  # along the slice normal, in mm
    instance: int | None = None


def read_header(source: Source) -> SliceHeader:
    """The grouping tags of a DICOM source (no pixels, no patient tags); an empty header for anything else."""
    data = source.data if source.data is not None else None
    if data is None:
        try:
            with open(source.path, "rb") as f:
                head = f.read(132)
        except OSError:
            return SliceHeader()
    else:
        head = data[:132]
    if head[128:132] != b"DICM" and Path(source.name).suffix.lower() not in DICOM_SUFFIXES:
        return SliceHeader()
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data) if data is not None else source.path, stop_before_pixels=True,
                             force=True, specific_tags=HEADER_TAGS)
        uid = str(ds.get("SeriesInstanceUID", "") or "").strip() or None
        return SliceHeader(uid, _position(ds), _integer(ds.get("InstanceNumber", None)))
    except Exception:  # a corrupt header: the reader will say why when the pixels are read
        return SliceHeader()


def _position(ds) -> float | None:
    try:
        ipp = np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=float)
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=float)
    except (AttributeError, TypeError, ValueError):
        return None
    if ipp.shape != (3,) or iop.shape != (6,) or not (np.isfinite(ipp).all() and np.isfinite(iop).all()):
        return None
    normal = np.cross(iop[:3], iop[3:])
    return float(ipp @ normal) if np.linalg.norm(normal) > 1e-6 else None


def _integer(value) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def natural_key(text: str) -> tuple:
    """Sort key comparing digit runs as numbers: "case (2)" < "case (10)"."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", text))


def group_series(sources: Sequence[Source], groups: Mapping[Path, str] | None = None) -> list[Series]:
    """Sources -> series (in order of first appearance), each in slice order; see the module docstring."""
    members: dict[str, list[tuple[tuple, Source]]] = {}
    for source in sources:
        header = read_header(source)
        key = header.series_uid
        if key is None and groups and source.path is not None:
            key = groups.get(source.path.resolve())
        if key is None:
            key = source.folder
        order = (math.inf if header.position is None else header.position,
                 math.inf if header.instance is None else header.instance, natural_key(source.name))
        members.setdefault(key, []).append((order, source))
    return [Series(key, tuple(s for _, s in sorted(items, key=lambda pair: pair[0]))) for key, items in members.items()]
