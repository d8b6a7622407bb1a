"""Bucketed, distributed, resumable batch sampling: one shape per batch, the same batch count on every rank.

Epoch `e` is a list of *global* batches of `batch_size * world_size` samples (the same list on every
rank): shuffle each bucket's indices (generator seeded with seed+e), cut each bucket into global batches,
filling the last partial one by wrapping around within its bucket (no batch mixes shapes, no sample is
dropped), then shuffle the order of all global batches (same generator). Rank r takes the r-th slice of
`batch_size` from every global batch. So every rank yields exactly as many batches as the others (a
collective can never wait on a rank that ran out), and which sample lands in which step depends only on
the global batch size — one process with batch 2 sees exactly what two ranks with batch 1 see together.

The sampler is infinite over epochs; the runner stops at its step count. Its state is a few ints, kept
as batches are handed out, so `torchdata`'s `StatefulDataLoader` can snapshot it per batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler

_STATE_KEYS = ("epoch", "position", "offset", "world_size", "batch_size", "samples")


class BucketBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset indices, all from one bucket, forever; see the module docstring."""

    def __init__(
        self, buckets: Sequence[str], batch_size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch size must be a whole number of at least 1, not {batch_size!r}")
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world size must be a whole number of at least 1, not {world_size!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1} for world size {world_size}, not {rank!r}")
        if len(buckets) == 0:
            raise ValueError("no samples to draw batches from: the bucket list is empty")
        groups: dict[str, list[int]] = {}
        for index, key in enumerate(buckets):
            if not isinstance(key, str) or not key:
                raise ValueError(f"sample {index} has bucket {key!r}; every sample needs a non-empty bucket key")
            groups.setdefault(key, []).append(index)
        # Sorted keys: a fixed bucket order, whatever order the buckets first appear in.
        self._groups = [groups[key] for key in sorted(groups)]
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = int(seed)
        self.samples = len(buckets)
        self.global_batch = batch_size * world_size
        self.global_batches = sum(math.ceil(len(g) / self.global_batch) for g in self._groups)
        self.batches_per_epoch = self.global_batches  # per rank: every rank takes a slice of every global batch
        self.epoch = 0
        self.position = 0  # global batches handed out in the current epoch
        self.offset = 0  # kept for state compatibility; always 0 with global batches
        self._plan: tuple[tuple[int, int], list[list[int]]] | None = None

    # -- batches ------------------------------------------------------------------------------------
    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The global batch list of `epoch`, identical on every rank."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        size = self.global_batch
        batches: list[list[int]] = []
        for group in self._groups:
            order = [group[i] for i in torch.randperm(len(group), generator=generator).tolist()]
            count = math.ceil(len(order) / size)
            wrapped = [order[i % len(order)] for i in range(count * size)]
            batches.extend(wrapped[i : i + size] for i in range(0, len(wrapped), size))
        return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]

    def rank_batches(self, epoch: int, offset: int = 0) -> list[list[int]]:
        """This rank's slice of each global batch of `epoch`, from global batch `offset` on."""
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        return [batch[lo:hi] for batch in self.epoch_batches(epoch)[offset:]]

    def _current(self) -> list[list[int]]:
        key = (self.epoch, self.offset)
        if self._plan is None or self._plan[0] != key:
            self._plan = (key, self.rank_batches(self.epoch, self.offset))
        return self._plan[1]

    def __iter__(self) -> Iterator[list[int]]:
        """Batches from the current position on, over all later epochs."""
        # The cursor lives on the sampler, not in the generator, and moves *before* a batch is handed out:
        # a state_dict() taken right after a batch was drawn already counts it, which is what the loader's
        # snapshots expect.
        while True:
            batches = self._current()
            if self.position >= len(batches):
                self.epoch, self.position, self.offset = self.epoch + 1, 0, 0
                continue
            batch = batches[self.position]
            self.position += 1
            yield list(batch)

    # -- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        """Where the sampler stands: ints only, the same on every rank at a given step."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "offset": self.offset,
            "global_batch": self.global_batch,
            "samples": self.samples,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from `state` (taken on any rank, with any world size that keeps the global batch)."""
        missing = [key for key in ("epoch", "position") if key not in state]
        if missing:
            raise ValueError(f"batch sampler state lacks {', '.join(missing)}: {dict(state)!r}")
        if state.get("samples", self.samples) != self.samples:
            raise ValueError(
                f"the data changed since this state was saved: {state['samples']} samples then, {self.samples} now"
            )
        if state.get("global_batch", self.global_batch) != self.global_batch:
            raise ValueError(
                f"global batch {state['global_batch']} (batch size x ranks) when this state was saved, "
                f"{self.global_batch} now: resume with the same global batch (e.g. 2 ranks x 1 = 1 rank x 2)"
            )
        epoch, position, offset = int(state["epoch"]), int(state["position"]), int(state.get("offset", 0))
        if epoch < 0 or position < 0 or offset < 0:
            raise ValueError(f"invalid batch sampler state {dict(state)!r}")
        self.epoch, self.position, self.offset = epoch, position + offset, 0
