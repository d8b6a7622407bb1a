"""A waveform -> a picture of it: a log-magnitude mel spectrogram as uint8 RGB, for contact sheets and TensorBoard.

For people, not models: the numbers here (a ~40 ms window, 128 mel bands up to half the rate, an 80 dB range) are
display choices, not any model's front end (that one is the spec's `[streams.<name>.source.mel]`, `ltxc/audio/mel`).
The STFT is `torch.stft`; the mel filterbank is `transformers.audio_utils.mel_filter_bank` (Slaney scale).
Time runs left to right, low frequencies at the bottom; the loudest cell is the brightest colour and anything 80 dB
or more below it is black, so a quiet clip is not a black image (digital silence is).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor
from transformers.audio_utils import mel_filter_bank

BINS = 128  # mel bands: the image's natural height
RANGE_DB = 80.0  # shown below the loudest cell; quieter is black
WINDOW_SECONDS = 0.04  # ~40 ms: the STFT size is the power of two nearest this many samples
_FLOOR = 1e-10  # magnitude floor before the log
# the loudest cell is taken to be at least this loud, so digital silence is black, not the brightest colour
_QUIETEST_REFERENCE_DB = -100.0
# A dark-to-bright colour map (black, indigo, magenta, orange, pale yellow): positions in [0, 1] and RGB levels.
_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_COLOURS = np.array([[0, 0, 4], [80, 18, 123], [182, 54, 121], [251, 136, 97], [252, 253, 191]], dtype=np.float64)


def spectrogram_image(
    waveform: Tensor | np.ndarray, sample_rate: int, size: tuple[int, int] | None = None, bins: int = BINS
) -> np.ndarray:
    """A waveform [channels, samples] or [samples] -> its log-magnitude mel spectrogram, uint8 RGB [H, W, 3].

    Channels are averaged. Natural size: H = `bins`, W = the STFT frames (samples // hop + 1, hop a quarter of the
    window); `size` (height, width) resizes it (bilinear, in decibels, before the colours).
    """
    decibels = spectrogram_db(waveform, sample_rate, bins)
    if size is not None:
        height, width = size
        if height < 1 or width < 1:
            raise ValueError(f"a spectrogram image needs a positive size, got {height}x{width}")
        resized = torch.nn.functional.interpolate(
            torch.from_numpy(decibels)[None, None], size=(height, width), mode="bilinear", align_corners=False
        )
        decibels = resized[0, 0].numpy()
    return colour(np.flipud(decibels))  # low frequencies at the bottom


def spectrogram_db(waveform: Tensor | np.ndarray, sample_rate: int, bins: int = BINS) -> np.ndarray:
    """The mono mel spectrogram in decibels relative to its loudest cell (at least -100 dB), clipped to [-80, 0]:
    float32 [bins, T]."""
    mono = _mono(waveform)
    if sample_rate <= 0:
        raise ValueError(f"a spectrogram needs a positive sample_rate, got {sample_rate}")
    n_fft = window_size(sample_rate)
    # constant padding: a waveform shorter than half a window still gives a frame (reflect padding would refuse it)
    stft = torch.stft(mono, n_fft=n_fft, hop_length=n_fft // 4, window=torch.hann_window(n_fft, dtype=torch.float64),
                      center=True, pad_mode="constant", return_complex=True)  # fmt: skip
    mel = torch.from_numpy(_filters(n_fft, bins, sample_rate)).T @ stft.abs()  # [bins, T]
    decibels = 20 * torch.log10(mel.clamp(min=_FLOOR))
    reference = max(float(decibels.max()), _QUIETEST_REFERENCE_DB)
    relative = (decibels - reference).clamp(min=-RANGE_DB)
    return relative.float().numpy()


def window_size(sample_rate: int) -> int:
    """The STFT size: the power of two nearest ~40 ms of samples (2048 at 48 kHz, 512 at 16 kHz)."""
    return 2 ** max(4, round(math.log2(sample_rate * WINDOW_SECONDS)))


def colour(decibels: np.ndarray) -> np.ndarray:
    """Decibels in [-80, 0] -> uint8 RGB [..., 3] by the dark-to-bright colour map."""
    position = np.clip(np.asarray(decibels, dtype=np.float64) / RANGE_DB + 1.0, 0.0, 1.0)
    channels = [np.interp(position, _STOPS, _COLOURS[:, c]) for c in range(3)]
    return np.rint(np.stack(channels, axis=-1)).astype(np.uint8)


def _mono(waveform: Tensor | np.ndarray) -> Tensor:
    """A waveform [channels, samples] or [samples] as float64 mono [samples] (channels averaged)."""
    tensor = waveform.detach().cpu() if isinstance(waveform, Tensor) else torch.from_numpy(np.asarray(waveform))
    tensor = tensor.to(torch.float64)
    if tensor.ndim == 1:
        tensor = tensor[None]
    if tensor.ndim != 2 or tensor.shape[1] == 0:
        raise ValueError(f"a spectrogram needs a waveform [channels, samples] with samples, got {list(tensor.shape)}")
    return tensor.mean(dim=0)


@functools.lru_cache(maxsize=8)
def _filters(n_fft: int, bins: int, sample_rate: int) -> np.ndarray:
    """The mel filterbank [n_fft // 2 + 1, bins] over 0 .. sample_rate / 2 (Slaney scale, unnormalised)."""
    return mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=bins, min_frequency=0.0,
                           max_frequency=sample_rate / 2, sampling_rate=sample_rate, mel_scale="slaney")  # fmt: skip
