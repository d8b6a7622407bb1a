"""`ltxc run preprocess` end to end: real (synthetic) media in, a latent cache out, checked against oracles.

Covers:
- oracle parity: every cached latent equals the spec's own VAE `encode(...).latent_dist.mode()` of the same
  frames, normalised by `diffusers.LTXPipeline._normalize_latents` with a non-trivial mean/std/scaling
  (a child spec, so an identity normaliser would fail); text embeddings, masks and `null.safetensors`
  equal `LTXPipeline._get_t5_prompt_embeds` on the same components;
- the frame policy as recorded: each manifest line's frames (a valid 8n+1 count), frame_times (= k/fps),
  source_fps, source_frames, bucket and latent_shape; the frames taken are the nearest-in-time ones for
  24/25/30 fps and a variable-frame-rate clip (read back from the pixels with `recover_index`);
- bad input: empty, random bytes, audio-only, truncated, non-video file, missing / empty / non-UTF-8
  caption, too-short clip: each in rejected.jsonl with its reason, the good ones all cached, exit 0 (1 with
  --strict); `--missing-caption filename` and `--frames-policy pad` keep the affected samples, recorded;
- resume: a subprocess SIGKILLed mid-run, then rerun, gives a cache byte-identical to an uninterrupted
  run, with no temp or journal files left (also after a torn journal line and a leftover temp file);
- `--workers 2` and `torchrun --nproc-per-node 2` (slow) give byte-identical caches to one process;
- refusals: another --fps or another spec on an existing cache (exit 2, names the setting and --overwrite,
  the cache untouched; --overwrite rebuilds), a resolution off the 32-px rule, a missing --data folder.

The spec is a child of specs/tiny/ltx.toml (written to a temp dir): a random per-channel mean/std and
scaling 0.7, so the normaliser is not the identity, and a text encoder wide enough (d_model 512) that its
output depends on the CPU thread count, so "byte-identical whatever the split" is a check that can fail.

Run: `pytest -q -m "not slow" tests/test_preprocess.py` (CPU only, nothing downloaded; ~10 s on 2 cores);
`pytest -q -m slow tests/test_preprocess.py` for the multi-process tests (kill and rerun, --workers, torchrun
in the shared launch; ~30 s); plain `pytest -q tests/test_preprocess.py` runs both.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY_LTX, SharedTorchrun, run_cli
from diffusers import LTXPipeline
from distributed_worker import Prepared, Scenario, shared_group
from safetensors.torch import load_file

from ltxc.cli import main
from ltxc.compiler import compile_spec
from ltxc.media.decode import read_frames
from ltxc.media.probe import probe
from ltxc.media.synthetic import (
    make_sample_dataset,
    recover_index,
    write_audio_only,
    write_corrupt,
    write_image,
    write_truncated,
    write_video,
)
from ltxc.spec import load_spec

CHANNELS = 128
SCALING = 0.7
TARGET_FPS = 25
MAX_FRAMES = 33  # --max-frames for the frame-policy dataset: counts 17, 25 and 33 all occur


# -- helpers ------------------------------------------------------------------------------------------


def ltxc(*args: str) -> tuple[int, str, str]:
    """Run `ltxc ARGS` in-process without pytest's capsys (module fixtures); return (code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def preprocess_args(plan: Path, data: Path, cache: Path, *extra: str) -> list[str]:
    return ["run", "preprocess", "--plan", str(plan), "--data", str(data), "--cache", str(cache), *extra]


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root`: relative posix path -> bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same_tree(a: Path, b: Path) -> None:
    """Same relative paths, same bytes."""
    ta, tb = tree(a), tree(b)
    assert sorted(ta) == sorted(tb), f"file lists differ: only in {a}: {sorted(set(ta) - set(tb))}, " + (
        f"only in {b}: {sorted(set(tb) - set(ta))}"
    )
    differing = [name for name in ta if ta[name] != tb[name]]
    assert not differing, f"files differ between {a} and {b}: {differing}"


def assert_clean(cache: Path) -> None:
    """A finished cache: no temp files, no journal."""
    assert not [p for p in cache.rglob("*") if p.name.endswith(".tmp")]
    assert not (cache / "journal").exists()
    for name in ("cache.json", "manifest.jsonl", "rejected.jsonl", "null.safetensors"):
        assert (cache / name).is_file(), name


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def by_source(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["source"]: r for r in records}


def valid_count(n: int) -> bool:
    return n >= 1 and (n - 1) % 8 == 0


def largest_valid(n: int) -> int:
    return (n - 1) // 8 * 8 + 1


def caption(path: Path, text: str) -> None:
    path.with_suffix(".txt").write_text(text + "\n", encoding="utf-8")


def nearest(times: Sequence[Fraction], target: Fraction) -> int:
    """Index of the source time nearest `target`; ties go to the earlier frame (exact arithmetic)."""
    return min(range(len(times)), key=lambda i: (abs(times[i] - target), i))


def stats(seed: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and (positive) std with 4 decimals, so they round-trip through TOML exactly."""
    rng = np.random.default_rng(seed)
    mean = [round(float(v), 4) for v in rng.uniform(-1.5, 1.5, CHANNELS)]
    std = [round(float(v), 4) for v in rng.uniform(0.3, 2.5, CHANNELS)]
    return mean, std


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as the preprocessor encodes: results then match bit for bit
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# -- shared fixtures ----------------------------------------------------------------------------------


def write_child_spec(directory: Path, name: str = "ltx-video-tiny-normalised") -> Path:
    mean, std = stats(1)
    path = directory / "child.toml"
    path.write_text(
        f'[model]\nname = "{name}"\nextends = {json.dumps(TINY_LTX.resolve().as_posix())}\n\n'
        f'[latent]\nnormalise = {{ kind = "mean_std", mean = {json.dumps(mean)}, std = {json.dumps(std)}, '
        f"scaling_factor = {SCALING} }}\n\n"
        # Wide enough that the encoder's output depends on the CPU thread count (d_model 32 does not), so a
        # cache that is only deterministic by luck of a tiny model fails the byte-for-byte comparisons.
        "[components.text_encoder.config]\nd_model = 512\nd_ff = 1024\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def plan_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """plan.json of a child of the tiny spec with a mean/std normaliser that is not the identity."""
    directory = tmp_path_factory.mktemp("plan")
    return compile_spec(load_spec(write_child_spec(directory))).save(directory)


@pytest.fixture(scope="module")
def tiny_plan_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """plan.json of the plain tiny spec: "another spec" for the refusal test."""
    return compile_spec(load_spec(TINY_LTX)).save(tmp_path_factory.mktemp("tiny-plan"))


# Frame-policy dataset: name -> (fps, stored size, frames) for constant-rate clips.
CFR_CLIPS = {"clip24.mp4": (24, (160, 96), 20), "clip25.mp4": (25, (96, 160), 30), "clip30.mp4": (30, (192, 128), 45)}
VFR_TIMES_MS = [int(t) for t in np.cumsum([0, *np.random.default_rng(5).integers(20, 61, 29)])]


@pytest.fixture(scope="module")
def clips_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("clips")
    for name, (fps, size, frames) in CFR_CLIPS.items():
        caption(write_video(data / name, frames=frames, fps=fps, size=size), f"a square at {fps} frames a second")
    vfr = write_video(
        data / "vfr.mp4", frames=len(VFR_TIMES_MS), fps=25, size=(144, 144), times=[t / 1000 for t in VFR_TIMES_MS]
    )
    caption(vfr, "a square at a variable rate")
    caption(write_image(data / "still.png", 7, (128, 128)), "a still square")
    return data


@pytest.fixture(scope="module")
def clips_cache(tmp_path_factory: pytest.TempPathFactory, plan_path: Path, clips_data: Path) -> Path:
    cache = tmp_path_factory.mktemp("clips-cache") / "cache"
    code, out, err = ltxc(*preprocess_args(plan_path, clips_data, cache, "--max-frames", str(MAX_FRAMES)))
    assert code == 0, out + err
    assert re.search(r"cached\s+5 now, 0 earlier, 5 in total", out), out
    return cache


# -- 1. oracle parity ---------------------------------------------------------------------------------


def oracle(plan_path: Path) -> tuple[str, LTXPipeline]:
    """(spec hash, diffusers' LTXPipeline) on a fresh build of the plan's components: the same seeded weights."""
    plan = compile_spec(load_spec(plan_path.parent / "child.toml"))
    components = plan.components()
    roles = ("scheduler", "vae", "text_encoder", "tokenizer", "transformer")
    return plan.hash, LTXPipeline(**{role: components[role] for role in roles})


def test_cached_latents_and_text_match_the_diffusers_oracle(
    plan_path: Path, clips_data: Path, clips_cache: Path
) -> None:
    spec_hash, pipe = oracle(plan_path)
    assert spec_hash == json.loads((clips_cache / "cache.json").read_text())["spec"]["hash"]
    vae = pipe.vae
    mean_list, std_list = stats(1)
    mean, std = torch.tensor(mean_list), torch.tensor(std_list)
    records = jsonl(clips_cache / "manifest.jsonl")
    assert {r["kind"] for r in records} == {"video", "image"}
    embeds_seen = []
    with one_thread(), torch.no_grad():
        for record in records:
            cached = load_file(clips_cache / record["file"])
            assert set(cached) == {"latents", "text_embeds", "text_mask"}
            width, height, _ = (int(v) for v in record["bucket"].split("x"))
            info = probe(clips_data / record["source"])
            frames = read_frames(info, record["source_frames"], (width, height))
            x = torch.from_numpy(frames).permute(3, 0, 1, 2).unsqueeze(0).float() / 127.5 - 1.0
            assert x.shape == (1, 3, record["frames"], height, width)
            z = vae.encode(x).latent_dist.mode()
            expected = LTXPipeline._normalize_latents(z, mean, std, SCALING)[0]
            assert cached["latents"].dtype == torch.float32
            assert list(cached["latents"].shape) == record["latent_shape"]
            torch.testing.assert_close(cached["latents"], expected, atol=1e-5, rtol=1e-5)
            assert torch.equal(cached["latents"], expected), record["source"]
            # the normaliser really acted (the tiny VAE's own statistics are zeros and ones)
            assert not torch.allclose(cached["latents"], z[0], atol=1e-3)

            prompt_embeds, prompt_mask = pipe._get_t5_prompt_embeds(
                record["caption"], max_sequence_length=128, device=torch.device("cpu")
            )
            assert cached["text_mask"].dtype == torch.bool
            assert torch.equal(cached["text_mask"], prompt_mask[0]), record["source"]
            assert torch.equal(cached["text_embeds"], prompt_embeds[0]), record["source"]
            embeds_seen.append(cached["text_embeds"])
    # captions differ, so embeddings must: an encoder that ignored its input would pass the checks above
    assert not torch.equal(embeds_seen[0], embeds_seen[1])


def test_null_conditioning_is_the_encoded_empty_prompt(plan_path: Path, clips_cache: Path) -> None:
    """Encoded once into the cache header's null.safetensors, exactly as every caption is encoded."""
    _, pipe = oracle(plan_path)
    null = load_file(clips_cache / "null.safetensors")
    assert json.loads((clips_cache / "cache.json").read_text())["null_conditioning"] == "null.safetensors"
    with one_thread(), torch.no_grad():
        null_embeds, null_mask = pipe._get_t5_prompt_embeds("", max_sequence_length=128, device=torch.device("cpu"))
    assert set(null) == {"text_embeds", "text_mask"}
    assert torch.equal(null["text_mask"], null_mask[0])
    assert int(null["text_mask"].sum()) == 1  # just the end-of-sequence token
    assert not torch.equal(null["text_embeds"], load_file(next((clips_cache / "samples").iterdir()))["text_embeds"])
    torch.testing.assert_close(null["text_embeds"], null_embeds[0], atol=1e-5, rtol=1e-5)
    # bit for bit, like the captions: the preprocessor encodes every text on one CPU thread
    assert torch.equal(null["text_embeds"], null_embeds[0])


# -- 2. the frame policy, as recorded -----------------------------------------------------------------


def nearest_bucket_by_aspect(width: int, height: int, buckets: Sequence[Sequence[int]]) -> tuple[int, int]:
    """The bucket closest in log aspect ratio; ties to the larger area (the issue's "nearest aspect bucket")."""
    best = min(buckets, key=lambda b: (abs(math.log((b[0] / b[1]) / (width / height))), -b[0] * b[1]))
    return int(best[0]), int(best[1])


def expected_selection(name: str) -> tuple[list[Fraction], list[int], float]:
    """(source frame times, the nearest source frame for each output frame, source fps) for a clip; exact."""
    if name == "vfr.mp4":
        times = [Fraction(ms, 1000) for ms in VFR_TIMES_MS]
        steps = [b - a for a, b in itertools.pairwise(times)]
        end = times[-1] + statistics.median_low(steps)  # the last frame shows for one (median) interval
    else:
        fps, _, frames = CFR_CLIPS[name]
        times = [Fraction(j, fps) for j in range(frames)]
        end = Fraction(frames, fps)
    available = sum(1 for k in range(10_000) if Fraction(k, TARGET_FPS) < end)
    count = largest_valid(min(available, MAX_FRAMES))
    return times, [nearest(times, Fraction(k, TARGET_FPS)) for k in range(count)], float(len(times) / end)


def test_manifest_records_frames_times_fps_and_geometry(clips_data: Path, clips_cache: Path) -> None:
    header = json.loads((clips_cache / "cache.json").read_text())
    assert header["settings"]["fps"] == TARGET_FPS
    resolutions = header["settings"]["resolutions"]
    records = jsonl(clips_cache / "manifest.jsonl")
    assert [r["source"] for r in records] == sorted(["clip24.mp4", "clip25.mp4", "clip30.mp4", "vfr.mp4", "still.png"])
    counts = set()
    for record in records:
        name = record["source"]
        frames = record["frames"]
        assert valid_count(frames), record
        width, height = nearest_bucket_by_aspect(*record["source_size"], resolutions)
        assert width % 32 == 0 and height % 32 == 0
        assert record["bucket"] == f"{width}x{height}x{frames}"
        assert record["pixel_shape"] == [frames, height, width]
        assert record["latent_shape"] == [CHANNELS, (frames - 1) // 8 + 1, height // 32, width // 32]
        assert list(load_file(clips_cache / record["file"])["latents"].shape) == record["latent_shape"]
        assert len(record["frame_times"]) == len(record["source_frames"]) == len(record["source_times"]) == frames
        assert record["padded"] == 0
        if name == "still.png":
            assert record["kind"] == "image" and frames == 1 and record["source_frames"] == [0]
            assert record["frame_times"] == [0.0]
            continue
        counts.add(frames)
        times, expected, source_fps = expected_selection(name)
        assert record["fps"] == TARGET_FPS
        assert record["frames"] == len(expected), name
        assert record["frame_times"] == pytest.approx([k / TARGET_FPS for k in range(frames)], abs=1e-6)
        assert record["source_fps"] == pytest.approx(source_fps, rel=1e-4), name
        assert record["source_frames"] == expected, name
        assert record["source_times"] == pytest.approx([float(times[j]) for j in expected], abs=1e-6)
        assert record["repeated"] == len(expected) - len(set(expected))
        # the pixels say which source frames were decoded
        decoded = read_frames(probe(clips_data / name), record["source_frames"], (width, height))
        assert [recover_index(frame) for frame in decoded] == expected, name
    assert record_by(records, "clip24.mp4")["repeated"] > 0  # 24 -> 25 fps keeps real time by repeating
    assert record_by(records, "clip30.mp4")["repeated"] == 0  # 30 -> 25 fps skips source frames instead
    assert len(counts) >= 3, counts  # the clips were long enough for different counts


def record_by(records: Sequence[dict[str, Any]], source: str) -> dict[str, Any]:
    return by_source(records)[source]


# -- 3. bad input ----------------------------------------------------------------------------------------

# source -> a substring its rejection reason must contain
BAD_INPUTS = {
    "empty.mp4": "empty file",
    "random.mp4": "cannot open",
    "audio.mp4": "audio only",
    "truncated.mp4": "truncated",
    "notes.pdf": "not a supported media file",
    "no_caption.mp4": "missing caption",
    "blank_caption.mp4": "empty caption",
    "latin1_caption.mp4": "not UTF-8",
    "short.mp4": "too short",
}
GOOD_INPUTS = ["good_a.mp4", "good_b.mp4", "photo.jpg"]
CAPTION_PROBLEMS = ["no_caption.mp4", "blank_caption.mp4", "latin1_caption.mp4"]


def write_bad_dataset(data: Path) -> Path:
    data.mkdir(parents=True, exist_ok=True)
    caption(write_video(data / "good_a.mp4", frames=12, fps=25, size=(160, 96)), "a good clip")
    caption(write_video(data / "good_b.mp4", frames=20, fps=30, size=(96, 160)), "another good clip")
    caption(write_image(data / "photo.jpg", 3, (120, 120)), "a good photo")
    long_clip = write_video(data / ".long.mp4", frames=50, fps=25)  # hidden: never a sample itself
    (data / "empty.mp4").write_bytes(b"")
    write_corrupt(data / "random.mp4", seed=3)
    write_audio_only(data / "audio.mp4")
    write_truncated(long_clip, data / "truncated.mp4")
    (data / "notes.pdf").write_bytes(b"%PDF-1.4\n%not a video\n")
    for name in ("empty", "random", "audio", "truncated"):
        caption(data / f"{name}.mp4", f"the {name} file")
    write_video(data / "no_caption.mp4", frames=12, fps=25)
    (write_video(data / "blank_caption.mp4", frames=12, fps=25)).with_suffix(".txt").write_text("  \n\n")
    (write_video(data / "latin1_caption.mp4", frames=12, fps=25)).with_suffix(".txt").write_bytes(b"caf\xe9 au lait")
    caption(write_video(data / "short.mp4", frames=5, fps=25), "too short for nine frames")
    return data


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bad_dataset(tmp_path_factory.mktemp("bad") / "data")


def test_bad_inputs_are_rejected_with_reasons_and_good_ones_cached(
    tmp_path: Path, plan_path: Path, bad_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    code, out, err = run_cli(capsys, *preprocess_args(plan_path, bad_data, cache))
    assert code == 0, out + err
    rejected = by_source(jsonl(cache / "rejected.jsonl"))
    assert sorted(rejected) == sorted(BAD_INPUTS)
    for source, reason in BAD_INPUTS.items():
        assert reason in rejected[source]["reason"], (source, rejected[source])
    manifest = jsonl(cache / "manifest.jsonl")
    assert sorted(r["source"] for r in manifest) == sorted(GOOD_INPUTS)
    assert all((cache / r["file"]).is_file() for r in manifest)
    assert sorted(p.name for p in (cache / "samples").iterdir()) == sorted(f"{r['id']}.safetensors" for r in manifest)
    assert re.search(rf"rejected\s+{len(BAD_INPUTS)}\b", out), out
    assert re.search(r"cached\s+3 now, 0 earlier, 3 in total", out), out
    assert "too short" in out and "truncated" in out  # the summary breaks rejections down by reason
    assert_clean(cache)

    # --strict: the same run (resumed: nothing new to encode) now fails, and says why
    code, out, err = run_cli(capsys, *preprocess_args(plan_path, bad_data, cache, "--strict"))
    assert code == 1, out + err
    assert "--strict" in out
    assert re.search(r"cached\s+0 now, 3 earlier, 3 in total", out), out
    assert sorted(by_source(jsonl(cache / "rejected.jsonl"))) == sorted(BAD_INPUTS)  # still listed on a rerun


def test_missing_caption_filename_keeps_uncaptioned_clips(
    tmp_path: Path, plan_path: Path, bad_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    code, out, err = run_cli(capsys, *preprocess_args(plan_path, bad_data, cache, "--missing-caption", "filename"))
    assert code == 0, out + err
    manifest = by_source(jsonl(cache / "manifest.jsonl"))
    assert sorted(manifest) == sorted(GOOD_INPUTS + CAPTION_PROBLEMS)
    assert manifest["no_caption.mp4"]["caption_source"] == "filename"
    assert manifest["no_caption.mp4"]["caption"] == "no caption"
    for source in CAPTION_PROBLEMS:
        assert manifest[source]["caption_source"] == "filename"
    assert manifest["good_a.mp4"]["caption_source"] == "sidecar"
    assert manifest["good_a.mp4"]["caption"] == "a good clip"
    rejected = by_source(jsonl(cache / "rejected.jsonl"))
    assert sorted(rejected) == sorted(set(BAD_INPUTS) - set(CAPTION_PROBLEMS))
    assert json.loads((cache / "cache.json").read_text())["settings"]["missing_caption"] == "filename"


def test_frames_policy_pad_keeps_a_short_clip_and_says_so(
    tmp_path: Path, plan_path: Path, bad_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    code, out, err = run_cli(capsys, *preprocess_args(plan_path, bad_data, cache, "--frames-policy", "pad"))
    assert code == 0, out + err
    manifest = by_source(jsonl(cache / "manifest.jsonl"))
    assert "short.mp4" in manifest and "short.mp4" not in by_source(jsonl(cache / "rejected.jsonl"))
    short = manifest["short.mp4"]
    assert short["frames"] == 9 and valid_count(short["frames"])
    assert short["padded"] == 4  # 5 real frames at 25 fps, the last repeated 4 times
    assert short["source_frames"] == [0, 1, 2, 3, 4, 4, 4, 4, 4]
    assert short["frame_times"] == pytest.approx([k / 25 for k in range(9)], abs=1e-6)
    assert short["latent_shape"][1] == 2
    assert all(r["padded"] == 0 for s, r in manifest.items() if s != "short.mp4")
    assert "padded" in out
    assert json.loads((cache / "cache.json").read_text())["settings"]["frames_policy"] == "pad"


# -- 4. resume after a kill ------------------------------------------------------------------------------

RESUME_CLIPS = 24
RESUME_ARGS = ("--resolution", "256x256")


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def valid_journal_lines(cache: Path) -> list[dict[str, Any]]:
    out = []
    for line in (cache / "journal" / "samples-rank0.jsonl").read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if (cache / record["file"]).is_file():
            out.append(record)
    return out


def kill_mid_run(plan: Path, data: Path, cache: Path, log: Path) -> None:
    """Start preprocessing in a subprocess and SIGKILL it once >= 3 samples are journaled."""
    journal = cache / "journal" / "samples-rank0.jsonl"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ltxc", *preprocess_args(plan, data, cache, *RESUME_ARGS)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=str(log.parent),
            env=subprocess_env(),
        )
        deadline = time.monotonic() + 300
        caught = False
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if journal.exists() and journal.read_bytes().count(b"\n") >= 3:
                    proc.send_signal(signal.SIGKILL)
                    caught = True
                    break
                time.sleep(0.002)
        finally:
            if proc.poll() is None and not caught:
                proc.kill()
            proc.wait()
    assert caught and proc.returncode == -signal.SIGKILL, f"exit {proc.returncode}: {log.read_text()[-2000:]}"


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory: pytest.TempPathFactory, plan_path: Path) -> tuple[Path, Path, Path]:
    """(data, a cache whose preprocess was SIGKILLed mid-run, a cache from an uninterrupted run)."""
    root = tmp_path_factory.mktemp("resume")
    data = root / "data"
    data.mkdir()
    for i in range(RESUME_CLIPS):
        clip = write_video(data / f"clip_{i:02d}.mp4", frames=50, fps=25, size=(320, 240))
        caption(clip, f"clip number {i}")
    caption(write_image(data / "still.png", 11, (320, 240)), "a still")
    write_corrupt(data / "broken.mp4")  # a rejection too, so rejected.jsonl is compared as well
    caption(data / "broken.mp4", "broken")

    reference = root / "reference"
    # the uninterrupted run, in this process (another thread) while the subprocess starts: a core each
    with ThreadPoolExecutor(1) as pool:
        uninterrupted = pool.submit(ltxc, *preprocess_args(plan_path, data, reference, *RESUME_ARGS))
        for attempt in range(3):  # the kill must land mid-run; if the run won (a stalled poller), try again
            killed = root / f"killed-{attempt}"
            try:
                kill_mid_run(plan_path, data, killed, root / f"log-{attempt}.txt")
                break
            except AssertionError:
                if attempt == 2:
                    raise
        code, out, err = uninterrupted.result()
    assert code == 0, out + err
    assert len(jsonl(reference / "manifest.jsonl")) == RESUME_CLIPS + 1
    return data, killed, reference


def assert_incomplete(cache: Path) -> int:
    """The killed cache is partial; return how many samples it had finished."""
    done = valid_journal_lines(cache)
    assert 3 <= len(done) < RESUME_CLIPS + 1
    assert not (cache / "manifest.jsonl").exists()
    assert (cache / "cache.json").is_file()
    assert len(list((cache / "samples").glob("*.safetensors"))) < RESUME_CLIPS + 1
    return len(done)


@pytest.mark.slow  # a subprocess, SIGKILLed
def test_rerun_after_kill_gives_the_uninterrupted_cache(
    tmp_path: Path, plan_path: Path, killed_run: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data, killed, reference = killed_run
    cache = tmp_path / "cache"
    shutil.copytree(killed, cache)
    earlier = assert_incomplete(cache)
    code, out, err = run_cli(capsys, *preprocess_args(plan_path, data, cache, *RESUME_ARGS))
    assert code == 0, out + err
    total = RESUME_CLIPS + 1
    assert re.search(rf"cached\s+{total - earlier} now, {earlier} earlier, {total} in total", out), out
    assert_clean(cache)
    assert_same_tree(cache, reference)


@pytest.mark.slow  # the killed subprocess's cache
def test_rerun_survives_a_torn_journal_line_and_a_leftover_temp_file(
    tmp_path: Path, plan_path: Path, killed_run: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """What a kill mid-append or mid-write leaves: half a JSON line with no newline, a `*.tmp` sample."""
    data, killed, reference = killed_run
    cache = tmp_path / "cache"
    shutil.copytree(killed, cache)
    earlier = assert_incomplete(cache)
    with open(cache / "journal" / "samples-rank0.jsonl", "ab") as journal:
        journal.write(b'{"bucket":"256x256x9","caption":"clip num')
    (cache / "samples" / ".clip_23-0123456789.safetensors.abcd1234.tmp").write_bytes(b"\0" * 100)
    code, out, err = run_cli(capsys, *preprocess_args(plan_path, data, cache, *RESUME_ARGS))
    assert code == 0, out + err
    total = RESUME_CLIPS + 1
    assert re.search(rf"cached\s+{total - earlier} now, {earlier} earlier, {total} in total", out), out
    assert_clean(cache)
    assert_same_tree(cache, reference)


# -- 5. workers ------------------------------------------------------------------------------------------


@pytest.mark.slow  # worker processes
def test_two_workers_give_the_same_cache_as_one(
    tmp_path: Path, plan_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    make_sample_dataset(data, clips=6, images=2, seed=3)
    write_corrupt(data / "broken.mp4")
    caption(data / "broken.mp4", "broken")
    caption(write_video(data / "short.mp4", frames=4, fps=25), "short")
    one, two = tmp_path / "one", tmp_path / "two"
    code, out, err = run_cli(capsys, *preprocess_args(plan_path, data, one, "--workers", "1"))
    assert code == 0, out + err
    code, out, err = run_cli(capsys, *preprocess_args(plan_path, data, two, "--workers", "2"))
    assert code == 0, out + err
    assert len(jsonl(one / "manifest.jsonl")) == 8
    assert len(jsonl(one / "rejected.jsonl")) == 2
    assert_clean(two)
    assert_same_tree(one, two)


# -- 6. refusals -----------------------------------------------------------------------------------------


def test_a_cache_made_differently_is_refused_unless_overwritten(
    tmp_path: Path, plan_path: Path, tiny_plan_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    caption(write_video(data / "clip.mp4", frames=30, fps=30, size=(160, 96)), "a clip")
    caption(write_image(data / "still.png", 2, (96, 96)), "a still")
    cache = tmp_path / "cache"
    code, out, err = run_cli(capsys, *preprocess_args(plan_path, data, cache))
    assert code == 0, out + err
    before = tree(cache)

    code, out, err = run_cli(capsys, *preprocess_args(plan_path, data, cache, "--fps", "24"))
    assert code == 2
    assert "fps" in err and "--overwrite" in err, err
    assert "24" in err and "25" in err, err
    assert tree(cache) == before  # refused before touching anything

    code, out, err = run_cli(capsys, *preprocess_args(tiny_plan_path, data, cache))
    assert code == 2
    assert "spec" in err and "hash" in err and "--overwrite" in err, err
    assert tree(cache) == before

    code, out, err = run_cli(capsys, *preprocess_args(plan_path, data, cache, "--fps", "24", "--overwrite"))
    assert code == 0, out + err
    assert re.search(r"cached\s+2 now, 0 earlier, 2 in total", out), out  # rebuilt, not resumed
    assert json.loads((cache / "cache.json").read_text())["settings"]["fps"] == 24
    clip = by_source(jsonl(cache / "manifest.jsonl"))["clip.mp4"]
    assert clip["fps"] == 24
    assert clip["frame_times"] == pytest.approx([k / 24 for k in range(clip["frames"])], abs=1e-6)
    assert_clean(cache)


def test_resolution_off_the_32_pixel_rule_is_refused(
    tmp_path: Path, plan_path: Path, bad_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    code, _, err = run_cli(capsys, *preprocess_args(plan_path, bad_data, cache, "--resolution", "100x64"))
    assert code == 2
    assert "multiples of 32" in err and "100" in err, err
    assert "96 or 128" in err, err  # and says what would fit
    assert not cache.exists() or not any(cache.iterdir())


def test_missing_data_folder_is_refused(tmp_path: Path, plan_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, *preprocess_args(plan_path, tmp_path / "nowhere", tmp_path / "cache"))
    assert code == 2
    assert "does not exist" in err and "nowhere" in err, err
    assert "Traceback" not in err


# -- 7. distributed ---------------------------------------------------------------------------------------


TWO_RANKS = "preprocess"  # the shared torchrun launch's group (tests/distributed_worker.py)


@shared_group(TWO_RANKS)
def prepare_two_ranks(root: Path) -> Prepared:
    """The child spec's plan, 5 clips, 2 images and a broken file; `ltxc run preprocess` on 2 ranks as a scenario."""
    plan = compile_spec(load_spec(write_child_spec(root))).save(root)
    data = root / "data"
    make_sample_dataset(data, clips=5, images=2, seed=4)
    write_corrupt(data / "broken.mp4")
    caption(data / "broken.mp4", "broken")
    scenario = Scenario("ranks", tuple(preprocess_args(plan, data, root / "ranks")), cwd=root)
    return Prepared({"plan": plan, "data": data, "ranks": root / "ranks"}, (scenario,))


@pytest.mark.slow
@pytest.mark.shared_torchrun(TWO_RANKS)
def test_torchrun_two_ranks_give_the_same_cache_as_one_process(
    tmp_path: Path, shared_torchrun: SharedTorchrun, capsys: pytest.CaptureFixture[str]
) -> None:
    group = shared_torchrun.group(TWO_RANKS)
    plan, data, ranks = group.workspace["plan"], group.workspace["data"], group.workspace["ranks"]
    single = tmp_path / "single"
    code, out, err = run_cli(capsys, *preprocess_args(plan, data, single))
    assert code == 0, out + err
    done = group["ranks"]  # `ltxc run preprocess` of the same plan and data on 2 ranks
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(jsonl(single / "manifest.jsonl")) == 7
    assert len(jsonl(single / "rejected.jsonl")) == 1
    assert_clean(ranks)
    assert_same_tree(single, ranks)
    # rank 0 prints the summary for the whole run, not just its own share of the samples
    assert re.search(r"cached\s+7 now, 0 earlier, 7 in total", done.stdout), done.stdout
