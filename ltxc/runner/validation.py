"""Validation videos sampled from the live model while it trains.

Every rank runs the sampler in lockstep (a sharded model's forward gathers each block's full weights from
all ranks); rank 0 writes `validation/step-N/prompt-I.mp4` plus a contact-sheet PNG and logs the sheet to
TensorBoard. The VAE and text encoder are built only here, and only when prompts are configured.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ltxc.plan import Plan
from ltxc.runner.config import ValidationSection
from ltxc.runner.distributed import Distributed, barrier
from ltxc.runner.metrics import MetricsLogger
from ltxc.runner.run_dir import RunDir


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
        """Build the sampler and its own components (the VAE and text encoder training never builds)."""
        from ltxc.sampler import Sampler

        self.validation = validation
        self.info = info
        self.run_dir = run
        self.fps = fps
        components = plan.components()  # a set of its own: training never builds these otherwise
        self.sampler = Sampler(plan, components, device=info.device, compute_dtype=compute_dtype)
        self.components = components

    def due(self, step: int, last: bool) -> bool:
        """Whether to sample after `step` (every N steps, and after the last step)."""
        every = self.validation.every
        return last or (every > 0 and step % every == 0)

    def run(self, model: torch.nn.Module, step: int, logger: MetricsLogger) -> list[Path]:
        """Sample every prompt with the live weights; return the files written (rank 0)."""
        from ltxc.media.write import contact_sheet, write_frames

        s = self.validation
        self.sampler._transformer = model  # the live (possibly sharded) model, not the spec's weights
        written: list[Path] = []
        folder = self.run_dir.validation(step)
        for index, prompt in enumerate(s.prompts):
            result = self.sampler([prompt], negative_prompt=s.negative_prompt, frames=s.frames, height=s.height,
                                  width=s.width, fps=self.fps, steps=s.steps, guidance=s.guidance,
                                  seed=s.seed)  # fmt: skip
            if self.info.is_main:
                video = result.video[0]
                written.append(write_frames(video, folder / f"prompt-{index}.mp4", fps=result.fps))
                written.append(write_frames(video, folder / f"prompt-{index}.png", fps=result.fps))
                logger.log_image(f"validation/prompt-{index}", contact_sheet(video), step)
        barrier()
        return written
