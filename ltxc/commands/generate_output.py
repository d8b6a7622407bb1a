"""`ltxc run generate`'s choices that depend on the spec: the output file's kind and `--input NAME=VALUE`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from ltxc.errors import UserError
from ltxc.plan import Plan

DEFAULT_STEM = "generated"
# what a model that makes one frame per sample writes: a still, or its raw float frames
IMAGE_SUFFIXES = (".png", ".safetensors")


def makes_images(plan: Plan) -> bool:
    """True when the spec's frame rule allows only one frame (an image model)."""
    return plan.geometry.frame_rule.largest == 1


def output_for(plan: Plan, output: Path | None) -> Path:
    """`--output` as given, or with the spec's kind of file when it has no suffix (none: `generated.png` for an
    image model, `generated.mp4` otherwise); an image model refuses a video file (.mp4, .gif)."""
    default = ".png" if makes_images(plan) else ".mp4"
    if output is None:
        return Path(DEFAULT_STEM + default)
    if not output.suffix:
        return output.with_suffix(default)
    if makes_images(plan) and output.suffix.lower() not in IMAGE_SUFFIXES:
        raise UserError(
            f"--output {output}: spec {plan.name!r} makes images (its frame rule allows one frame), not videos; "
            f"use {' or '.join(IMAGE_SUFFIXES)}, e.g. --output {output.with_suffix('.png')}"
        )
    return output


def parse_inputs(items: Sequence[str], plan: Plan) -> dict[str, float]:
    """`--input NAME=VALUE` items -> {name: value}, each a number for one of the spec's `[inputs]`."""
    have = ", ".join(sorted(plan.inputs)) or "none"
    values: dict[str, float] = {}
    for item in items:
        name, eq, text = (part.strip() for part in item.partition("="))
        example = f"--input {next(iter(sorted(plan.inputs)), 'guidance')}=4.0"
        if not eq or not name:
            raise UserError(f"--input {item!r}: expected NAME=VALUE, e.g. {example}")
        if name not in plan.inputs:
            raise UserError(f"--input {item!r}: spec {plan.name!r} has no input {name!r} (its [inputs]: {have})")
        try:
            value = float(text)
        except ValueError:
            raise UserError(f"--input {item!r}: {text!r} is not a number, e.g. {example}") from None
        if not math.isfinite(value):
            raise UserError(f"--input {item!r}: the value must be a finite number")
        if name in values:
            raise UserError(f"--input {item!r}: {name} is given twice")
        values[name] = value
    return values
