"""The cache directory: header checks, atomic sample writes, journals, resume and finalise.

Run: pytest tests/test_cache.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ltxc.data.cache import Cache, CacheMismatch, describe_difference
from ltxc.errors import UserError

HEADER = {"format": 1, "spec": {"name": "m", "hash": "abc"}, "settings": {"fps": 25.0, "max_frames": 9}}


def record(sample_id: str, cache: Cache) -> dict:
    file = cache.write_sample(
        sample_id, {"latents": torch.full((2, 1, 1, 1), float(len(sample_id)))}, {"id": sample_id}
    )
    return {"id": sample_id, "source": f"{sample_id}.mp4", "file": file, "bucket": "64x64x9"}


def test_open_writes_header_and_refuses_other_settings(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c")
    cache.open(HEADER)
    assert json.loads((tmp_path / "c" / "cache.json").read_text()) == HEADER
    cache.open(HEADER)  # same settings: resume
    other = {**HEADER, "settings": {"fps": 24.0, "max_frames": 9}}
    with pytest.raises(CacheMismatch) as info:
        cache.open(other)
    message = str(info.value)
    assert "settings.fps 25.0 (now 24.0)" in message and "--overwrite" in message
    other_spec = {**HEADER, "spec": {"name": "m", "hash": "def"}}
    with pytest.raises(CacheMismatch, match=r"spec.hash \"abc\" \(now \"def\"\)"):
        cache.open(other_spec)


def test_overwrite_clears_only_what_ltxc_wrote(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    cache.open(HEADER)
    cache.append("rank0", record("a", cache))
    cache.finalise(["a"], [])
    (tmp_path / "notes.txt").write_text("mine")
    cache.open({**HEADER, "settings": {"fps": 30.0}}, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "samples").exists() and not (tmp_path / "manifest.jsonl").exists()
    assert cache.records() == {}


def test_refuses_a_foreign_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "holiday.mp4").write_bytes(b"x")
    with pytest.raises(UserError, match="not an ltxc cache"):
        Cache(tmp_path).open(HEADER)


def test_records_need_their_file_and_ignore_a_torn_journal_line(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    cache.open(HEADER)
    cache.append("rank0", record("a", cache))
    cache.append("rank0", {"id": "ghost", "file": "samples/ghost.safetensors"})  # written record, file lost
    with open(tmp_path / "journal" / "samples-rank0.jsonl", "a") as handle:
        handle.write('{"id": "torn", "fi')  # a kill mid-append
    assert set(cache.records()) == {"a"}


def test_open_removes_leftover_temp_files(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    cache.open(HEADER)
    (tmp_path / "samples").mkdir(exist_ok=True)
    leftover = tmp_path / "samples" / ".x.safetensors.abc.tmp"
    leftover.write_bytes(b"half")
    cache.open(HEADER)
    assert not leftover.exists()


def test_finalise_orders_by_dataset_not_by_finish_time(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    cache.open(HEADER)
    for writer, sample_id in (("rank1", "c"), ("rank0", "a"), ("rank1", "b")):
        cache.append(writer, record(sample_id, cache))
    cache.append_rejected("rank0", {"id": "d", "source": "d.mp4", "reason": "too short"})
    manifest = cache.finalise(["a", "b", "c", "d"], [{"source": "x.pdf", "reason": "not a supported media file"}])
    assert [r["id"] for r in manifest] == ["a", "b", "c"]
    lines = (tmp_path / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["a", "b", "c"]
    assert [r["source"] for r in cache.rejected()] == ["d.mp4", "x.pdf"]
    assert not (tmp_path / "journal").exists()
    assert torch.equal(cache.load_sample("b")["latents"], torch.full((2, 1, 1, 1), 1.0))


def test_a_retried_sample_is_not_also_listed_as_rejected(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    cache.open(HEADER)
    cache.append_rejected("rank0", {"id": "a", "source": "a.mp4", "reason": "flaky"})
    cache.append("rank0", record("a", cache))
    cache.finalise(["a"], [])
    assert cache.rejected() == []


def test_describe_difference_names_nested_keys() -> None:
    text = describe_difference({"a": 1, "s": {"fps": 24}}, {"a": 1, "s": {"fps": 25}})
    assert text == "with s.fps 24 (now 25)"
