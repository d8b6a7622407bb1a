"""The text the transformer trains on: the cached captions (through the text stage when the cache stops before
it), each replaced by the null conditioning when CFG dropout drops it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ltxc.adapter import cfg_dropout
from ltxc.data.dataset import CacheDataset, text_of
from ltxc.plan import Plan
from ltxc.processor import Processor


class TrainingText:
    """Turns a batch's cached text into the conditioning the transformer sees."""

    def __init__(self, plan: Plan, dataset: CacheDataset, device: torch.device) -> None:
        """Build the text stage if training runs it, and the final null conditioning."""
        self.device = device
        self.stream_text = frozenset(name for stream in plan.streams.values() for name in stream.text)
        # the cache stops before the (frozen) text stage: run it here; it builds only the stage's components
        self.stage = Processor(plan, plan.components(), device) if plan.stage_in_training else None
        self.null = self._null(dataset, zeros=plan.null_text == "zeros")

    def _null(self, dataset: CacheDataset, *, zeros: bool) -> dict[str, torch.Tensor]:
        """The null conditioning as the sampler's negative branch sees it: after the stage (or zeros)."""
        null = text_of(dataset.null_conditioning())
        if self.stage is not None:
            staged = self.stage.apply_stage({name: tensor[None].to(self.device) for name, tensor in null.items()})
            null = {name: tensor[0] for name, tensor in staged.items()}
            if zeros:
                null = {name: torch.zeros_like(tensor) for name, tensor in null.items()}
        return {name: tensor.to(self.device) for name, tensor in null.items()}

    def __call__(
        self, batch: Mapping[str, Any], drop: torch.Tensor, stream_drop: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The batch's conditioning on the device, with the samples where `drop` [B] is true set to "no text"; with
        `stream_drop`, the text only the streams read (`[streams] text`) is dropped where it is true instead."""
        text = {name: tensor.to(self.device) for name, tensor in text_of(batch).items()}
        if self.stage is not None:
            text = self.stage.apply_stage(text)
        if stream_drop is None:
            return cfg_dropout(text, self.null, drop)
        own = {name: tensor for name, tensor in text.items() if name in self.stream_text}
        rest = {name: tensor for name, tensor in text.items() if name not in self.stream_text}
        return {**cfg_dropout(rest, self.null, drop), **cfg_dropout(own, self.null, stream_drop)}
