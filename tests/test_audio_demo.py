"""The README's audio-video demo (issue 14, item 6): 4 clips, each with its own caption and its own tone; the tiny
LTX-2.3 geometry trained jointly (`train.audio = true`) generates, from a training caption, audio latents closest to
that caption's clip; the untrained weights do not.

Covers:
- the sample set behind it: `make_sample_dataset(..., sound=True)` gives every clip an AAC track whose dominant
  frequency (FFT of the decoded sound, as preprocessing reads it) is its colour's `TONES` entry, so with
  `distinct=True` the 4 captions name 4 tones; without `sound`, and for `write_video(audio=True)` without `tone`,
  the files are what they were (no track; 440 Hz), and `sound` changes no picture;
- the demo (slow: `tools/audio_demo.py`'s functions, shortened): train the demo's spec jointly, sample each
  caption, rank the 4 clips by audio-latent distance: the caption's own clip is first for every caption, and the
  untrained weights give no margin.

Run: `pytest -q tests/test_audio_demo.py` (`-m "not slow"` skips the training).
"""

from __future__ import annotations

import sys
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import isolated_process_group

from ltxc.commands.train import SAMPLE_CLIPS, SAMPLE_SIZE
from ltxc.media.audio import read_audio
from ltxc.media.synthetic import COLORS, TONES, make_sample_dataset, write_video

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import audio_demo

RATE = 16000


def dominant_hz(path: Path, seconds: float = 0.5) -> float:
    """The strongest frequency of the first `seconds` of the clip's sound (1 Hz bins over 1 s of padding)."""
    window = read_audio(path, 0.0, seconds, RATE)
    assert window is not None, f"{path.name} has no sound"
    mono = window.samples.mean(axis=0)
    spectrum = np.abs(np.fft.rfft(mono * np.hanning(mono.size), n=RATE))  # zero-padded to 1 s: 1 Hz bins
    return float(np.argmax(spectrum))


def caption_color(path: Path) -> str:
    words = path.with_suffix(".txt").read_text(encoding="utf-8").split()
    return words[1]  # "a red square ..." / "an orange square ..."


def frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_sample_clips_carry_their_colours_tone(tmp_path: Path) -> None:
    assert len(set(TONES.values())) == len(TONES) and set(TONES) == set(COLORS)
    sound = make_sample_dataset(tmp_path / "sound", clips=SAMPLE_CLIPS, images=0, seed=0, distinct=True,
                                size=SAMPLE_SIZE, sound=True)  # fmt: skip
    found = {caption_color(path): dominant_hz(path) for path in sound}
    assert len(found) == SAMPLE_CLIPS
    for color, hz in found.items():
        assert abs(hz - TONES[color]) <= 2, f"{color}: dominant {hz} Hz, its tone is {TONES[color]} Hz"

    silent = make_sample_dataset(tmp_path / "silent", clips=SAMPLE_CLIPS, images=0, seed=0, distinct=True,
                                 size=SAMPLE_SIZE)  # fmt: skip
    for with_sound, without in zip(sound, silent, strict=True):
        assert with_sound.with_suffix(".txt").read_text() == without.with_suffix(".txt").read_text()
        assert read_audio(without, 0.0, 0.1, RATE) is None  # the default writes no track, as before
        assert all(np.array_equal(a, b) for a, b in zip(frames(with_sound), frames(without), strict=True))

    default = write_video(tmp_path / "default.mp4", frames=12, fps=24, audio=True)
    assert abs(dominant_hz(default) - 440) <= 2  # an existing call's tone is unchanged


@pytest.mark.slow
def test_trained_caption_ranks_its_own_clips_audio_first(tmp_path: Path) -> None:
    with isolated_process_group():  # the training runs in this process (the tool's own path, without cold imports)
        rows = audio_demo.demo(tmp_path, seed=0, plain=False, extra=[], decode=False, in_process=True)
    print(audio_demo.format_rows(rows))
    trained = [row for row in rows if row["weights"] == "trained"]
    untrained = [row for row in rows if row["weights"] == "untrained"]
    assert len(trained) == len(untrained) == SAMPLE_CLIPS
    for row in trained:
        assert row["rank"] == 1, f"{row['caption']!r}: its clip's audio ranks {row['rank']}"
        assert row["ratio"] > 1.1, row
    assert max(float(row["ratio"]) for row in untrained) < 1.05  # type: ignore[arg-type]
