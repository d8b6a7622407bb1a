"""Any channel layout -> the spec's channels: mono duplicated, listed layouts downmixed, others averaged."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ltxc.spec.audio_types import WaveformSpec


def to_channels(samples: np.ndarray, names: Sequence[str], waveform: WaveformSpec) -> tuple[np.ndarray, str]:
    """float32 [C, S] in the layout with channel `names` -> [waveform.channels, S], and how it was mixed
    ("as is", "duplicated", "downmix 6", "averaged") for the manifest."""
    count = samples.shape[0]
    if count == waveform.channels:
        return samples.astype(np.float32, copy=False), "as is"
    rule = waveform.downmix.get(str(count))
    if rule is not None and waveform.channels == 2 and set(rule.left) & set(names):
        sides = []
        for weights in (rule.left, rule.right):
            side = np.zeros(samples.shape[1], dtype=np.float32)
            for name, weight in weights.items():
                if name in names:
                    side += np.float32(weight) * samples[list(names).index(name)]
            sides.append(side / np.float32(rule.divisor))
        return np.stack(sides), f"downmix {count}"
    mono = samples[0] if count == 1 else samples.mean(axis=0, dtype=np.float32)
    how = "duplicated" if count == 1 else "averaged"
    return np.repeat(mono[None], waveform.channels, axis=0).astype(np.float32, copy=False), how
