"""The latent cache on disk: `cache.json` + `manifest.jsonl` + safetensors, written atomically.

Layout:
    cache.json          format version, spec name and hash, settings, where the null conditioning is
    manifest.jsonl      one line per cached sample, in dataset order (rewritten atomically at the end of a run)
    rejected.jsonl      one line per input that was skipped, with its reason
    null.safetensors    the null conditioning (for CFG dropout), encoded once
    samples/ID.safetensors   latents, text_embeds, text_mask (and any text_<name>) of one sample
    journal/WRITER.jsonl     records appended as samples finish; merged into the manifest at the end

A sample counts as done when its record is in the manifest or a journal *and* its file exists, so a run
killed at any point resumes without redoing finished work or trusting half-written files. Nothing here
pickles: safetensors and JSON only.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ltxc.errors import UserError
from ltxc.fileio import atomic_write, atomic_write_json, atomic_write_jsonl, json_line, remove_leftover_tmp

CACHE_FORMAT = 1
HEADER = "cache.json"
MANIFEST = "manifest.jsonl"
REJECTED = "rejected.jsonl"
NULL = "null.safetensors"
SAMPLES = "samples"
JOURNAL = "journal"
_OWNED = (HEADER, MANIFEST, REJECTED, NULL, SAMPLES, JOURNAL)


class CacheMismatch(UserError):
    """The cache was built with another spec or other settings."""


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> None:
    """Write a safetensors file atomically."""
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    # One metadata key holding sorted JSON: safetensors stores metadata in a hash map whose order changes from
    # process to process, and a cache must be byte-identical whoever wrote it.
    header = {"ltxc": json.dumps(dict(metadata), sort_keys=True)} if metadata else None
    atomic_write(path, lambda tmp: save_file(contiguous, tmp, metadata=header))


class Cache:
    """A cache directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- header -------------------------------------------------------------------------------------
    def header(self) -> dict[str, Any] | None:
        """The parsed `cache.json`, or None when there is none."""
        path = self.root / HEADER
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: unreadable cache header ({exc}); use --overwrite to rebuild") from None

    def open(self, header: dict[str, Any], overwrite: bool = False) -> None:
        """Prepare for writing with `header`: refuse a cache made differently, unless `overwrite` rebuilds it."""
        existing = self.header()
        if existing is not None and existing != header:
            if not overwrite:
                raise CacheMismatch(
                    f"{self.root}: this cache was made {describe_difference(existing, header)}; "
                    "use another --cache directory, or --overwrite to rebuild it"
                )
            self.clear()
        elif existing is None and self.root.exists() and any(self.root.iterdir()) and not overwrite:
            foreign = sorted(p.name for p in self.root.iterdir() if p.name not in _OWNED)
            if foreign:
                raise UserError(
                    f"{self.root}: not an ltxc cache and not empty ({', '.join(foreign[:3])} ...); "
                    "choose an empty or new directory"
                )
        self.root.mkdir(parents=True, exist_ok=True)
        remove_leftover_tmp(self.root)  # a killed run may have left temp files; never partial records
        atomic_write_json(self.root / HEADER, header)

    def clear(self) -> None:
        """Delete everything ltxc wrote here (and nothing else)."""
        for name in _OWNED:
            path = self.root / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    # -- samples ------------------------------------------------------------------------------------
    def sample_path(self, sample_id: str) -> Path:
        """Where a sample's tensors live."""
        return self.root / SAMPLES / f"{sample_id}.safetensors"

    def write_sample(self, sample_id: str, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
        """Write one sample's tensors; return the path relative to the cache root."""
        path = self.sample_path(sample_id)
        save_tensors(path, tensors, metadata)
        return path.relative_to(self.root).as_posix()

    def load_sample(self, sample_id: str) -> dict[str, torch.Tensor]:
        """One sample's tensors."""
        return load_file(self.sample_path(sample_id))

    def write_null(self, text: Mapping[str, torch.Tensor]) -> None:
        """Store the null conditioning once (text tensors by name, without the batch dimension)."""
        save_tensors(self.root / NULL, {f"text_{name}": tensor for name, tensor in text.items()})

    def load_null(self) -> dict[str, torch.Tensor]:
        """The null conditioning."""
        return load_file(self.root / NULL)

    # -- records ------------------------------------------------------------------------------------
    def append(self, writer: str, record: Mapping[str, Any]) -> None:
        """Journal a finished sample (flushed and fsynced, so a kill right after keeps it)."""
        _append_line(self.root / JOURNAL / f"samples-{writer}.jsonl", record)

    def append_rejected(self, writer: str, record: Mapping[str, Any]) -> None:
        """Journal a rejected input of this run."""
        _append_line(self.root / JOURNAL / f"rejected-{writer}.jsonl", record)

    def records(self) -> dict[str, dict[str, Any]]:
        """Every finished sample (manifest and journals) whose file exists, by id."""
        found: dict[str, dict[str, Any]] = {}
        sources = [self.root / MANIFEST, *sorted((self.root / JOURNAL).glob("samples-*.jsonl"))]
        for path in sources:
            for record in _read_jsonl(path):
                if isinstance(record, dict) and "id" in record and (self.root / record.get("file", "")).is_file():
                    found[record["id"]] = record
        return found

    def manifest(self) -> list[dict[str, Any]]:
        """The manifest's records, in order."""
        return [r for r in _read_jsonl(self.root / MANIFEST) if isinstance(r, dict)]

    def rejected(self) -> list[dict[str, Any]]:
        """The rejected inputs of the last run."""
        return [r for r in _read_jsonl(self.root / REJECTED) if isinstance(r, dict)]

    def clear_rejected_journals(self) -> None:
        """Forget rejections journaled by an unfinished earlier run (they are retried)."""
        for path in (self.root / JOURNAL).glob("rejected-*.jsonl"):
            path.unlink()

    def finalise(self, order: Sequence[str], rejected: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Merge journals into `manifest.jsonl` in dataset `order`, write `rejected.jsonl`, drop the journals.

        Ordering by the dataset (not by finishing time) makes the cache independent of worker count.
        """
        records = self.records()
        rank = {sample_id: i for i, sample_id in enumerate(order)}
        ordered = sorted(records.values(), key=lambda r: (rank.get(r["id"], len(rank)), r["id"]))
        journaled = [r for p in sorted((self.root / JOURNAL).glob("rejected-*.jsonl")) for r in _read_jsonl(p)]
        everything = {json_line(r): r for r in [*rejected, *journaled] if r.get("id") not in records}
        atomic_write_jsonl(self.root / MANIFEST, ordered)
        atomic_write_jsonl(self.root / REJECTED, sorted(everything.values(), key=lambda r: (r["source"], r["reason"])))
        shutil.rmtree(self.root / JOURNAL, ignore_errors=True)
        return ordered


def _append_line(path: Path, record: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json_line(record)
    with open(path, "a+b") as handle:
        if handle.seek(0, os.SEEK_END) > 0:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":  # a kill mid-append left a torn line: end it, never extend it
                line = "\n" + line
        handle.write(line.encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())


def _read_jsonl(path: Path) -> list[Any]:
    """Lines of a JSONL file; a torn last line (a kill mid-append) is ignored."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def describe_difference(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> str:
    """`with fps 24 (now 25), spec hash 1a2b… (now 3c4d…)`: what differs between two headers."""
    parts: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            parts.append(describe_difference(a, b, f"{prefix}{key}.").removeprefix("with "))
        else:
            parts.append(f"{prefix}{key} {_short(a)} (now {_short(b)})")
    return "with " + ", ".join(parts)


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
