"""Sound -> a stream's latents, as `[streams.<name>.source]` says (docs/audio.md). Pure maths, no decoding:

mel       waveform [B, C, S] -> log-mel [B, C, T, n_mels] (torch.stft, transformers' mel filterbank)
channels  any layout -> the spec's channels (mono duplicated, listed layouts downmixed, others averaged)
encode    waveform -> the VAE posterior, fitted to the length rule, packed, normalised: [L, C * M]
"""

from __future__ import annotations

from ltxc.audio.channels import to_channels
from ltxc.audio.encode import AudioEncoder, audio_stream, latent_count, window_samples
from ltxc.audio.mel import log_mel, mel_filters

__all__ = ["AudioEncoder", "audio_stream", "latent_count", "log_mel", "mel_filters", "to_channels", "window_samples"]
