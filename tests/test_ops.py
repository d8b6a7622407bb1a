"""Ops a spec expression may call that carry model-independent maths: checked against diffusers' own code.

`pixel_boxes` (each token's pixel-space [start, end) box, time in seconds) must equal the positions the
reference transformer computes for itself (`LTX2AudioVideoRotaryPosEmbed.prepare_video_coords`), for any
grid, patch, fps and causal offset.

Run: pytest -q tests/test_ops.py
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ltxc.geometry import FrameRule, Geometry
from ltxc.ops import op_table, pixel_boxes
from ltxc.spec.expr import compile_expr

rope_module = pytest.importorskip("diffusers.models.transformers.transformer_ltx2")


@settings(max_examples=40, deadline=None)
@given(
    frames=st.integers(1, 5),
    height=st.integers(1, 6),
    width=st.integers(1, 6),
    batch=st.integers(1, 3),
    patch=st.sampled_from([(1, 1), (1, 2), (2, 1)]),
    fps=st.sampled_from([24.0, 25.0, 30.0, 12.5]),
    causal_offset=st.integers(0, 2),
    compression=st.sampled_from([(8, 32), (4, 8), (4, 16)]),
)
def test_pixel_boxes_equal_the_reference_positions(
    frames, height, width, batch, patch, fps, causal_offset, compression
) -> None:
    patch_t, patch_s = patch
    temporal, spatial = compression
    # a grid every patch divides
    frames, height, width = frames * patch_t, height * patch_s, width * patch_s
    rope = rope_module.LTX2AudioVideoRotaryPosEmbed(
        dim=12,
        patch_size=patch_s,
        patch_size_t=patch_t,
        scale_factors=(temporal, spatial, spatial),
        causal_offset=causal_offset,
    )
    theirs = rope.prepare_video_coords(batch, frames, height, width, torch.device("cpu"), fps=fps)
    geometry = Geometry(8, spatial, temporal, FrameRule(temporal, 1), spatial * patch_s, (patch_t, patch_s, patch_s))
    like = torch.zeros(batch, 1)
    ours = pixel_boxes(geometry, like, frames, height, width, fps, causal_offset)
    assert ours.shape == theirs.shape == (batch, 3, (frames // patch_t) * (height // patch_s) * (width // patch_s), 2)
    assert torch.equal(ours, theirs)


def test_pixel_boxes_follow_the_packing_order() -> None:
    """Token k's box is the cell `pack` puts at position k: frame-major, then row, then column."""
    geometry = Geometry(2, 32, 8, FrameRule(8, 1), 32)
    boxes = pixel_boxes(geometry, torch.zeros(1), 2, 2, 3, fps=25.0)[0]  # [3, 12, 2]
    grid = torch.arange(2 * 2 * 3).reshape(1, 1, 2, 2, 3).expand(1, 2, 2, 2, 3).float()
    order = geometry.pack(grid)[0, :, 0].long()  # token k holds cell number order[k]
    f, rest = order // 6, order % 6
    h, w = rest // 3, rest % 3
    assert torch.equal(boxes[1, :, 0], h.float() * 32) and torch.equal(boxes[2, :, 0], w.float() * 32)
    # time: frame 0 covers [0, 1) pixel frames, frame 1 covers [1, 9): in seconds at 25 fps
    expected_start = torch.where(f == 0, 0.0, (f * 8 + 1 - 8).float()) / 25.0
    assert torch.allclose(boxes[0, :, 0], expected_start)


def test_shape_ops_in_an_expression() -> None:
    geometry = Geometry(8, 32, 8, FrameRule(8, 1), 32)
    ops = op_table(geometry)
    pack = compile_expr("flatten(transpose(x, 1, 2), 2)", {"x"}, ops)
    x = torch.randn(2, 8, 5, 4)  # [B, C, L, M]
    packed = pack({"x": x})
    assert packed.shape == (2, 5, 32) and torch.equal(packed, x.transpose(1, 2).flatten(2, 3))
    length = compile_expr("size(x, 1)", {"x"}, ops)
    assert length({"x": packed}) == 5
    flag = compile_expr("not training", {"training"}, ops)
    assert flag({"training": True}) is False and flag({"training": False}) is True


@settings(max_examples=25, deadline=None)
@given(
    frames=st.integers(1, 4),
    height=st.integers(1, 5),
    width=st.integers(1, 5),
    batch=st.integers(1, 2),
    downscale=st.integers(1, 4),
    fps=st.sampled_from([24.0, 25.0, 12.5]),
)
def test_pixel_boxes_spatial_scale_equals_the_reference_video_positions(
    frames, height, width, batch, downscale, fps
) -> None:
    """LTX2InContextPipeline's reference positions: `prepare_video_coords` at the reference's own latent grid, then
    rows and columns x reference_downscale_factor, time untouched (pipeline_ltx2_ic_lora.py:1449-1460)."""
    rope = rope_module.LTX2AudioVideoRotaryPosEmbed(
        dim=12, patch_size=1, patch_size_t=1, scale_factors=(8, 32, 32), causal_offset=1
    )
    theirs = rope.prepare_video_coords(batch, frames, height, width, torch.device("cpu"), fps=fps)
    if downscale != 1:
        theirs[:, 1, :, :] = theirs[:, 1, :, :] * downscale
        theirs[:, 2, :, :] = theirs[:, 2, :, :] * downscale
    geometry = Geometry(128, 32, 8, FrameRule(8, 1), 32)
    ours = pixel_boxes(geometry, torch.zeros(batch, 1), frames, height, width, fps, spatial_scale=downscale)
    assert torch.equal(ours, theirs)
    # through an expression, as a task's call mapping writes it; the default scale is today's behaviour
    expr = compile_expr(
        "pixel_boxes(x, f, h, w, fps, spatial_scale=d)", {"x", "f", "h", "w", "fps", "d"}, op_table(geometry)
    )
    env = {"x": torch.zeros(batch, 1), "f": frames, "h": height, "w": width, "fps": fps, "d": downscale}
    assert torch.equal(expr(env), theirs)
    plain = pixel_boxes(geometry, torch.zeros(batch, 1), frames, height, width, fps)
    assert torch.equal(plain[:, 0], ours[:, 0])  # time is never scaled
    assert torch.equal(plain[:, 1:] * downscale, ours[:, 1:])
