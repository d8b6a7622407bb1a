"""Named tensor operations a spec expression may call. The list here is the whole of it."""

from __future__ import annotations

import builtins
import math
from collections.abc import Callable
from typing import Any

import torch

from ltxc.geometry import Geometry

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "long": torch.long}


def _cast(dtype: torch.dtype) -> Callable[[Any], torch.Tensor]:
    def cast(value: Any) -> torch.Tensor:
        return value.to(dtype) if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=dtype)

    return cast


def _tensor(values: Any, dtype: str = "float32") -> torch.Tensor:
    return torch.tensor(values, dtype=_DTYPES[dtype])


def op_table(geometry: Geometry) -> dict[str, Callable[..., Any]]:
    """Every op, bound to a plan's geometry (so `pack` packs the way the spec says)."""
    return {
        "pack": geometry.pack,
        "unpack": geometry.unpack,
        "float32": _cast(torch.float32),
        "bfloat16": _cast(torch.bfloat16),
        "long": _cast(torch.long),
        "tensor": _tensor,
        "min": builtins.min,
        "max": builtins.max,
        "round": builtins.round,
        "floor": math.floor,
        "ceil": math.ceil,
    }
