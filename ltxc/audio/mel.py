"""The log-mel spectrogram an audio VAE takes: log(clamp(filterbank @ |STFT|^power, floor)), [B, C, T, n_mels].

The STFT is `torch.stft`; the filterbank is `transformers.audio_utils.mel_filter_bank` (the Slaney or HTK
scale and norm as the spec says; the same triangles as torchaudio's `melscale_fbanks` and librosa's `mel`).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from transformers.audio_utils import mel_filter_bank

from ltxc.spec.audio_types import MelSpec


@functools.lru_cache(maxsize=8)
def _filters(mel: MelSpec, sample_rate: int) -> np.ndarray:
    return mel_filter_bank(
        num_frequency_bins=mel.n_fft // 2 + 1,
        num_mel_filters=mel.n_mels,
        min_frequency=mel.f_min,
        max_frequency=mel.f_max,
        sampling_rate=sample_rate,
        norm=None if mel.norm == "none" else mel.norm,
        mel_scale=mel.mel_scale,
    )


def mel_filters(mel: MelSpec, sample_rate: int) -> torch.Tensor:
    """The filterbank [n_fft // 2 + 1, n_mels], float64."""
    return torch.from_numpy(_filters(mel, sample_rate).copy())


def log_mel(waveform: torch.Tensor, mel: MelSpec, sample_rate: int) -> torch.Tensor:
    """float waveform [B, C, S] -> log-mel [B, C, T, n_mels] (T = S // hop + 1 when centred), in float32 (in
    float64 for a float64 waveform)."""
    batch, channels, samples = waveform.shape
    dtype = torch.float64 if waveform.dtype == torch.float64 else torch.float32
    flat = waveform.reshape(batch * channels, samples).to(dtype)
    win_length = mel.win_length or mel.n_fft
    window = torch.hann_window(win_length, device=flat.device, dtype=flat.dtype)
    stft = torch.stft(
        flat,
        n_fft=mel.n_fft,
        hop_length=mel.hop_length,
        win_length=win_length,
        window=window,
        center=mel.center,
        pad_mode=mel.pad_mode,
        return_complex=True,
    )
    magnitude = stft.abs().pow(mel.power)  # [B * C, n_fft // 2 + 1, T]
    energies = torch.matmul(magnitude.transpose(-1, -2), mel_filters(mel, sample_rate).to(flat.device, dtype))
    out = torch.log(torch.clamp(energies, min=mel.log_floor))  # [B * C, T, n_mels]
    return out.reshape(batch, channels, out.shape[-2], out.shape[-1])
