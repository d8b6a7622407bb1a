"""Validation's decode off the training's critical path: rank 0 hands the final latents to one worker thread
that decodes them on the CPU and writes the files while training goes on.

Why: the VAE decode is the validation's largest memory peak (a video VAE's decoder activations at full
resolution), and it would sit beside the training transformer on the device. On the CPU, in the background,
the VAE never reaches the training device and a validation costs the step loop only its denoising. The decode
draws its noise from the sampler's generator state where the decode's draws begin (`Generation.decode_state`),
so the frames are the ones an in-line decode gives. At most one validation's decode is in flight: the next
validation (and the end of training) waits for it, so a slow CPU decode cannot pile up work.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from attrs import frozen
from torch import Tensor

from ltxc.latent_decode import decode_latents
from ltxc.plan import Plan


@frozen(eq=False)
class DecodeJob:
    """One prompt's final latents, waiting to become `prompt-<index>.mp4` and `.png` in `folder`."""

    index: int
    latents: Tensor  # [1, C, F', H', W'] as the decode takes them, on the CPU
    state: Tensor  # the sampler generator's state where the decode's draws begin
    fps: float
    folder: Path


@frozen(eq=False)
class Decoded:
    """What one validation's decode wrote: per prompt its contact sheet (for TensorBoard) and its files."""

    step: int
    sheets: dict[int, np.ndarray]
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
        from ltxc.media.write import contact_sheet, write_frames

        vae, normaliser = self._cpu_vae()
        sheets, written = {}, []
        for job in jobs:
            generator = torch.Generator().set_state(job.state)
            with torch.no_grad():
                video = decode_latents(self.plan, vae, normaliser, job.latents, generator, self.role_dtype)[0]
            written.append(write_frames(video, job.folder / f"prompt-{job.index}.mp4", fps=job.fps))
            written.append(write_frames(video, job.folder / f"prompt-{job.index}.png", fps=job.fps))
            sheets[job.index] = contact_sheet(video)
        return Decoded(step, sheets, written)

    def _cpu_vae(self) -> tuple[Any, Any]:
        """The VAE as loaded (on the CPU, never moved to the training device) and the latent normaliser."""
        if self._vae is None:
            self._vae = self.components[self.plan.latent.vae]
            self._normaliser = self.plan.normaliser(self.components)
        return self._vae, self._normaliser
