"""A waveform -> a stream's cached latents: log-mel, the audio VAE's posterior, the length rule, the stream's
packing and the normaliser on the packed tokens, all as `[streams.<name>.source]` says."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ltxc.audio.mel import log_mel
from ltxc.normalise import MeanStd
from ltxc.plan import CompiledStream, Plan
from ltxc.spec.audio_types import AudioSourceSpec
from ltxc.spec.types import MeanStdSpec


def audio_stream(plan: Plan) -> tuple[str, AudioSourceSpec] | None:
    """The stream whose source is a clip's sound (its name and source), or None when the spec declares none."""
    for name, stream in plan.streams.items():
        if stream.source is not None:
            return name, stream.source
    return None


def window_samples(frames: int, fps: float, sample_rate: int) -> int:
    """Samples in the time window of `frames` frames at `fps`: round(frames / fps * rate)."""
    return round(frames / fps * sample_rate)


def latent_count(frames: int, fps: float, source: AudioSourceSpec) -> int | None:
    """Latents a clip of `frames` at `fps` gets under the length rule; None for "encoder" (whatever it returns)."""
    if source.length == "encoder":
        return None
    return round(frames / fps * source.latents_per_second)


def fit_length(latents: torch.Tensor, length: int | None) -> tuple[torch.Tensor, int]:
    """[B, C, L', M] trimmed (or zero-padded) on L to `length`; returns it and the change (+ padded, - trimmed)."""
    if length is None or latents.shape[2] == length:
        return latents, 0
    if latents.shape[2] > length:
        return latents[:, :, :length], length - latents.shape[2]
    pad = torch.zeros(*latents.shape[:2], length - latents.shape[2], latents.shape[3], dtype=latents.dtype)
    return torch.cat([latents, pad.to(latents.device)], dim=2), length - latents.shape[2]


class AudioEncoder:
    """Encodes a waveform exactly as the spec's audio source says; the VAE is built on first use."""

    def __init__(self, plan: Plan, components: Mapping[str, Any], device: str | torch.device = "cpu") -> None:
        found = audio_stream(plan)
        if found is None:
            raise ValueError("the spec declares no [streams.<name>.source]")
        self.name, self.source = found
        self.stream: CompiledStream = plan.streams[self.name]
        self.plan, self.components, self.device = plan, components, torch.device(device)
        self._vae: Any = None
        self._normaliser: MeanStd | None = None

    @property
    def vae(self) -> Any:
        """The audio VAE, on the encoder's device."""
        if self._vae is None:
            self._vae = self.components[self.source.vae].to(self.device)
        return self._vae

    @property
    def normaliser(self) -> MeanStd:
        """(z - mean) * scaling_factor / std over the packed features."""
        if self._normaliser is None:
            norm = self.source.normalise
            spec = MeanStdSpec(kind="mean_std", mean=norm.mean, std=norm.std, scaling_factor=norm.scaling_factor)
            built = self.plan.normaliser(self.components, spec)
            assert isinstance(built, MeanStd)
            self._normaliser = built
        return self._normaliser

    def release(self) -> None:
        """Drop the VAE (a later encode builds it again)."""
        self._vae = None
        release = getattr(self.components, "release", None)
        if release is not None:
            release(self.source.vae)

    def log_mel(self, waveform: np.ndarray) -> torch.Tensor:
        """float32 [channels, S] -> [1, channels, T, n_mels] on the device, float32."""
        x = torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32))[None].to(self.device)
        return log_mel(x, self.source.mel, self.source.waveform.sample_rate)

    @torch.no_grad()
    def encode(self, waveform: np.ndarray, length: int | None, seed: int = 0) -> tuple[torch.Tensor, int]:
        """float32 [channels, S] -> (packed normalised float32 latents [L, C * M] on the CPU, the length change)."""
        posterior = self.vae.encode(self.log_mel(waveform).to(self.vae.dtype)).latent_dist
        if self.source.encode == "mode":
            latents = posterior.mode()
        else:
            latents = posterior.sample(generator=torch.Generator(device=self.device).manual_seed(seed))
        latents, change = fit_length(latents.to(torch.float32), length)
        packed = self.stream.pack({"x": latents})  # [1, L, C * M]
        normalised = self.normaliser.normalise(packed.transpose(1, 2)).transpose(1, 2)  # per packed feature
        return normalised[0].contiguous().cpu(), change

    def zeros(self, length: int) -> torch.Tensor:
        """The masked stand-in: zeros [length, C * M], float32."""
        channels, bins = self.source.latent_shape
        return torch.zeros(length, channels * bins, dtype=torch.float32)
