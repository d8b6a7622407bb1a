"""`[streams.<name>.source]`: how a clip's sound track becomes the stream's cached latents, as data.

Pure data like `ltxc.spec.types` (which nests it in `StreamSpec.source`): the waveform rules, the log-mel
spectrogram, the audio VAE, the latent length rule, the packing and the normaliser on the packed tokens. The
maths that reads it lives in `ltxc.audio`.
"""

from __future__ import annotations

from typing import Literal

from attrs import field, frozen

# A statistic: "<role>.<buffer>", "<role>.config.<key>" or a literal list of numbers (as in types.StatRef).
AudioStatRef = str | tuple[float, ...]


@frozen
class DownmixSpec:
    """A layout with this many channels folded to stereo: each side the weighted sum of the named channels
    (PyAV's channel names, e.g. FL, FC, SL; names the layout lacks count as absent), divided by `divisor`."""

    left: dict[str, float]
    right: dict[str, float]
    divisor: float = 1.0


@frozen
class WaveformSpec:
    """The waveform the spectrogram is taken of: rate and channels; other layouts downmixed or averaged."""

    sample_rate: int
    channels: Literal[1, 2] = 2
    # by channel count ("6", "8"); a layout not listed (besides mono and stereo) is averaged, then duplicated
    downmix: dict[str, DownmixSpec] = field(factory=dict)


@frozen
class MelSpec:
    """The log-mel spectrogram: STFT, mel filterbank, magnitude power, log floor; [B, channels, T, n_mels]."""

    n_fft: int
    hop_length: int
    n_mels: int
    f_max: float
    win_length: int | None = None  # unset: n_fft
    window: Literal["hann"] = "hann"
    center: bool = True
    pad_mode: Literal["reflect", "constant"] = "reflect"
    f_min: float = 0.0
    mel_scale: Literal["slaney", "htk"] = "slaney"
    norm: Literal["slaney", "none"] = "slaney"
    power: float = 1.0
    log_floor: float = 1e-5


@frozen
class AudioNormaliseSpec:
    """(z - mean) * scaling_factor / std on the packed tokens, one statistic per packed feature."""

    mean: AudioStatRef
    std: AudioStatRef
    scaling_factor: float = 1.0


@frozen
class AudioSourceSpec:
    """`[streams.<name>.source]`: a clip's sound over its frames' time window -> packed, normalised latents."""

    waveform: WaveformSpec
    mel: MelSpec
    latents_per_second: float
    latent_shape: tuple[int, int]  # [channels, mel bins] of the VAE's latents [C, L, M]
    normalise: AudioNormaliseSpec
    vae: str = "audio_vae"
    encode: Literal["mode", "sample"] = "mode"
    # "pipeline": round(frames / fps * latents_per_second) latents, the encoder's output trimmed (or zero-padded)
    # to it; "encoder": whatever the encoder returns
    length: Literal["pipeline", "encoder"] = "pipeline"
