"""Shapes in one place: the frame rule, the resolution rule, pixel <-> latent <-> tokens, pack/unpack."""

from __future__ import annotations

import math
from typing import Literal

import torch
from attrs import frozen

from ltxc.errors import UserError


class ShapeError(UserError):
    """A frame count or resolution the model cannot take."""


@frozen
class FrameRule:
    """Valid frame counts are `multiple * k + offset`, k >= 0 (e.g. 8k+1), up to `maximum` when set (1: images)."""

    multiple: int
    offset: int
    maximum: int | None = None

    @property
    def minimum(self) -> int:
        """The smallest valid count (at least 1 frame)."""
        return self.offset if self.offset >= 1 else self.multiple

    def is_valid(self, frames: int) -> bool:
        """True when `frames` obeys the rule."""
        within = self.maximum is None or frames <= self.maximum
        return within and frames >= self.minimum and (frames - self.offset) % self.multiple == 0

    def valid_counts(self, up_to: int) -> list[int]:
        """Every valid count <= `up_to`, ascending."""
        top = up_to if self.maximum is None else min(up_to, self.maximum)
        return list(range(self.minimum, top + 1, self.multiple))

    @property
    def largest(self) -> int | None:
        """The largest valid count, or None without a maximum."""
        if self.maximum is None:
            return None
        return self.maximum - (self.maximum - self.offset) % self.multiple

    def fit(self, available: int) -> int:
        """The largest valid count <= `available`; a `ShapeError` below the minimum."""
        if available < self.minimum:
            raise ShapeError(
                f"{available} frame(s) available, but the model needs at least {self.minimum} "
                f"(valid counts are {self.describe()})"
            )
        if self.largest is not None and available > self.largest:
            return self.largest  # an image model takes one frame of a longer clip
        return available - (available - self.offset) % self.multiple

    def check(self, frames: int) -> None:
        """Raise a `ShapeError` naming the nearest valid counts unless `frames` is valid."""
        if not self.is_valid(frames) and self.largest is not None and frames > self.largest:
            what = "one frame (an image)" if self.largest == 1 else f"at most {self.largest} frames"
            raise ShapeError(f"{frames} frames is not a valid count: the model takes {what}; use {self.largest}")
        if not self.is_valid(frames):
            below = self.fit(frames) if frames >= self.minimum else None
            above = below + self.multiple if below is not None else self.minimum
            nearest = f"{below} or {above}" if below is not None else f"{above}"
            raise ShapeError(f"{frames} frames is not a valid count ({self.describe()}); use {nearest}")

    def describe(self) -> str:
        """`8n+1`-style description."""
        rule = f"{self.multiple}n+{self.offset}" if self.offset else f"{self.multiple}n"
        if self.largest is not None and self.largest <= self.minimum:
            return f"exactly {self.minimum}"
        return rule if self.maximum is None else f"{rule} up to {self.largest}"


@frozen
class LatentShape:
    """A sample's latent shape [C, F, H, W] and its token count."""

    channels: int
    frames: int
    height: int
    width: int
    tokens: int

    def as_list(self) -> list[int]:
        """[C, F, H, W]."""
        return [self.channels, self.frames, self.height, self.width]


@frozen
class Geometry:
    """Everything about shapes a spec declares, and the rules derived from it."""

    latent_channels: int
    spatial_compression: int
    temporal_compression: int
    frame_rule: FrameRule
    resolution_multiple: int
    patch: tuple[int, int, int] = (1, 1, 1)
    layout: Literal["tokens", "grid"] = "tokens"

    # -- pixels -------------------------------------------------------------------------------------
    def check_resolution(self, height: int, width: int) -> None:
        """Raise a `ShapeError` unless height and width are positive multiples of the resolution rule."""
        m = self.resolution_multiple
        bad = [f"{name} {v}" for name, v in (("height", height), ("width", width)) if v < m or v % m]
        if bad:
            fix = ", ".join(f"{name} -> {self.fit_resolution(int(v))}" for name, v in (b.split() for b in bad))
            must = "must be a multiple" if len(bad) == 1 else "must be multiples"
            raise ShapeError(f"{' and '.join(bad)} {must} of {m} pixels (nearest below: {fix})")

    def fit_resolution(self, pixels: int) -> int:
        """The largest valid size <= `pixels` (at least one multiple)."""
        m = self.resolution_multiple
        return max(m, pixels - pixels % m)

    def check(self, frames: int, height: int, width: int) -> None:
        """Raise a `ShapeError` unless the pixel size obeys both the frame and resolution rules."""
        self.frame_rule.check(frames)
        self.check_resolution(height, width)

    # -- pixels <-> latents ------------------------------------------------------------------------
    def latent_frames(self, frames: int) -> int:
        """Causal temporal compression: the first frame alone, then one latent per `temporal_compression`."""
        return (frames - 1) // self.temporal_compression + 1

    def pixel_frames(self, latent_frames: int) -> int:
        """Inverse of `latent_frames` for valid counts."""
        return (latent_frames - 1) * self.temporal_compression + 1

    def latent_shape(self, frames: int, height: int, width: int) -> LatentShape:
        """The latent shape and token count of a valid pixel size (checked)."""
        self.check(frames, height, width)
        f = self.latent_frames(frames)
        h, w = height // self.spatial_compression, width // self.spatial_compression
        pt, ph, pw = self.patch
        if f % pt or h % ph or w % pw:
            raise ShapeError(
                f"latent grid {f}x{h}x{w} (frames x height x width) is not divisible by the patch {list(self.patch)}"
            )
        return LatentShape(self.latent_channels, f, h, w, (f // pt) * (h // ph) * (w // pw))

    def tokens(self, frames: int, height: int, width: int) -> int:
        """Transformer tokens for one sample of this pixel size."""
        return self.latent_shape(frames, height, width).tokens

    @property
    def token_features(self) -> int:
        """Features per token in the `tokens` layout: C * pt * ph * pw."""
        return self.latent_channels * math.prod(self.patch)

    def grid_tokens(self, frames: int, height: int, width: int) -> int:
        """Transformer tokens of a latent grid (frames x height x width cells): the cells over the patch."""
        pt, ph, pw = self.patch
        return (frames // pt) * (height // ph) * (width // pw)

    # -- latents <-> transformer layout -------------------------------------------------------------
    def pack(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, C, F, H, W] -> the transformer's layout ([B, F'H'W', C*pt*ph*pw] for `tokens`)."""
        if self.layout == "grid":
            return latents
        b, c, f, h, w = latents.shape
        pt, ph, pw = self.patch
        x = latents.reshape(b, c, f // pt, pt, h // ph, ph, w // pw, pw)
        # tokens frame-major, then row, then column; features channel-major, then the patch offsets
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)
        return x.reshape(b, (f // pt) * (h // ph) * (w // pw), c * pt * ph * pw)

    def unpack(self, tokens: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
        """Inverse of `pack`; `frames/height/width` are the latent grid sizes."""
        if self.layout == "grid":
            return tokens
        b = tokens.shape[0]
        pt, ph, pw = self.patch
        f, h, w = frames // pt, height // ph, width // pw
        x = tokens.reshape(b, f, h, w, -1, pt, ph, pw)
        x = x.permute(0, 4, 1, 5, 2, 6, 3, 7)
        return x.reshape(b, x.shape[1], f * pt, h * ph, w * pw)
