"""A sample's sound into the cache: `audio_latents` [L, C * M] and `audio_mask` [] beside its video latents,
when the spec declares an audio source (docs/audio.md). What was taken, and every decision, goes into the
record's `audio` entry."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ltxc.audio import latent_count, to_channels, window_samples
from ltxc.data.discover import Sample
from ltxc.media.audio import read_audio
from ltxc.media.frames import FrameSelection
from ltxc.media.probe import MediaInfo
from ltxc.preprocess.outcome import Rejection, round_time
from ltxc.preprocess.settings import PreprocessSettings
from ltxc.processor import Processor

AUDIO_TENSOR = "audio_latents"
AUDIO_MASK = "audio_mask"


def cache_audio(
    sample: Sample,
    info: MediaInfo,
    selection: FrameSelection,
    settings: PreprocessSettings,
    processor: Processor,
    seed: int,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The sample's audio tensors and its record entries ({} and {} when the spec declares no audio source).

    The window is the frames' own: from the selection's start, frames / fps seconds (padded frames included).
    A clip without sound follows `settings.missing_audio`; a broken audio stream raises MediaError."""
    encoder = processor.audio
    if encoder is None:
        return {}, {}
    source = encoder.source
    count = len(selection.indices)
    rate = source.waveform.sample_rate
    duration = count / settings.fps
    length = latent_count(count, settings.fps, source)
    window = None if info.kind == "image" else read_audio(sample.path, selection.start, duration, rate)
    entry: dict[str, Any] = {
        "window": [round_time(selection.start), round_time(selection.start + duration)],
        "samples": window_samples(count, settings.fps, rate),
    }
    if window is None:
        return _missing(encoder, settings, entry, length, seed)
    waveform, mixed = to_channels(window.samples, window.names, source.waveform)
    latents, change = encoder.encode(waveform, length, seed)
    entry.update(source=window.describe(), mixed=mixed, length_change=change, missing=None)
    return _tensors(latents, 1.0), {"audio": entry, "audio_shape": list(latents.shape)}


def _missing(
    encoder: Any, settings: PreprocessSettings, entry: dict[str, Any], length: int | None, seed: int
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """No sound track: reject, encode silence, or cache zeros with the mask off."""
    policy = settings.missing_audio or "mask"  # settings built without a plan: the default
    if policy == "drop":
        raise Rejection("no sound track (--missing-audio drop; silence or mask keep such clips)")
    mask, change = (0.0 if policy == "mask" else 1.0), 0
    if policy == "mask" and length is not None:  # the length is known: nothing to encode
        latents = encoder.zeros(length)
    else:  # silence, or a mask whose length only the encoder knows
        silence = np.zeros((encoder.source.waveform.channels, entry["samples"]), dtype=np.float32)
        latents, change = encoder.encode(silence, length, seed)
        latents = encoder.zeros(latents.shape[0]) if policy == "mask" else latents
    entry.update(source=None, mixed=None, length_change=change, missing=policy)
    return _tensors(latents, mask), {"audio": entry, "audio_shape": list(latents.shape)}


def _tensors(latents: torch.Tensor, mask: float) -> dict[str, torch.Tensor]:
    return {AUDIO_TENSOR: latents.to(torch.float32), AUDIO_MASK: torch.tensor(mask, dtype=torch.float32)}
