"""A finished latent cache as a map-style dataset, and the collate that stacks one bucket's samples."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch.utils.data import Dataset

from ltxc.data.cache import CACHE_FORMAT, HEADER, JOURNAL, MANIFEST, NULL, Cache
from ltxc.errors import UserError

TENSOR_KEYS = ("latents", "text_embeds", "text_mask")  # every cache holds these; a text stage may add text_<name>
TEXT_PREFIX = "text_"
# A cache of pairs (its header has `reference`) also holds each sample's reference video latents [C, F, H', W'];
# `reference_shape` in the manifest says their shape, and the bucket key includes it.
REFERENCE = "reference_latents"
# A cache with sound (its header has `audio`) also holds each sample's `audio_latents` [L, C * M] (packed,
# normalised; `audio_shape` in the manifest) and `audio_mask` [] (1: the clip's sound, 0: none, leave it out of
# the audio loss); batches get them as [B, L, C * M] and [B]. L follows the frame count, which the bucket holds.
AUDIO = ("audio_latents", "audio_mask")
_RECORD_KEYS = ("id", "bucket", "file")


class CacheDataset(Dataset[dict[str, Any]]):
    """The samples of a finished cache, in manifest order; tensors are read from disk on each access."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.root = Path(cache_dir)
        cache = Cache(self.root)
        rerun = f"run `ltxc run preprocess --cache {self.root}` to build it"
        if not self.root.is_dir():
            raise UserError(f"{self.root}: no such cache directory; {rerun}")
        header = cache.header()
        if header is None:
            raise UserError(f"{self.root}: not an ltxc cache (no {HEADER}); {rerun}")
        if header.get("format") != CACHE_FORMAT:
            raise UserError(
                f"{self.root}: cache format {header.get('format')!r}, this ltxc reads format {CACHE_FORMAT}; "
                "rebuild it with `ltxc run preprocess --overwrite`"
            )
        self.header: dict[str, Any] = header
        # {"column", "task", "condition", "downscale"} for a cache of IC-LoRA pairs, else None
        self.reference: dict[str, Any] | None = header.get("reference")
        self.audio: dict[str, Any] | None = header.get("audio")  # {"stream", "missing_audio"} with sound
        self._null_path = self.root / str(header.get("null_conditioning", NULL))
        # The journal disappears and the manifest appears only when preprocessing finalises: either sign
        # means a run was interrupted, and its samples are not all listed yet.
        journal = self.root / JOURNAL
        if not (self.root / MANIFEST).is_file() or (journal.is_dir() and any(journal.iterdir())):
            raise UserError(
                f"{self.root}: preprocessing did not finish; run `ltxc run preprocess` again with the same "
                "settings to finish this cache"
            )
        if not self._null_path.is_file():
            raise UserError(f"{self.root}: the null conditioning ({self._null_path.name}) is missing; rebuild it")
        self.records: list[dict[str, Any]] = cache.manifest()
        if not self.records:
            raise UserError(f"{self.root}: the cache holds no samples (every input was rejected? see rejected.jsonl)")
        self._check_records()

    def _check_records(self) -> None:
        for line, record in enumerate(self.records, start=1):
            lacking = [key for key in _RECORD_KEYS if not record.get(key)]
            if lacking:
                raise UserError(f"{self.root / MANIFEST}:{line}: record lacks {', '.join(lacking)}; rebuild the cache")
        # Checked up front so a missing file stops the run before training starts, not hours in.
        missing = [r["file"] for r in self.records if not (self.root / r["file"]).is_file()]
        if missing:
            raise UserError(
                f"{self.root}: {len(missing)} sample file(s) listed in {MANIFEST} are missing "
                f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}); rebuild the cache"
            )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        path = self.root / record["file"]
        try:
            tensors = load_file(path)
        except (OSError, SafetensorError) as exc:
            raise UserError(f"{path}: unreadable cached sample ({exc}); rebuild the cache") from None
        required = (*TENSOR_KEYS, *([REFERENCE] if self.reference else []), *(AUDIO if self.audio else []))
        lacking = [key for key in required if key not in tensors]
        if lacking:
            raise UserError(f"{path}: cached sample lacks {', '.join(lacking)}; rebuild the cache")
        shapes = (("latents", "latent_shape"), (REFERENCE, "reference_shape"), (AUDIO[0], "audio_shape"))
        for key, shape in ((key, record.get(field)) for key, field in shapes):
            if shape is not None and key in tensors and list(tensors[key].shape) != list(shape):
                raise UserError(
                    f"{path}: {key} have shape {list(tensors[key].shape)}, the manifest says {shape}; rebuild the cache"
                )
        kept = (*TENSOR_KEYS, REFERENCE, *AUDIO)
        return {
            **{key: tensors[key] for key in tensors if key in kept or key.startswith(TEXT_PREFIX)},
            "index": index,
            "id": record["id"],
            "fps": record.get("fps"),
            "bucket": record["bucket"],
        }

    def buckets(self) -> list[str]:
        """The bucket key of each sample, by index."""
        return [r["bucket"] for r in self.records]

    def null_conditioning(self) -> dict[str, torch.Tensor]:
        """The cached "no text" conditioning: `text_embeds` [L, D], `text_mask` [L] and any other `text_<name>`."""
        tensors = load_file(self._null_path)
        return {key: value for key, value in tensors.items() if key.startswith(TEXT_PREFIX)}


def text_of(batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The text tensors of a sample or batch by their names in expressions (`text_embeds` -> `embeds`)."""
    return {key[len(TEXT_PREFIX) :]: value for key, value in batch.items() if key.startswith(TEXT_PREFIX)}


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack one bucket's samples into a batch: tensors stacked on a new first dim, the rest as lists."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    batch: dict[str, Any] = {}
    for key in [k for k in samples[0] if isinstance(samples[0][k], torch.Tensor)]:
        shapes = {tuple(s[key].shape) for s in samples}
        if len(shapes) > 1:
            described = ", ".join(f"{s['id']} {list(s[key].shape)}" for s in samples)
            raise ValueError(
                f"a batch mixes {key} shapes ({described}); batches must come from one bucket (use BucketBatchSampler)"
            )
        batch[key] = torch.stack([s[key] for s in samples])
    for key in ("index", "id", "fps", "bucket"):
        batch[key] = [s[key] for s in samples]
    return batch
