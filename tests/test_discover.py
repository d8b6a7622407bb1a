"""Dataset discovery (`ltxc.data.discover`): folder scans with sidecar captions, metadata.jsonl and
metadata.csv, the missing-caption policies, rejections with their reasons, and stable unique ids.

Files are empty stand-ins: discovery never opens the media, only looks at names and captions.
Run: `pytest -q tests/test_discover.py` (well under a second; no media libraries needed).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ltxc.data.discover import Rejected, Sample, discover, sample_id
from ltxc.errors import UserError


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def write(root: Path, name: str, data: str | bytes) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def by_relpath(samples: list[Sample]) -> dict[str, Sample]:
    return {s.relpath: s for s in samples}


def reasons(rejected: list[Rejected]) -> dict[str, str]:
    return {r.source: r.reason for r in rejected}


# -- folder scan ------------------------------------------------------------------------------------


def test_sidecar_captions_and_name_ext_precedence(tmp_path: Path):
    touch(tmp_path, "a.png", "a.jpg", "clips/b.mp4", "c.MOV")
    write(tmp_path, "a.txt", "shared caption")
    write(tmp_path, "a.png.txt", "  the png one \n")
    write(tmp_path, "clips/b.txt", "\ufeffa clip with a BOM")
    write(tmp_path, "c.MOV.txt", "upper-case extension")
    samples, rejected = discover(tmp_path)
    found = by_relpath(samples)
    assert rejected == []
    assert list(found) == ["a.jpg", "a.png", "c.MOV", "clips/b.mp4"]  # sorted by relpath
    assert found["a.png"].caption == "the png one"  # <name.ext>.txt beats <stem>.txt
    assert found["a.jpg"].caption == "shared caption"
    assert found["clips/b.mp4"].caption == "a clip with a BOM"
    assert {s.caption_source for s in samples} == {"sidecar"}
    assert found["c.MOV"].kind == "video" and found["a.png"].kind == "image"
    assert found["clips/b.mp4"].path == str(tmp_path / "clips" / "b.mp4")
    assert Path(found["a.png"].path).is_absolute()


def test_shared_stem_gives_two_samples_with_distinct_ids(tmp_path: Path):
    touch(tmp_path, "a.png", "a.jpg", "x/a.png")
    write(tmp_path, "a.txt", "one caption")
    write(tmp_path, "x/a.txt", "other")
    samples, _ = discover(tmp_path)
    assert [s.relpath for s in samples] == ["a.jpg", "a.png", "x/a.png"]
    assert len({s.id for s in samples}) == 3
    for s in samples:
        assert re.fullmatch(r"a-[0-9a-f]{10}", s.id), s.id


def test_ids_are_filesystem_safe_and_unique_when_stems_sanitise_alike(tmp_path: Path):
    names = ["a b.png", "a?b.png", "a*b.png", "日本.png", "_.png", "-x.mp4"]
    touch(tmp_path, *names)
    samples, rejected = discover(tmp_path, missing_caption="empty")
    assert rejected == [] and len(samples) == len(names)
    assert len({s.id for s in samples}) == len(names)
    for s in samples:
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*-[0-9a-f]{10}", s.id), s.id
    assert sample_id("a b.png").split("-")[0] == sample_id("a?b.png").split("-")[0] == "a_b"
    assert sample_id("a b.png") != sample_id("a?b.png")


def test_hidden_files_and_folders_are_skipped(tmp_path: Path):
    touch(tmp_path, "keep.mp4", ".hidden.mp4", ".git/objects/x.mp4", "sub/.cache/y.png", "._keep.mp4")
    write(tmp_path, "keep.txt", "kept")
    samples, rejected = discover(tmp_path)
    assert [s.relpath for s in samples] == ["keep.mp4"]
    assert rejected == []


def test_non_media_files_are_rejected_and_side_files_ignored(tmp_path: Path):
    touch(tmp_path, "ok.webm", "doc.pdf", "README", "notes.json", "extra.csv", "list.jsonl", "sub/thing.gif")
    write(tmp_path, "ok.txt", "fine")
    samples, rejected = discover(tmp_path)
    assert [s.relpath for s in samples] == ["ok.webm"]
    assert reasons(rejected) == {
        "doc.pdf": "not a supported media file (.pdf)",
        "README": "not a supported media file (no extension)",
        "sub/thing.gif": "not a supported media file (.gif)",
    }


@pytest.fixture
def bad_captions(tmp_path: Path) -> Path:
    touch(tmp_path, "good.mp4", "missing_one.mp4", "empty-one.mp4", "latin1.png")
    write(tmp_path, "good.txt", "a good caption")
    write(tmp_path, "empty-one.txt", " \n\t ")
    write(tmp_path, "latin1.png.txt", b"caf\xe9")
    return tmp_path


def test_bad_captions_skipped(bad_captions: Path):
    samples, rejected = discover(bad_captions)
    assert [s.relpath for s in samples] == ["good.mp4"]
    assert reasons(rejected) == {
        "missing_one.mp4": "missing caption",
        "empty-one.mp4": "empty caption",
        "latin1.png": "caption is not UTF-8 (byte 0xe9 at 3)",
    }


def test_bad_captions_from_filename(bad_captions: Path):
    samples, rejected = discover(bad_captions, missing_caption="filename")
    found = by_relpath(samples)
    assert rejected == []
    assert found["missing_one.mp4"].caption == "missing one"
    assert found["empty-one.mp4"].caption == "empty one"
    assert found["latin1.png"].caption == "latin1"
    assert {found[k].caption_source for k in ("missing_one.mp4", "empty-one.mp4", "latin1.png")} == {"filename"}
    assert (found["good.mp4"].caption, found["good.mp4"].caption_source) == ("a good caption", "sidecar")


def test_bad_captions_empty(bad_captions: Path):
    samples, rejected = discover(bad_captions, missing_caption="empty")
    assert rejected == []
    assert [(s.relpath, s.caption, s.caption_source) for s in samples] == [
        ("empty-one.mp4", "", "empty"),
        ("good.mp4", "a good caption", "sidecar"),
        ("latin1.png", "", "empty"),
        ("missing_one.mp4", "", "empty"),
    ]


def test_unknown_policy_is_a_user_error(tmp_path: Path):
    with pytest.raises(UserError, match="missing_caption must be one of skip, filename, empty"):
        discover(tmp_path, missing_caption="ignore")  # type: ignore[arg-type]


def test_deterministic(tmp_path: Path):
    touch(tmp_path, *(f"d{i % 3}/clip_{i}.mp4" for i in range(12)), "z.png", "a.jpg")
    for i in range(12):
        write(tmp_path, f"d{i % 3}/clip_{i}.txt", f"caption {i}")
    first = discover(tmp_path, missing_caption="filename")
    assert first == discover(tmp_path, missing_caption="filename")
    assert [s.relpath for s in first[0]] == sorted(s.relpath for s in first[0])
    # ids depend on the relative path only, so moving the dataset keeps them
    moved = tmp_path.rename(tmp_path.with_name(tmp_path.name + "-moved"))
    assert [s.id for s in discover(moved, missing_caption="filename")[0]] == [s.id for s in first[0]]


def test_root_must_be_an_existing_folder(tmp_path: Path):
    with pytest.raises(UserError, match="does not exist"):
        discover(tmp_path / "nope")
    file = write(tmp_path, "clip.mp4", b"")
    with pytest.raises(UserError, match="is not a folder"):
        discover(file)


# -- metadata.jsonl ---------------------------------------------------------------------------------


def jsonl(*entries: object) -> str:
    return "\n".join(e if isinstance(e, str) else json.dumps(e) for e in entries) + "\n"


def test_metadata_jsonl(tmp_path: Path):
    touch(tmp_path, "v/a.mp4", "v/b.mp4", "v/c.png", "v/d.mp4", "v/e.mp4", "notes.pdf", "unlisted.mp4")
    write(tmp_path, "v/a.txt", "a sidecar that metadata overrides")
    write(
        tmp_path,
        "metadata.jsonl",
        jsonl(
            {"path": "v/a.mp4", "caption": " first "},
            {"path": "v/gone.mp4", "caption": "x"},  # line 2
            "",  # blank lines are fine
            "{not json",  # line 4
            {"caption": "no path"},  # line 5
            {"path": "v/b.mp4", "caption": "   "},  # line 6
            {"path": "v/c.png"},  # line 7
            {"path": "./v/a.mp4", "caption": "again"},  # line 8
            {"path": "notes.pdf", "caption": "x"},  # line 9
            ["a", "list"],  # line 10
            {"path": "v/d.mp4", "caption": 3},  # line 11
            {"path": str(tmp_path / "v" / "e.mp4"), "caption": "absolute"},  # line 12
        ),
    )
    samples, rejected = discover(tmp_path)
    assert [(s.relpath, s.caption, s.caption_source) for s in samples] == [
        ("v/a.mp4", "first", "metadata"),
        ("v/e.mp4", "absolute", "metadata"),
    ]
    got = reasons(rejected)
    assert got.pop("metadata.jsonl line 4").startswith("metadata.jsonl line 4: not valid JSON")
    assert got == {
        "v/gone.mp4": "file not found (metadata.jsonl line 2)",
        "metadata.jsonl line 5": "metadata.jsonl line 5: no 'path' (the media file path)",
        "v/b.mp4": "empty caption (metadata.jsonl line 6)",
        "v/c.png": "missing caption (metadata.jsonl line 7)",
        "v/a.mp4": "listed twice (metadata.jsonl lines 1 and 8)",
        "notes.pdf": "not a supported media file (.pdf, metadata.jsonl line 9)",
        "metadata.jsonl line 10": "metadata.jsonl line 10: not a JSON object",
        "v/d.mp4": "caption is not text (metadata.jsonl line 11)",
    }


def test_metadata_jsonl_policies_and_bad_bytes(tmp_path: Path):
    touch(tmp_path, "a_b.mp4", "c.png")
    meta = jsonl({"path": "a_b.mp4", "caption": ""}, {"path": "c.png"}).encode() + b'{"path": "\xff"}\n'
    write(tmp_path, "metadata.jsonl", meta)
    samples, rejected = discover(tmp_path, missing_caption="filename")
    assert [(s.caption, s.caption_source) for s in samples] == [("a b", "filename"), ("c", "filename")]
    assert reasons(rejected) == {"metadata.jsonl line 3": "metadata.jsonl line 3: not UTF-8 (byte 0xff at 10)"}


def test_metadata_jsonl_wins_over_csv_and_over_a_scan(tmp_path: Path):
    touch(tmp_path, "a.mp4", "b.mp4")
    write(tmp_path, "metadata.jsonl", jsonl({"path": "a.mp4", "caption": "from jsonl"}))
    write(tmp_path, "metadata.csv", "path,caption\nb.mp4,from csv\n")
    samples, rejected = discover(tmp_path)
    assert [(s.relpath, s.caption) for s in samples] == [("a.mp4", "from jsonl")]
    assert rejected == []  # b.mp4 is simply not listed


def test_explicit_metadata_elsewhere_resolves_paths_from_its_folder(tmp_path: Path):
    data = tmp_path / "data"
    touch(data, "clips/a.mp4")
    write(tmp_path, "lists/meta.jsonl", jsonl({"file": "../data/clips/a.mp4", "text": "hello"}))
    samples, rejected = discover(data, metadata=tmp_path / "lists" / "meta.jsonl", path_key="file", caption_key="text")
    assert rejected == []
    assert [(s.relpath, s.caption, s.path) for s in samples] == [
        ("clips/a.mp4", "hello", str(data / "clips" / "a.mp4"))
    ]


def test_metadata_jsonl_missing_key_everywhere_is_a_user_error(tmp_path: Path):
    touch(tmp_path, "a.mp4")
    write(tmp_path, "metadata.jsonl", jsonl({"file_name": "a.mp4", "caption": "x"}))
    with pytest.raises(UserError) as info:
        discover(tmp_path)
    message = str(info.value)
    assert "metadata.jsonl" in message and "'path'" in message and "--path-key" in message
    assert "file_name" in message  # the keys it does have
    with pytest.raises(UserError, match=r"'text'.*--caption-key"):
        discover(tmp_path, path_key="file_name", caption_key="text")


def test_metadata_of_unknown_format_or_missing_is_a_user_error(tmp_path: Path):
    write(tmp_path, "meta.json", "[]")
    with pytest.raises(UserError, match=r"\.jsonl .* or \.csv"):
        discover(tmp_path, metadata=tmp_path / "meta.json")
    with pytest.raises(UserError, match="does not exist"):
        discover(tmp_path, metadata=tmp_path / "missing.jsonl")


# -- metadata.csv -----------------------------------------------------------------------------------


def test_metadata_csv_with_custom_columns(tmp_path: Path):
    touch(tmp_path, "a.mp4", "b.mp4", "c.mp4", "d b.png")
    write(
        tmp_path,
        "metadata.csv",
        "\ufeffvideo, prompt, extra\n"
        "a.mp4, a cat on a mat, 1\n"
        'b.mp4,"quoted, with a comma"\n'
        "c.mp4,\n"
        "missing.mp4,x\n"
        "a.mp4,twice\n"
        "d b.png\n",
    )
    samples, rejected = discover(tmp_path, path_key="video", caption_key="prompt")
    assert [(s.relpath, s.caption, s.caption_source) for s in samples] == [
        ("a.mp4", "a cat on a mat", "metadata"),
        ("b.mp4", "quoted, with a comma", "metadata"),
    ]
    assert reasons(rejected) == {
        "c.mp4": "empty caption (metadata.csv line 4)",
        "missing.mp4": "file not found (metadata.csv line 5)",
        "a.mp4": "listed twice (metadata.csv lines 2 and 6)",
        "d b.png": "missing caption (metadata.csv line 7)",
    }
    samples, _ = discover(tmp_path, path_key="video", caption_key="prompt", missing_caption="empty")
    assert ("d b.png", "", "empty") in [(s.relpath, s.caption, s.caption_source) for s in samples]


def test_metadata_csv_missing_column_is_a_user_error(tmp_path: Path):
    touch(tmp_path, "a.mp4")
    write(tmp_path, "metadata.csv", "file,caption\na.mp4,x\n")
    with pytest.raises(UserError) as info:
        discover(tmp_path)
    message = str(info.value)
    assert "metadata.csv" in message and "'path'" in message and "--path-key" in message and "file" in message
    with pytest.raises(UserError, match=r"'prompt'.*--caption-key"):
        discover(tmp_path, path_key="file", caption_key="prompt")


def test_metadata_csv_not_utf8_is_a_user_error(tmp_path: Path):
    write(tmp_path, "metadata.csv", b"path,caption\na.mp4,caf\xe9\n")
    with pytest.raises(UserError, match=r"metadata\.csv is not UTF-8 \(byte 0xe9"):
        discover(tmp_path)


def test_empty_metadata_file_gives_nothing(tmp_path: Path):
    touch(tmp_path, "a.mp4")
    write(tmp_path, "metadata.csv", "")
    assert discover(tmp_path) == ([], [])
