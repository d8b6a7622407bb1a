"""Validation videos sampled from the live model while it trains.

Every rank runs the sampler in lockstep (a sharded model's forward gathers each block's full weights from
all ranks); rank 0 writes `validation/step-N/prompt-I.mp4` plus a contact-sheet PNG and logs the sheet to
TensorBoard. The VAE and text encoder are built only here, and only when prompts are configured.

The prompts (and the negative prompt) are encoded once, when the validator is set up — before the training
transformer is built — and the text encoder is freed at once: it never sits beside the training transformer,
and every validation reuses the same text. With `validation.decode = "background"` (the default) rank 0 decodes
the final latents on the CPU in a worker thread while training goes on (`validation_decode`): the VAE reaches
the training device only to encode a validation image, never to decode. `"device"` decodes in line on it.

Sound: with a spec that decodes a stream to sound (`[streams.<name>.decode]`), every validation video has it (an
AAC track, `prompt-I.wav` beside it, a spectrogram strip under the contact sheet and
`validation/prompt-I/spectrogram` in TensorBoard), whether or not the run trains audio (`train.audio`): the stream
is sampled jointly either way, so a video-only run shows the untrained audio branch's joint sample, which tells
whether the video LoRA disturbs it (docs/audio-training.md). Both decode modes decode it with the same function.

With `validation.images`, each prompt's video is generated from its image through the spec's task that takes an
image (image-to-video): the images are read once at set-up (a bad file fails before training starts), resized to
cover the video's size and centre-cropped, as `ltxc run generate --image` reads an image.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ltxc.errors import UserError
from ltxc.plan import Plan
from ltxc.runner.config import ValidationSection
from ltxc.runner.distributed import Distributed, barrier
from ltxc.runner.metrics import MetricsLogger
from ltxc.runner.parallelize import unsharded_autocast
from ltxc.runner.run_dir import RunDir
from ltxc.runner.validation_decode import BackgroundDecoder, Decoded, DecodeJob, write_prompt
from ltxc.sampling_run import resolve_run


class Validator:
    """Samples the configured prompts from a training model (unset sizes and sampler settings: the plan's)."""

    def __init__(
        self,
        plan: Plan,
        validation: ValidationSection,
        info: Distributed,
        run: RunDir,
        compute_dtype: torch.dtype | None,
        fps: float,
    ) -> None:
        """Build the sampler on its own components (the VAE and text encoder training never builds), encode the
        prompts and free the text encoder."""
        from ltxc.sampler import Sampler

        self.validation = validation
        self.info = info
        self.run_dir = run
        self.fps = fps
        self.compute_dtype = compute_dtype  # the training model's; set again once it is built
        components = plan.components()  # a set of its own: training never builds these otherwise
        # sound=True: the spec's sound stream is decoded too (nothing happens for a spec that declares none)
        self.sampler = Sampler(plan, components, device=info.device, compute_dtype=compute_dtype, sound=True)
        self.components = components
        self._encode_prompts()
        self.images = self._read_images()
        # rank 0 decodes on the CPU in a worker thread, off the step loop (the VAE never reaches the device)
        background = validation.decode == "background" and info.is_main
        self.decoder = BackgroundDecoder(plan, components, self.sampler._role_dtype) if background else None

    def _encode_prompts(self) -> None:
        """Encode every prompt and the negative prompt as the sampler would, keep them on the CPU, and free the
        tokenizer, text encoder and text stage."""
        s, sampler = self.validation, self.sampler
        run = resolve_run(
            self.sampler.plan, s.negative_prompt, s.frames, s.height, s.width, self.fps, s.steps, s.guidance, None
        )
        batches = [(prompt,) for prompt in s.prompts] + ([(run.negative,)] if run.negative is not None else [])
        for batch in batches:
            sampler.encoded[batch] = {name: t.cpu() for name, t in sampler._encode(list(batch)).items()}
        # the dtypes of the roles the sampler casts to (e.g. the text encoder's), read before it is freed
        plan = sampler.plan
        casts = {plan.input_role} | {step.removeprefix("cast:") for step in plan.decode if step.startswith("cast:")}
        for role in casts - {plan.transformer_role}:
            sampler.role_dtypes[role] = sampler._role_dtype(role)
        sampler.processor.free_text()

    def _read_images(self) -> list[torch.Tensor | None]:
        """Each prompt's image as the sampler's pixels [1, 3, H, W] at the video's size (None: text-to-video)."""
        s = self.validation
        if not s.images:
            return [None] * len(s.prompts)
        run = resolve_run(
            self.sampler.plan, s.negative_prompt, s.frames, s.height, s.width, self.fps, s.steps, s.guidance, None
        )
        return [read_image(path, run.height, run.width) for path in s.images]

    def due(self, step: int, last: bool) -> bool:
        """Whether to sample after `step` (every N steps, and after the last step)."""
        every = self.validation.every
        return last or (every > 0 and step % every == 0)

    def run(self, model: torch.nn.Module, step: int, logger: MetricsLogger) -> list[Path]:
        """Sample every prompt with the live weights; return the files written (rank 0) — in the background
        decode, the previous validation's, whose decode this one waits for."""
        s = self.validation
        self.sampler._transformer = model  # the live (possibly sharded) model, not the spec's weights
        self.sampler.compute_dtype = self.compute_dtype
        written: list[Path] = []
        jobs: list[DecodeJob] = []
        folder = self.run_dir.validation(step)
        for index, (prompt, image) in enumerate(zip(s.prompts, self.images, strict=True)):
            with unsharded_autocast(model, self.compute_dtype, self.info.device):
                result = self.sampler([prompt], negative_prompt=s.negative_prompt, frames=s.frames, height=s.height,
                                      width=s.width, fps=self.fps, steps=s.steps, guidance=s.guidance,
                                      seed=s.seed, image=image, decode=s.decode == "device")  # fmt: skip
            if not self.info.is_main:
                continue
            if result.video is None:  # decoded in the background
                assert result.undecoded is not None and result.decode_state is not None
                jobs.append(DecodeJob(index, result.undecoded, result.decode_state, result.fps, folder,
                                      result.undecoded_streams or {}))  # fmt: skip
                continue
            sound = None if result.audio is None or not result.sample_rate else (result.audio[0], result.sample_rate)
            files, images = write_prompt(result.video[0], sound, folder, index, result.fps)
            written += files
            for tag, image in images.items():
                logger.log_image(tag, image, step)
        if self.decoder is not None and self.info.is_main:
            written += _logged(self.decoder.collect(), logger)
            self.decoder.submit(step, jobs)
        barrier()
        return written

    def finish(self, logger: MetricsLogger) -> list[Path]:
        """Wait for the last background decode and log it; the files it wrote (rank 0)."""
        return _logged(self.decoder.close(), logger) if self.decoder is not None else []


def _logged(decoded: Decoded | None, logger: MetricsLogger) -> list[Path]:
    """Log a finished background decode's images at its own step; its files."""
    if decoded is None:
        return []
    for tag, image in decoded.images.items():
        logger.log_image(tag, image, decoded.step)
    return decoded.written


def read_image(path: str, height: int, width: int) -> torch.Tensor:
    """An image file (or a video's first frame) as pixels [1, 3, height, width] float32 in [-1, 1]: resized to cover
    the size and centre-cropped, as `ltxc run generate --image` reads it."""
    from ltxc.condition_sampling import image_pixels
    from ltxc.media import MediaError
    from ltxc.media import read_image as read_rgb

    try:
        rgb = read_rgb(path, (width, height))
    except MediaError as error:
        raise UserError(f"validation.images: {path}: {error}") from None
    return image_pixels(rgb)
