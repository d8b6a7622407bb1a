"""Atomic file writes: a reader never sees a half-written file, and a killed writer leaves only `*.tmp`."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"
_UMASK = os.umask(0)
os.umask(_UMASK)  # reading the umask means setting it; put it straight back


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)`, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files owner-only; give them the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, value: Any) -> Path:
    """Write `value` as pretty, key-sorted JSON atomically (byte-stable for equal values)."""
    return atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def atomic_write_jsonl(path: str | Path, records: Iterable[Any]) -> Path:
    """Write one compact, key-sorted JSON object per line, atomically."""
    return atomic_write_text(path, "".join(json_line(record) for record in records))


def json_line(record: Any) -> str:
    """One JSONL line: compact, key-sorted, newline-terminated."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"


def remove_leftover_tmp(directory: str | Path) -> int:
    """Delete `*.tmp` files a killed writer left under `directory`; return how many."""
    removed = 0
    for leftover in Path(directory).rglob(f"*{TMP_SUFFIX}"):
        if leftover.is_file():
            leftover.unlink()
            removed += 1
    return removed
