"""Validation videos sampled from the live model while it trains.

Every rank runs the sampler in lockstep (a sharded model's forward gathers each block's full weights from
all ranks); rank 0 writes `validation/step-N/prompt-I.mp4` plus a contact-sheet PNG and logs the sheet to
TensorBoard. The VAE and text encoder are built only here, and only when prompts are configured.
"""

from __future__ import annotations

from pathlib import Path

import torch
from attrs import frozen

from ltxc.plan import Plan
from ltxc.runner.distributed import Distributed, barrier
from ltxc.runner.metrics import MetricsLogger


@frozen
class ValidationSettings:
    """What to sample and how often (unset sizes and sampler settings come from the spec)."""

    prompts: tuple[str, ...] = ()
    negative_prompt: str | None = None
    every: int = 0
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int = 0


class Validator:
    """Samples the configured prompts from a training model."""

    def __init__(
        self,
        plan: Plan,
        settings: ValidationSettings,
        info: Distributed,
        run_dir: Path,
        compute_dtype: torch.dtype | None,
        fps: float,
    ) -> None:
        from ltxc.sampler import Sampler

        self.settings = settings
        self.info = info
        self.run_dir = run_dir
        self.fps = fps
        components = plan.components()  # a set of its own: training never builds these otherwise
        self.sampler = Sampler(plan, components, device=info.device, compute_dtype=compute_dtype)
        self.components = components

    def due(self, step: int, last: bool) -> bool:
        """Whether to sample after `step` (every N steps, and after the last step)."""
        every = self.settings.every
        return last or (every > 0 and step % every == 0)

    def run(self, model: torch.nn.Module, step: int, logger: MetricsLogger) -> list[Path]:
        """Sample every prompt with the live weights; return the files written (rank 0)."""
        from ltxc.media.write import contact_sheet, write_frames

        s = self.settings
        self.sampler._transformer = model  # the live (possibly sharded) model, not the spec's weights
        written: list[Path] = []
        folder = self.run_dir / "validation" / f"step-{step:08d}"
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
