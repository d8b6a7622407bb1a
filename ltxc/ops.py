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


def _size(x: torch.Tensor, dim: int) -> int:
    return int(x.shape[dim])


def _transpose(x: torch.Tensor, dim0: int, dim1: int) -> torch.Tensor:
    return x.transpose(dim0, dim1)


def _flatten(x: torch.Tensor, start: int = 0, end: int = -1) -> torch.Tensor:
    return x.flatten(start, end)


def _unflatten(x: torch.Tensor, dim: int, sizes: Any) -> torch.Tensor:
    return x.unflatten(dim, tuple(sizes))


def _unsqueeze(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x.unsqueeze(dim)


def _cat(tensors: Any, dim: int = 0) -> torch.Tensor:
    return torch.cat(list(tensors), dim=dim)


def cast_like(value: Any, like: torch.Tensor) -> torch.Tensor:
    """`value` in `like`'s dtype and on its device (e.g. a timestep in the latents' dtype, as pipelines cast it)."""
    if isinstance(value, torch.Tensor):
        return value.to(device=like.device, dtype=like.dtype)
    return torch.tensor(value, dtype=like.dtype, device=like.device)


def zeros(shape: Any, like: torch.Tensor) -> torch.Tensor:
    """Zeros of `shape` (a list of sizes) in `like`'s dtype and on its device."""
    return torch.zeros([int(n) for n in shape], dtype=like.dtype, device=like.device)


def grid_coordinates(sizes: Any, like: torch.Tensor) -> torch.Tensor:
    """Each cell's integer coordinates on a grid of `sizes`, row-major: [prod(sizes), len(sizes)] in `like`'s dtype.

    E.g. sizes [1, H, W] gives (0, row, column) per token in `Geometry.pack`'s order (frame, then row, then column).
    Built in float32 and then cast, as pipelines build position ids.
    """
    axes = [torch.arange(int(n), dtype=torch.float32) for n in sizes]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(axes))
    return grid.to(device=like.device, dtype=like.dtype)


def pixel_boxes(
    geometry: Geometry,
    like: torch.Tensor,
    frames: int,
    height: int,
    width: int,
    fps: float,
    causal_offset: int = 1,
    spatial_scale: int = 1,
) -> torch.Tensor:
    """Each token's [start, end) box in pixel space, float32 [B, 3, tokens, 2] on `like`'s device.

    Axis 1 is (time, row, column). Latent cells are scaled by the compression factors; time is shifted by
    the causal first frame (a latent frame k > 0 covers pixel frames 8k-7..8k; the first covers frame 0
    alone), clamped at 0 and divided by `fps`, so positions are in seconds. Tokens run frame-major, then
    row, then column, as `Geometry.pack` orders them. `spatial_scale` multiplies rows and columns afterwards
    (time untouched): a reference encoded at the target's size / k placed over the target's grid.
    """
    pt, ph, pw = geometry.patch
    device = like.device
    axes = [
        torch.arange(0, size, step, dtype=torch.float32, device=device)
        for size, step in ((frames, pt), (height, ph), (width, pw))
    ]
    starts = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)  # [3, F', H', W']
    patch = torch.tensor([pt, ph, pw], dtype=torch.float32, device=device).view(3, 1, 1, 1)
    boxes = torch.stack([starts, starts + patch], dim=-1).flatten(1, 3)  # [3, tokens, 2]
    s, t = geometry.spatial_compression, geometry.temporal_compression
    scale = torch.tensor([t, s, s], dtype=torch.float32, device=device).view(3, 1, 1)
    boxes = boxes * scale
    boxes[0] = (boxes[0] + causal_offset - t).clamp(min=0) / fps
    if spatial_scale != 1:
        boxes[1:] = boxes[1:] * spatial_scale
    return boxes.unsqueeze(0).repeat(like.shape[0], 1, 1, 1)


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
        "size": _size,
        "transpose": _transpose,
        "flatten": _flatten,
        "unflatten": _unflatten,
        "unsqueeze": _unsqueeze,
        "cat": _cat,
        "cast": cast_like,
        "zeros": zeros,
        "grid_coordinates": grid_coordinates,
        "pixel_boxes": lambda like, frames, height, width, fps, causal_offset=1, spatial_scale=1: pixel_boxes(
            geometry, like, frames, height, width, fps, causal_offset, spatial_scale
        ),
    }
