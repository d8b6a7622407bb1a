"""Find a dataset's samples: media files and their captions, from a folder scan or a metadata file.

A dataset is a folder. If it holds `metadata.jsonl` (or, failing that, `metadata.csv`), that file lists
the samples; otherwise every media file under the folder is a sample, captioned by a sidecar `.txt`
(`clip.mp4.txt` first, so `a.png` and `a.jpg` can differ, then `clip.txt`). Nothing here opens the media:
decoding problems are found later, by the processor.

Pairs (IC-LoRA): a metadata file's `reference` column (`reference_key`) names each sample's reference video, a
path relative to the metadata file as `path` is. A row that names one that is missing or not media is rejected
here; a row that names none gives a sample without a reference (preprocessing decides whether that is allowed).
A folder scan has no pairs: reference videos would be taken for samples.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from attrs import frozen

from ltxc.errors import UserError

VIDEO_EXTENSIONS = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
# captions and metadata live beside the media, so a scan passes over them without complaint
SIDE_EXTENSIONS = {".txt", ".json", ".jsonl", ".csv"}
METADATA_NAMES = ("metadata.jsonl", "metadata.csv")  # the first one present wins
MISSING_CAPTION_POLICIES = ("skip", "filename", "empty")

MissingCaption = Literal["skip", "filename", "empty"]
CaptionSource = Literal["sidecar", "metadata", "filename", "empty"]


@frozen
class Sample:
    """One media file and its caption; `id` is stable across runs and safe as a file name."""

    id: str
    path: str  # absolute
    relpath: str  # relative to the dataset root, posix separators: what the manifest records
    kind: Literal["video", "image"]
    caption: str
    caption_source: CaptionSource
    reference: str = ""  # absolute path of the paired reference video (IC-LoRA); "" when none
    reference_relpath: str = ""  # relative to the dataset root, as the manifest records it


@frozen
class Rejected:
    """Something in the dataset that is not a sample, and why."""

    source: str  # a relpath, or `metadata.jsonl line 7` when the line itself is broken
    reason: str


def discover(
    root: Path,
    *,
    metadata: Path | None = None,
    path_key: str = "path",
    caption_key: str = "caption",
    missing_caption: MissingCaption = "skip",
    reference_key: str = "reference",
) -> tuple[list[Sample], list[Rejected]]:
    """The samples under `root` (sorted by relpath) and everything rejected on the way."""
    root = Path(os.path.abspath(root))
    if not root.exists():
        raise UserError(f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise UserError(f"dataset path {root} is not a folder: pass the folder that holds the media files")
    if missing_caption not in MISSING_CAPTION_POLICIES:
        choices = ", ".join(MISSING_CAPTION_POLICIES)
        raise UserError(f"missing_caption must be one of {choices}, not {missing_caption!r}")
    if metadata is None:
        metadata = next((root / name for name in METADATA_NAMES if (root / name).is_file()), None)
    if metadata is None:
        found, rejected = _scan(root, missing_caption)
    else:
        keys = (path_key, caption_key, reference_key)
        found, rejected = _from_metadata(root, Path(metadata), keys, missing_caption)
    return _with_ids(found), rejected


# -- one media file -----------------------------------------------------------------------------------


# path, relpath, kind, caption, caption source, reference path, reference relpath
_Found = tuple[str, str, Literal["video", "image"], str, CaptionSource, str, str]


def _kind(path: Path) -> Literal["video", "image"] | None:
    suffix = path.suffix.lower()
    return "video" if suffix in VIDEO_EXTENSIONS else "image" if suffix in IMAGE_EXTENSIONS else None


def _unsupported(path: Path, where: str = "") -> str:
    what = path.suffix.lower() or "no extension"
    return f"not a supported media file ({what}, {where})" if where else f"not a supported media file ({what})"


def _relpath(path: Path, root: Path) -> str:
    try:
        return Path(os.path.relpath(path, root)).as_posix()
    except ValueError:  # another drive on Windows: there is no relative path
        return path.as_posix()


def _decode_caption(raw: bytes) -> tuple[str, str]:
    """(caption, "") or ("", why there is none)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return "", f"caption is not UTF-8 (byte 0x{raw[e.start]:02x} at {e.start})"
    text = text.removeprefix("\ufeff").strip()  # editors on Windows write a BOM
    return (text, "") if text else ("", "empty caption")


def _read_sidecar(media: Path) -> tuple[str, str]:
    """The caption beside `media`: `<name.ext>.txt` first, then `<stem>.txt`; the first that exists wins."""
    for candidate in (media.with_name(media.name + ".txt"), media.with_suffix(".txt")):
        if candidate.is_file():
            try:
                return _decode_caption(candidate.read_bytes())
            except OSError as e:
                return "", f"caption could not be read ({e.strerror})"
    return "", "missing caption"


def _filename_caption(stem: str) -> str:
    words = " ".join(re.sub(r"[_\-]+", " ", stem).split())
    return words or stem


def _resolve_caption(
    caption: str, problem: str, source: CaptionSource, media: Path, policy: MissingCaption
) -> tuple[str, CaptionSource] | None:
    """Apply the missing-caption policy; None means reject the sample with `problem`."""
    if not problem:
        return caption, source
    if policy == "filename":
        return _filename_caption(media.stem), "filename"
    if policy == "empty":
        return "", "empty"
    return None


# -- a folder scan ------------------------------------------------------------------------------------


def _scan(root: Path, policy: MissingCaption) -> tuple[list[_Found], list[Rejected]]:
    found: list[_Found] = []
    rejected: list[Rejected] = []

    def unreadable(e: OSError) -> None:
        rejected.append(Rejected(_relpath(Path(e.filename or root), root), f"folder could not be read ({e.strerror})"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # .git, .cache: never data
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.startswith(".") or path.suffix.lower() in SIDE_EXTENSIONS:
                continue
            rel = _relpath(path, root)
            kind = _kind(path)
            if kind is None:
                rejected.append(Rejected(rel, _unsupported(path)))
                continue
            if not path.is_file():  # a broken link, a fifo
                rejected.append(Rejected(rel, "not a readable file"))
                continue
            caption, problem = _read_sidecar(path)
            resolved = _resolve_caption(caption, problem, "sidecar", path, policy)
            if resolved is None:
                rejected.append(Rejected(rel, problem))
                continue
            found.append((str(path), rel, kind, *resolved, "", ""))
    return found, rejected


# -- a metadata file ----------------------------------------------------------------------------------


_Row = tuple[int, dict[str, Any] | None, str]  # line, entry (None when the line is broken), problem


def _from_metadata(
    root: Path, meta: Path, keys: tuple[str, str, str], policy: MissingCaption
) -> tuple[list[_Found], list[Rejected]]:
    path_key, caption_key, reference_key = keys
    meta = Path(os.path.abspath(meta))
    if not meta.is_file():
        raise UserError(f"metadata file {meta} does not exist")
    name = _relpath(meta, root) if meta.is_relative_to(root) else str(meta)
    if meta.suffix.lower() == ".jsonl":
        rows = list(_jsonl_rows(meta))
        entries = [entry for _, entry, _ in rows if entry is not None]
        for key, option in ((path_key, "--path-key"), (caption_key, "--caption-key")):
            if entries and not any(key in entry for entry in entries):
                seen = sorted({k for entry in entries for k in entry})
                raise UserError(
                    f"{meta}: no line has a {key!r} key (keys found: {', '.join(seen) or 'none'}); "
                    f"name the right key with {option}"
                )
    elif meta.suffix.lower() == ".csv":
        rows = list(_csv_rows(meta, path_key, caption_key))
    else:
        raise UserError(f"metadata file {meta} must be .jsonl (one JSON object a line) or .csv (with a header row)")

    found: list[_Found] = []
    rejected: list[Rejected] = []
    first_line: dict[str, int] = {}  # real path -> the line that listed it first
    for line, entry, problem in rows:
        where = f"{name} line {line}"
        value = None if entry is None else entry.get(path_key)
        if entry is None or not isinstance(value, str) or not value.strip():
            rejected.append(Rejected(where, f"{where}: {problem or f'no {path_key!r} (the media file path)'}"))
            continue
        path = Path(os.path.abspath(meta.parent / value.strip()))  # an absolute path replaces the base
        rel = _relpath(path, root)
        real = os.path.realpath(path)
        if real in first_line:
            rejected.append(Rejected(rel, f"listed twice ({name} lines {first_line[real]} and {line})"))
            continue
        first_line[real] = line
        kind = _kind(path)
        if not path.is_file():
            rejected.append(Rejected(rel, f"file not found ({where})"))
            continue
        if kind is None:
            rejected.append(Rejected(rel, _unsupported(path, where)))
            continue
        raw = entry.get(caption_key)
        if raw is not None and not isinstance(raw, str):
            rejected.append(Rejected(rel, f"caption is not text ({where})"))
            continue
        caption = (raw or "").strip()
        problem = "missing caption" if raw is None else "" if caption else "empty caption"
        resolved = _resolve_caption(caption, problem, "metadata", path, policy)
        if resolved is None:
            rejected.append(Rejected(rel, f"{problem} ({where})"))
            continue
        reference, reference_rel, problem = _reference(entry.get(reference_key), meta, root, where)
        if problem:
            rejected.append(Rejected(rel, problem))
            continue
        found.append((str(path), rel, kind, *resolved, reference, reference_rel))
    return found, rejected


def _reference(value: Any, meta: Path, root: Path, where: str) -> tuple[str, str, str]:
    """A row's reference video: (absolute path, relpath, "") or ("", "", why it is unusable); none named: all ""."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return "", "", ""
    if not isinstance(value, str):
        return "", "", f"reference is not a path ({where})"
    path = Path(os.path.abspath(meta.parent / value.strip()))
    rel = _relpath(path, root)
    if not path.is_file():
        return "", "", f"reference not found: {rel} ({where})"
    if _kind(path) is None:
        return "", "", f"reference not a supported media file: {rel} ({path.suffix.lower() or 'no extension'}, {where})"
    return str(path), rel, ""


def _jsonl_rows(meta: Path) -> Iterator[_Row]:
    for number, raw in enumerate(meta.read_bytes().split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:  # one bad line costs one sample, not the dataset
            yield number, None, f"not UTF-8 (byte 0x{raw[e.start]:02x} at {e.start})"
            continue
        text = (text.removeprefix("\ufeff") if number == 1 else text).strip()
        if not text:
            continue
        try:
            entry = json.loads(text)
        except json.JSONDecodeError as e:
            yield number, None, f"not valid JSON ({e.msg}, column {e.colno})"
            continue
        if not isinstance(entry, dict):
            yield number, None, "not a JSON object"
            continue
        yield number, entry, ""


def _csv_rows(meta: Path, path_key: str, caption_key: str) -> Iterator[_Row]:
    raw = meta.read_bytes()
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:  # a CSV cannot be split into lines safely before decoding
        raise UserError(f"{meta} is not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}); save it as UTF-8") from e
    reader = csv.DictReader(io.StringIO(text, newline=""), skipinitialspace=True)
    try:
        columns = reader.fieldnames or []
        for key, option in ((path_key, "--path-key"), (caption_key, "--caption-key")):
            if columns and key not in columns:
                raise UserError(
                    f"{meta}: no {key!r} column (the header row has: {', '.join(columns)}); "
                    f"name the right column with {option}"
                )
        for row in reader:
            yield reader.line_num, row, ""
    except csv.Error as e:
        raise UserError(f"{meta} line {reader.line_num}: not valid CSV ({e})") from e


# -- ids ----------------------------------------------------------------------------------------------


def sample_id(relpath: str, digits: int = 10) -> str:
    """`<safe stem>-<sha1(relpath)[:digits]>`: readable, stable, and distinct for `a.png` and `a.jpg`."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(relpath).stem).strip("._-")[:48] or "sample"
    return f"{stem}-{hashlib.sha1(relpath.encode('utf-8')).hexdigest()[:digits]}"


def _with_ids(found: list[_Found]) -> list[Sample]:
    found = sorted(found, key=lambda f: f[1])
    ids = [sample_id(rel) for _, rel, *_ in found]
    counts = Counter(ids)
    # a shared 10-digit prefix is all but impossible; should it happen, the full hash still tells them apart
    ids = [sample_id(rel, 40) if counts[i] > 1 else i for i, (_, rel, *_) in zip(ids, found, strict=True)]
    return [Sample(i, *f) for i, f in zip(ids, found, strict=True)]
