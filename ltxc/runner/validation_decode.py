"""Validation's decode off the training's critical path: rank 0 hands the final latents to one worker thread
that decodes them on the CPU and writes the files while training goes on.

Why: the VAE decode is the validation's largest memory peak (a video VAE's decoder activations at full
resolution), and it would sit beside the training transformer on the device. On the CPU, in the background,
the VAE never reaches the training device and a validation costs the step loop only its denoising. The decode
draws its noise from the sampler's generator state where the decode's draws begin (`Generation.decode_state`),
so the frames are the ones an in-line decode gives. At most one validation's decode is in flight: the next
validation (and the end of training) waits for it, so a slow CPU decode cannot pile up work.

Sound (a spec with `[streams.<name>.decode]`): the job carries the joint streams' final latents
(`Generation.undecoded_streams`) and the worker decodes them with `stream_decode.decode_sound`, the function the
in-line decode calls, so both modes write the same waveform. `write_prompt` writes one prompt's files either way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from attrs import field, frozen
from torch import Tensor

from ltxc.latent_decode import decode_latents
from ltxc.plan import Plan
from ltxc.stream_decode import decode_sound


@frozen(eq=False)
class DecodeJob:
    """One prompt's final latents, waiting to become `prompt-<index>.mp4` and `.png` (and `.wav`) in `folder`."""

    index: int
    latents: Tensor  # [1, C, F', H', W'] as the decode takes them, on the CPU
    state: Tensor  # the sampler generator's state where the decode's draws begin
    fps: float
    folder: Path
    streams: Mapping[str, Tensor] = field(factory=dict)  # the joint streams' final latents, on the CPU


@frozen(eq=False)
class Decoded:
    """What one validation's decode wrote: its TensorBoard images by tag and its files."""

    step: int
    images: dict[str, np.ndarray]
    written: list[Path]


class BackgroundDecoder:
    """Decodes validation latents on the CPU in one worker thread; `submit` returns at once."""

    def __init__(self, plan: Plan, components: Mapping[str, Any], role_dtype: Callable[[str], torch.dtype]) -> None:
        self.plan = plan
        self.components = components
        self.role_dtype = role_dtype
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ltxc-validation-decode")
        self._pending: Future[Decoded] | None = None
        self._vae: Any = None
        self._normaliser: Any = None

    def submit(self, step: int, jobs: list[DecodeJob]) -> None:
        """Start decoding one validation's latents (the caller collected the previous one first)."""
        if self._pending is not None:
            raise RuntimeError("collect the previous validation's decode before submitting another")
        self._pending = self._executor.submit(self._decode, step, jobs)

    def collect(self) -> Decoded | None:
        """Wait for the decode in flight, if any; what it wrote (its errors are raised here)."""
        pending, self._pending = self._pending, None
        return None if pending is None else pending.result()

    def close(self) -> Decoded | None:
        """Finish the decode in flight and stop the worker thread."""
        try:
            return self.collect()
        finally:
            self._executor.shutdown(wait=True)

    def _decode(self, step: int, jobs: list[DecodeJob]) -> Decoded:
        vae, normaliser = self._cpu_vae()
        images: dict[str, np.ndarray] = {}
        written: list[Path] = []
        for job in jobs:
            generator = torch.Generator().set_state(job.state)
            with torch.no_grad():
                video = decode_latents(self.plan, vae, normaliser, job.latents, generator, self.role_dtype)[0]
                sound = decode_sound(self.plan, self.components, job.streams, self.role_dtype)
            audio = None if sound is None else (sound.waveform[0], sound.sample_rate)
            files, logged = write_prompt(video, audio, job.folder, job.index, job.fps)
            written += files
            images.update(logged)
        return Decoded(step, images, written)

    def _cpu_vae(self) -> tuple[Any, Any]:
        """The VAE as loaded (on the CPU, never moved to the training device) and the latent normaliser."""
        if self._vae is None:
            self._vae = self.components[self.plan.latent.vae]
            self._normaliser = self.plan.normaliser(self.components)
        return self._vae, self._normaliser


def write_prompt(
    video: Tensor, audio: tuple[Tensor, int] | None, folder: Path, index: int, fps: float
) -> tuple[list[Path], dict[str, np.ndarray]]:
    """One prompt's validation files and TensorBoard images, whichever mode decoded it: `prompt-<index>.mp4` (with
    an AAC track when there is sound), `.png` (the contact sheet, a spectrogram strip under it) and `.wav`; the
    sheet as `validation/prompt-<index>` and the spectrogram alone as `validation/prompt-<index>/spectrogram`."""
    from ltxc.audio.spectrogram import spectrogram_image
    from ltxc.media.write import contact_sheet, write_frames, write_wav

    tag, stem = f"validation/prompt-{index}", folder / f"prompt-{index}"
    waveform, rate = audio if audio is not None else (None, None)
    # a one-frame sample (an image model's) is its PNG alone: a one-frame video would add nothing
    one_frame = video.shape[0] == 1 and waveform is None
    written = (
        [] if one_frame else [write_frames(video, stem.with_suffix(".mp4"), fps=fps, audio=waveform, sample_rate=rate)]
    )
    sheet = contact_sheet(video, audio=waveform, sample_rate=rate)
    written.append(write_frames(sheet[None], stem.with_suffix(".png"), fps=fps))  # one image: the sheet, lossless
    images = {tag: sheet}
    if waveform is not None and rate is not None:
        written.append(write_wav(waveform, stem.with_suffix(".wav"), rate))
        images[f"{tag}/spectrogram"] = spectrogram_image(waveform, rate)
    return written, images
