"""IC-LoRA pairs in preprocessing: which task condition a dataset's reference videos feed, and each pair's reference
checked, decoded and encoded beside its target, or the pair rejected with the reason.

Pairs are on when the plan has a task condition with `input = "video"` and `place = "append"` and the dataset's
metadata names a reference for some sample (its `reference` column). Then every sample needs one. A reference takes
the target's frames (the same count, at the same fps, from the same start; the frame policy applies to it as to the
target) at the target's bucket size / the condition's downscale, resized to cover and centre-cropped as the target
is, and is encoded as the condition says (`encode`) and normalised like the target (`[latent] normalise`: training
converts it to the condition's normaliser, as it does a clip's own frames for a frames condition). The cache stores
it as `reference_latents` [C, F, H', W'] in the sample's own file, so a record and its reference are written
together.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from attrs import frozen

from ltxc.data.buckets import DEFAULT_ASPECT_TOLERANCE, aspect_error
from ltxc.data.discover import Sample
from ltxc.errors import UserError
from ltxc.geometry import Geometry
from ltxc.media.decode import read_frames
from ltxc.media.errors import MediaError
from ltxc.media.frames import FrameSelection, pad_selection
from ltxc.media.probe import MediaInfo, probe
from ltxc.plan import Plan
from ltxc.preprocess.outcome import Rejection, round_time
from ltxc.preprocess.settings import PreprocessSettings
from ltxc.processor import Processor

REFERENCE_KEY = "reference"  # the metadata column that names a sample's reference video
REFERENCE_TENSOR = "reference_latents"


@frozen
class Pairing:
    """Where a dataset's reference videos go: its column, the task condition they feed, and how it encodes them."""

    column: str
    task: str
    condition: str
    downscale: int
    encode: str

    def to_json(self) -> dict[str, Any]:
        """As `cache.json` records it (the encode is the spec's, which its hash covers)."""
        return {"column": self.column, "task": self.task, "condition": self.condition, "downscale": self.downscale}

    def describe(self) -> str:
        """One line for the report."""
        size = "the target's size" if self.downscale == 1 else f"1/{self.downscale} of the target's size"
        return f"column {self.column!r} -> [tasks.{self.task}] condition {self.condition!r}, at {size}"


def pairing_for(plan: Plan, samples: Sequence[Sample], column: str = REFERENCE_KEY) -> Pairing | None:
    """The pairing of this dataset, or None: no sample names a reference, or the plan appends no video."""
    if not any(sample.reference for sample in samples):
        return None
    found = [
        (task.name, name, condition)
        for task in plan.tasks.values()
        for name, condition in task.conditions.items()
        if condition.input == "video" and condition.place == "append"
    ]
    if not found:
        return None
    if len({(c.downscale, c.encode) for _, _, c in found}) > 1:
        names = ", ".join(f"{task}.{name}" for task, name, _ in found)
        raise UserError(
            f"spec {plan.name!r}: the appended video conditions {names} differ in downscale or encode; "
            "a cache holds one reference per sample"
        )
    task, name, condition = found[0]
    return Pairing(column, task, name, condition.downscale, condition.encode)


def describe_pairs(plan: Plan, samples: Sequence[Sample], pairing: Pairing | None, column: str) -> str:
    """What became of the dataset's reference column, for the report ("" when it has none)."""
    if pairing is not None:
        return pairing.describe()
    if any(sample.reference for sample in samples):
        return f"column {column!r} ignored: spec {plan.name!r} has no task that appends a video"
    return ""


def check_sizes(pairing: Pairing, settings: PreprocessSettings, geometry: Geometry) -> None:
    """Every resolution bucket divided by the downscale obeys the resolution rule (else a UserError, before work)."""
    d, m = pairing.downscale, geometry.resolution_multiple
    for width, height in settings.resolutions:
        if width % d or height % d or (width // d) % m or (height // d) % m:
            raise UserError(
                f"resolution {width}x{height} with the reference at 1/{d} ([tasks.{pairing.task}] condition "
                f"{pairing.condition!r} downscale) gives {width / d:g}x{height / d:g}, but sizes must be multiples of "
                f"{m} pixels: pick a --resolution (or --pixels) whose width and height are multiples of {m * d}"
            )


@frozen
class ReferencePlan:
    """A pair's reference, checked: its media, the frames it gives and the size they are decoded at."""

    relpath: str
    info: MediaInfo
    selection: FrameSelection
    size: tuple[int, int]  # (width, height)


def plan_reference(
    sample: Sample, target: MediaInfo, count: int, size: tuple[int, int], settings: PreprocessSettings, pairing: Pairing
) -> ReferencePlan:
    """Check a pair before anything is decoded; a `Rejection` with the reason for a bad one."""
    if not sample.reference:
        raise Rejection(f"no reference video (its {pairing.column!r} is empty or missing)")
    rel = sample.reference_relpath
    try:
        info = probe(sample.reference)
    except MediaError as exc:
        raise Rejection(f"reference unreadable: {rel}: {exc}") from None
    if aspect_error(info.width, info.height, target.width / target.height) > DEFAULT_ASPECT_TOLERANCE:
        raise Rejection(
            f"reference aspect differs: {rel} is {info.width}x{info.height}, the target "
            f"{target.width}x{target.height}; cropped to one size they would not line up"
        )
    reference_size = (size[0] // pairing.downscale, size[1] // pairing.downscale)
    return ReferencePlan(rel, info, _frames(info, count, settings, rel), reference_size)


def _frames(info: MediaInfo, count: int, settings: PreprocessSettings, rel: str) -> FrameSelection:
    """The reference's frames: the target's count, at its fps from its start (padded only as the target may be)."""
    if info.kind == "image":
        if count != 1:
            raise Rejection(f"reference too short: {rel} is an image (1 frame), the target takes {count}")
        return info.select_frames(settings.fps, 1)
    available = info.available_frames(settings.fps, settings.start)
    if available < count:
        if settings.frames_policy != "pad" or available < 1:
            raise Rejection(
                f"reference too short: {rel} gives {available} frame(s) at {settings.fps:g} fps from "
                f"t={settings.start:g}s, the target takes {count}"
            )
        return pad_selection(info.select_frames(settings.fps, available, settings.start), count)
    selection = info.select_frames(settings.fps, count, settings.start)
    if selection.repeated and settings.low_fps == "skip":
        raise Rejection(
            f"reference below the target fps: {rel} is {info.avg_fps:.3g} fps, {selection.repeated} of {count} "
            f"frames would repeat at {settings.fps:g} fps (pass --low-fps repeat to keep it)"
        )
    return selection


def encode_reference(
    reference: ReferencePlan, processor: Processor, pairing: Pairing, seed: int
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Decode and encode a checked reference: its latents [C, F, H', W'] and the manifest fields that describe it."""
    try:
        frames = read_frames(reference.info, reference.selection.indices, reference.size)
    except MediaError as exc:
        raise Rejection(f"reference unreadable: {reference.relpath}: {exc}") from None
    latents = processor.encode_video(frames, seed=seed, encode=pairing.encode)
    width, height = reference.size
    selection, info = reference.selection, reference.info
    return latents, {
        "reference": reference.relpath,
        "reference_source_fps": round_time(info.avg_fps),
        "reference_source_size": [info.width, info.height],
        "reference_source_frames": list(selection.indices),
        "reference_repeated": selection.repeated,
        "reference_padded": selection.padded,
        "reference_pixel_shape": [len(selection.indices), height, width],
        "reference_shape": list(latents.shape),
    }
