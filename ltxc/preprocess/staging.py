"""Text encoded ahead of the videos: one large component at a time.

Preprocessing runs in two passes, so the text encoder and the VAE are never loaded together: first every pending
caption is encoded and staged in `staging/<id>.safetensors` inside the cache (atomically, so a killed run keeps
what it finished), and the text encoder is freed; then the VAE encodes the videos, and each record is written
with its staged text (the same tensors, byte for byte, as encoding the caption next to its video). A staged file
goes once its sample is written or rejected, and the folder once the cache is finalised.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from ltxc.data.cache import Cache, save_tensors

STAGING = "staging"


def staged_path(cache: Cache, sample_id: str) -> Path:
    """Where a sample's encoded caption waits for its video."""
    return cache.root / STAGING / f"{sample_id}.safetensors"


def is_staged(cache: Cache, sample_id: str) -> bool:
    """Whether the caption of `sample_id` is already encoded."""
    return staged_path(cache, sample_id).is_file()


def stage_text(cache: Cache, sample_id: str, text: dict[str, torch.Tensor]) -> None:
    """Keep a sample's encoded caption (named tensors [1, L, ...], as `Processor.cache_text` returns them)."""
    save_tensors(staged_path(cache, sample_id), text)


def staged_text(cache: Cache, sample_id: str) -> dict[str, torch.Tensor]:
    """A sample's encoded caption, as it was staged."""
    return load_file(staged_path(cache, sample_id))


def unstage(cache: Cache, sample_id: str) -> None:
    """Drop a sample's staged caption (its record is written, or it was rejected)."""
    staged_path(cache, sample_id).unlink(missing_ok=True)


def clear_staging(cache: Cache) -> None:
    """Remove the staging folder (captions of samples that were rejected or have left the dataset)."""
    shutil.rmtree(cache.root / STAGING, ignore_errors=True)
