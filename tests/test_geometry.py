"""Property tests for `ltxc.geometry`: the frame rule, the resolution rule, pixel <-> latent <-> token
arithmetic and pack/unpack, checked against brute-force definitions and one hand-worked token order.
The last section pins the LTX-Video numbers from the compiled `specs/ltx.toml`.

Run: `pytest tests/test_geometry.py` (a few seconds; no weights, no network, CPU only).
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from conftest import SPECS
from hypothesis import given, settings
from hypothesis import strategies as st

from ltxc.compiler import compile_spec
from ltxc.geometry import FrameRule, Geometry, ShapeError
from ltxc.spec import load_spec

PROPERTY = settings(max_examples=80, deadline=None)
TENSOR_PROPERTY = settings(max_examples=50, deadline=None)


# -- frame rule -------------------------------------------------------------------------------------


@st.composite
def frame_rules(draw: st.DrawFn) -> FrameRule:
    multiple = draw(st.integers(1, 16))
    return FrameRule(multiple, draw(st.integers(0, multiple - 1)))


def brute_valid(rule: FrameRule, up_to: int) -> list[int]:
    """The rule's definition: multiple * k + offset for k >= 0, and at least one frame."""
    return [n for k in range(up_to + 1) if 1 <= (n := rule.multiple * k + rule.offset) <= up_to]


@PROPERTY
@given(frame_rules())
def test_is_valid_matches_definition(rule: FrameRule) -> None:
    valid = set(brute_valid(rule, 200))
    for n in range(-5, 201):
        assert rule.is_valid(n) == (n in valid), n


@PROPERTY
@given(frame_rules(), st.integers(-3, 300))
def test_valid_counts_matches_definition(rule: FrameRule, up_to: int) -> None:
    assert rule.valid_counts(up_to) == brute_valid(rule, up_to)


@PROPERTY
@given(frame_rules())
def test_minimum_is_smallest_valid_count(rule: FrameRule) -> None:
    assert rule.minimum == brute_valid(rule, 100)[0]


@PROPERTY
@given(frame_rules(), st.integers(0, 400))
def test_fit_is_largest_valid_count_not_above(rule: FrameRule, extra: int) -> None:
    available = rule.minimum + extra
    fitted = rule.fit(available)
    assert rule.is_valid(fitted)
    assert fitted <= available
    assert available - fitted < rule.multiple
    assert fitted == max(brute_valid(rule, available))


@PROPERTY
@given(frame_rules(), st.integers(-50, 16))
def test_fit_below_minimum_raises(rule: FrameRule, available: int) -> None:
    if available >= rule.minimum:
        assert rule.fit(available) <= available
        return
    with pytest.raises(ShapeError, match=rf"at least {rule.minimum}\b"):
        rule.fit(available)


@PROPERTY
@given(frame_rules(), st.integers(-20, 300))
def test_check_accepts_valid_and_names_a_valid_count_otherwise(rule: FrameRule, n: int) -> None:
    if rule.is_valid(n):
        rule.check(n)
        return
    with pytest.raises(ShapeError) as info:
        rule.check(n)
    message = str(info.value)
    assert str(n) in message
    suggestion = message.rsplit("use", 1)[1]
    suggested = [int(s) for s in re.findall(r"-?\d+", suggestion)]
    assert suggested, message
    assert all(rule.is_valid(s) for s in suggested), message


def test_ltx_frame_rule_messages() -> None:
    rule = FrameRule(8, 1)
    assert rule.describe() == "8n+1"
    assert rule.valid_counts(30) == [1, 9, 17, 25]
    with pytest.raises(ShapeError, match=r"16 frames .*8n\+1.*use 9 or 17"):
        rule.check(16)


# -- resolution rule --------------------------------------------------------------------------------


def geometry(resolution_multiple: int, spatial: int = 1, patch: tuple[int, int, int] = (1, 1, 1)) -> Geometry:
    return Geometry(4, spatial, 1, FrameRule(1, 0), resolution_multiple, patch)


@PROPERTY
@given(st.integers(1, 64), st.integers(-70, 300), st.integers(-70, 300))
def test_check_resolution_iff_positive_multiples(multiple: int, height: int, width: int) -> None:
    g = geometry(multiple)
    ok = all(v > 0 and v % multiple == 0 for v in (height, width))
    if ok:
        g.check_resolution(height, width)
        return
    with pytest.raises(ShapeError, match=rf"(a multiple|multiples) of {multiple} pixels") as info:
        g.check_resolution(height, width)
    message = str(info.value)
    for name, v in (("height", height), ("width", width)):
        bad = v <= 0 or v % multiple
        assert (f"{name} {v}" in message) == bool(bad), message
        if bad:
            assert f"{name} -> {g.fit_resolution(v)}" in message


@PROPERTY
@given(st.integers(1, 64), st.integers(-10, 5000))
def test_fit_resolution(multiple: int, pixels: int) -> None:
    fitted = geometry(multiple).fit_resolution(pixels)
    assert fitted % multiple == 0
    assert fitted >= multiple
    if pixels >= multiple:
        assert fitted <= pixels
        assert pixels - fitted < multiple
    else:
        assert fitted == multiple


# -- pack / unpack ----------------------------------------------------------------------------------

patches = st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3))


@st.composite
def grids(draw: st.DrawFn) -> tuple[Geometry, torch.Tensor]:
    """A geometry with a random patch and a random [B, C, F, H, W] latent on a patch-divisible grid."""
    pt, ph, pw = draw(patches)
    b, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    f, h, w = pt * draw(st.integers(1, 3)), ph * draw(st.integers(1, 3)), pw * draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    x = torch.randn(b, c, f, h, w, generator=torch.Generator().manual_seed(seed))
    return Geometry(c, 1, 1, FrameRule(1, 0), 1, (pt, ph, pw)), x


@TENSOR_PROPERTY
@given(grids())
def test_unpack_pack_is_identity(case: tuple[Geometry, torch.Tensor]) -> None:
    g, x = case
    b, c, f, h, w = x.shape
    pt, ph, pw = g.patch
    tokens = g.pack(x)
    assert list(tokens.shape) == [b, (f // pt) * (h // ph) * (w // pw), c * pt * ph * pw]
    assert tokens.shape[-1] == g.token_features
    assert torch.equal(g.unpack(tokens, f, h, w), x)


@TENSOR_PROPERTY
@given(grids(), st.integers(0, 2**31 - 1))
def test_pack_unpack_is_identity_on_tokens(case: tuple[Geometry, torch.Tensor], seed: int) -> None:
    g, x = case
    *_, f, h, w = x.shape
    tokens = torch.randn(g.pack(x).shape, generator=torch.Generator().manual_seed(seed))
    latents = g.unpack(tokens, f, h, w)
    assert list(latents.shape) == list(x.shape)
    assert torch.equal(g.pack(latents), tokens)


@TENSOR_PROPERTY
@given(grids())
def test_grid_layout_passes_through(case: tuple[Geometry, torch.Tensor]) -> None:
    g, x = case
    grid = Geometry(g.latent_channels, 1, 1, g.frame_rule, 1, g.patch, "grid")
    _, _, f, h, w = x.shape
    assert grid.pack(x) is x
    assert grid.unpack(x, f, h, w) is x


def test_token_order_frame_major_then_row_then_column() -> None:
    # value = 1000 c + 100 f + 10 h + w; patch 1: token t is (f, h, w) in row-major order, features are channels
    c, f, h, w = 2, 2, 3, 4
    fs, hs, ws = torch.meshgrid(torch.arange(f), torch.arange(h), torch.arange(w), indexing="ij")
    x = torch.stack([1000 * ci + 100 * fs + 10 * hs + ws for ci in range(c)])[None].float()
    tokens = Geometry(c, 1, 1, FrameRule(1, 0), 1).pack(x)
    expected = [
        [1000 * ci + 100 * fi + 10 * hi + wi for ci in range(c)]
        for fi in range(f)
        for hi in range(h)
        for wi in range(w)
    ]
    assert tokens[0].tolist() == expected
    assert tokens[0, :5, 0].tolist() == [0, 1, 2, 3, 10]  # the column moves fastest, then the row


def test_token_order_with_patch() -> None:
    # Tokens: (f // pt, h // ph, w // pw) frame-major; features: channel-major, then (t, y, x) offsets in the patch.
    pt, ph, pw = 2, 2, 3
    c, f, h, w = 2, 4, 4, 6
    cs, fs, hs, ws = torch.meshgrid(*(torch.arange(n) for n in (c, f, h, w)), indexing="ij")
    x = (1000 * cs + 100 * fs + 10 * hs + ws)[None].float()
    tokens = Geometry(c, 1, 1, FrameRule(1, 0), 1, (pt, ph, pw)).pack(x)[0]
    gh, gw = h // ph, w // pw
    for t in range(tokens.shape[0]):
        tf, th, tw = t // (gh * gw), (t // gw) % gh, t % gw
        for d in range(tokens.shape[1]):
            ci, rest = divmod(d, pt * ph * pw)
            of, rest = divmod(rest, ph * pw)
            oh, ow = divmod(rest, pw)
            value = 1000 * ci + 100 * (tf * pt + of) + 10 * (th * ph + oh) + (tw * pw + ow)
            assert tokens[t, d].item() == value, (t, d)


# -- pixels <-> latents <-> tokens ------------------------------------------------------------------


@st.composite
def consistent_geometries(draw: st.DrawFn) -> Geometry:
    """Geometries `compile_spec` would accept: 1 + (multiple of temporal_compression) frames, patch-divisible cells."""
    tc, sc = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    pt, ph, pw = draw(patches)
    cells = math.lcm(ph, pw) * draw(st.integers(1, 2))
    rule = FrameRule(tc * draw(st.integers(1, 3)), 1)
    return Geometry(draw(st.integers(1, 16)), sc, tc, rule, sc * cells, (pt, ph, pw))


@PROPERTY
@given(consistent_geometries(), st.integers(0, 6), st.integers(1, 4), st.integers(1, 4))
def test_latent_shape_for_valid_sizes(g: Geometry, k: int, a: int, b: int) -> None:
    frames = g.frame_rule.multiple * k + g.frame_rule.offset
    height, width = g.resolution_multiple * a, g.resolution_multiple * b
    latent_frames = g.latent_frames(frames)
    assert latent_frames == (frames - 1) // g.temporal_compression + 1
    assert g.pixel_frames(latent_frames) == frames
    pt, ph, pw = g.patch
    if latent_frames % pt:
        with pytest.raises(ShapeError, match="not divisible by the patch"):
            g.latent_shape(frames, height, width)
        return
    shape = g.latent_shape(frames, height, width)
    dims = [latent_frames, height // g.spatial_compression, width // g.spatial_compression]
    assert shape.as_list() == [g.latent_channels, *dims]
    assert shape.tokens == math.prod(dims) // (pt * ph * pw)
    assert shape.tokens * (pt * ph * pw) == math.prod(dims)
    assert g.tokens(frames, height, width) == shape.tokens


@PROPERTY
@given(consistent_geometries(), st.integers(1, 300))
def test_latent_shape_rejects_invalid_frames(g: Geometry, frames: int) -> None:
    if g.frame_rule.is_valid(frames):
        return
    with pytest.raises(ShapeError, match="not a valid count"):
        g.latent_shape(frames, g.resolution_multiple, g.resolution_multiple)


@pytest.fixture(scope="module")
def ltx() -> Geometry:
    return compile_spec(load_spec(SPECS / "ltx.toml")).geometry


@pytest.mark.parametrize(
    ("width", "height", "frames", "shape", "tokens"),
    [
        (768, 512, 121, [128, 16, 16, 24], 6144),
        (1216, 704, 121, [128, 16, 22, 38], 13376),
        (32, 32, 1, [128, 1, 1, 1], 1),
    ],
)
def test_ltx_latent_shapes(ltx: Geometry, width: int, height: int, frames: int, shape: list[int], tokens: int) -> None:
    assert ltx.latent_shape(frames, height, width).as_list() == shape
    assert ltx.tokens(frames, height, width) == tokens
    assert ltx.token_features == 128


def test_ltx_rejects_invalid_sizes(ltx: Geometry) -> None:
    with pytest.raises(ShapeError, match=r"16 frames is not a valid count \(8n\+1\); use 9 or 17"):
        ltx.latent_shape(16, 512, 768)
    with pytest.raises(ShapeError, match=r"width 500 must be a multiple of 32 pixels .*width -> 480"):
        ltx.latent_shape(121, 512, 500)
    with pytest.raises(ShapeError, match=r"height 500 and width 700 .*height -> 480, width -> 672"):
        ltx.latent_shape(121, 500, 700)
