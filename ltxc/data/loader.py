"""The training data loader: bucketed batches from the cache through torchdata's `StatefulDataLoader`.

Two ways to resume, both landing on the exact next batch:
- `loader.state_dict()` / `loader.load_state_dict(...)`: torchdata's own state. It accounts for batches
  that workers prefetched but the loop never consumed, but only loads into a loader with the same
  `num_workers` (torchdata asserts it).
- `restore_sampler(loader, {"epoch": E, "position": P})` on a fresh loader: the batch sampler's position
  alone, portable across worker counts and world sizes. The runner derives it from the step, so a
  checkpoint needs to store nothing about the data.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from ltxc.data.batch_sampler import BucketBatchSampler
from ltxc.data.dataset import CacheDataset, collate

PREFETCH_FACTOR = 2  # batches in flight per worker: enough to hide file reads, little memory


def make_loader(
    dataset: CacheDataset,
    batch_size: int,
    *,
    rank: int,
    world_size: int,
    seed: int,
    workers: int = 0,
    pin_memory: bool = False,
) -> StatefulDataLoader:
    """A stateful loader of one-bucket batches for this rank; infinite, so draw from one `iter()` only."""
    if workers < 0:
        raise ValueError(f"workers must be 0 or more, not {workers}")
    sampler = BucketBatchSampler(dataset.buckets(), batch_size, rank=rank, world_size=world_size, seed=seed)
    with warnings.catch_warnings():
        # torchdata 0.11 calls torch.set_vital, which newer torch deprecates; nothing a user can act on.
        warnings.filterwarnings("ignore", message=".*set_vital.*", category=UserWarning)
        return StatefulDataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=workers,
            # Pinning needs a CUDA device; on a CPU machine it would fail or only cost time.
            pin_memory=pin_memory and torch.cuda.is_available(),
            # The sampler never ends, so there is only ever one iterator: workers kept alive between
            # iterators would buy nothing.
            persistent_workers=False,
            prefetch_factor=PREFETCH_FACTOR if workers > 0 else None,
            # A snapshot at every batch: state_dict() then never has to replay batches on resume.
            snapshot_every_n_steps=1,
            in_order=True,  # torchdata gives no resume guarantee out of order
        )


def restore_sampler(loader: StatefulDataLoader, state: Mapping[str, Any]) -> None:
    """Make a fresh loader (no iterator started yet) continue from a batch sampler position (epoch, position)."""
    sampler = loader.batch_sampler
    if not isinstance(sampler, BucketBatchSampler):
        raise TypeError("restore_sampler needs a loader made by make_loader")
    sampler.load_state_dict(state)
