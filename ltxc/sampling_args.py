"""The sampler's call arguments: the prompts as a list, a size as given or else the spec's default."""

from __future__ import annotations

from collections.abc import Sequence

from ltxc.errors import UserError


def prompt_list(prompts: Sequence[str]) -> list[str]:
    """The prompts as a list (a lone string is one prompt); an error when there are none."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise UserError("no prompts to generate from")
    return list(prompts)


def size_or_default(value: int | None, default: int | None, name: str) -> int:
    """`value`, else the spec's default; a clear error when neither is set."""
    if value is None:
        value = default
    if value is None:
        raise UserError(f"no {name} given and the spec's [sampler] has no default {name}")
    return int(value)
