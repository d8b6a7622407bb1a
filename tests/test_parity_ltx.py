"""Parity with diffusers' LTXPipeline, the oracle for LTX-Video: `Geometry.pack/unpack` against
`LTXPipeline._pack_latents/_unpack_latents`, and the normalisers (directly and as `Plan.normaliser` builds
them from the compiled tiny spec) against `LTXPipeline._normalize_latents/_denormalize_latents`.

Run: `pytest tests/test_parity_ltx.py` (CPU only, tiny random-weight components, nothing downloaded).
"""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import torch
from conftest import TINY_LTX
from diffusers import LTXPipeline

from ltxc.compiler import compile_spec
from ltxc.geometry import FrameRule, Geometry
from ltxc.normalise import Identity, MeanStd, ShiftScale
from ltxc.plan import Plan
from ltxc.spec import load_spec
from ltxc.spec import types as spec_types

CHANNELS = 128  # the tiny spec keeps LTX-Video's 128 latent channels


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def ltx_geometry(channels: int, pt: int, p: int) -> Geometry:
    return Geometry(channels, 32, 8, FrameRule(8, 1), 32, (pt, p, p))


# -- pack / unpack ----------------------------------------------------------------------------------

SHAPES = [(1, 128, 1, 1, 1), (1, 128, 3, 5, 7), (2, 128, 4, 6, 8), (1, 8, 6, 4, 10), (3, 4, 2, 2, 2), (2, 3, 8, 12, 6)]
PATCHES = [(pt, p) for pt in (1, 2) for p in (1, 2)]
CASES = [(s, pt, p) for s in SHAPES for pt, p in PATCHES if s[2] % pt == 0 and s[3] % p == 0 and s[4] % p == 0]


@pytest.mark.parametrize(("shape", "pt", "p"), CASES)
def test_pack_unpack_match_diffusers(shape: tuple[int, ...], pt: int, p: int) -> None:
    b, c, f, h, w = shape
    g = ltx_geometry(c, pt, p)
    x = randn(*shape, seed=sum(shape) + 10 * pt + p)
    ours = g.pack(x)
    theirs = LTXPipeline._pack_latents(x, p, pt)
    assert ours.shape == theirs.shape == (b, (f // pt) * (h // p) * (w // p), c * pt * p * p)
    assert torch.equal(ours, theirs)

    tokens = randn(*theirs.shape, seed=7)
    unpacked = g.unpack(tokens, f, h, w)
    assert unpacked.shape == x.shape
    assert torch.equal(unpacked, LTXPipeline._unpack_latents(tokens, f // pt, h // p, w // p, p, pt))


def test_pack_matches_diffusers_in_bfloat16() -> None:
    x = randn(2, 16, 4, 6, 4, seed=3, dtype=torch.bfloat16)
    ours = ltx_geometry(16, 2, 2).pack(x)
    assert ours.dtype == torch.bfloat16
    assert torch.equal(ours, LTXPipeline._pack_latents(x, 2, 2))


# -- normalisers ------------------------------------------------------------------------------------


def stats(channels: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-trivial per-channel mean and std (std bounded away from 0)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(channels, generator=gen), torch.rand(channels, generator=gen) + 0.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("scaling_factor", [0.5, 1.7])
def test_mean_std_matches_diffusers(dtype: torch.dtype, scaling_factor: float) -> None:
    mean, std = stats(CHANNELS, seed=1)
    norm = MeanStd(mean, std, scaling_factor)
    x = randn(2, CHANNELS, 3, 4, 5, seed=2, dtype=dtype)

    normalised = norm.normalise(x)
    assert normalised.dtype == dtype
    assert torch.equal(normalised, LTXPipeline._normalize_latents(x, mean, std, scaling_factor))
    assert torch.equal(norm.denormalise(x), LTXPipeline._denormalize_latents(x, mean, std, scaling_factor))
    assert not torch.allclose(normalised, x)  # the statistics did something


def test_mean_std_round_trip() -> None:
    mean, std = stats(CHANNELS, seed=4)
    norm = MeanStd(mean, std, 1.3)
    x = randn(2, CHANNELS, 2, 3, 3, seed=5)
    torch.testing.assert_close(norm.denormalise(norm.normalise(x)), x)
    torch.testing.assert_close(norm.normalise(norm.denormalise(x)), x)


def test_shift_scale_and_identity_round_trip() -> None:
    x = randn(2, 8, 3, 4, 4, seed=6)
    shift_scale = ShiftScale(shift=0.4, scale=2.5)
    normalised = shift_scale.normalise(x)
    torch.testing.assert_close(normalised, (x - 0.4) * 2.5)
    torch.testing.assert_close(shift_scale.denormalise(normalised), x)
    assert torch.equal(Identity().normalise(x), x)
    assert torch.equal(Identity().denormalise(x), x)


# -- through the compiled tiny spec -----------------------------------------------------------------


def child_spec(tmp_path: Path, body: str) -> Path:
    """A spec file that extends the tiny LTX spec (by absolute path) and adds `body`."""
    path = tmp_path / "child.toml"
    path.write_text(f'[model]\nname = "ltx-child"\nextends = "{TINY_LTX.resolve().as_posix()}"\n\n{body}\n')
    return path


def randomise_vae_statistics(vae: torch.nn.Module, seed: int) -> None:
    """The buffers default to zeros / ones, against which a normaliser that ignored them would still pass."""
    mean, std = stats(CHANNELS, seed)
    with torch.no_grad():
        vae.latents_mean.copy_(mean)
        vae.latents_std.copy_(std)


@pytest.mark.parametrize("scaling_factor", [None, 0.75])
def test_plan_normaliser_reads_vae_and_matches_diffusers(tmp_path: Path, scaling_factor: float | None) -> None:
    path = TINY_LTX
    if scaling_factor is not None:  # the tiny spec sets the VAE's scaling_factor to 4; a child overrides it
        path = child_spec(tmp_path, f"[components.vae.config]\nscaling_factor = {scaling_factor}")
    plan = compile_spec(load_spec(path))
    components = plan.components()
    vae = components["vae"]
    randomise_vae_statistics(vae, seed=11)
    assert vae.config.scaling_factor == (scaling_factor or 4.0)

    norm = plan.normaliser(components)
    assert isinstance(norm, MeanStd)
    assert torch.equal(norm.mean, vae.latents_mean)
    assert torch.equal(norm.std, vae.latents_std)
    assert norm.scaling_factor == vae.config.scaling_factor

    x = randn(1, CHANNELS, 2, 2, 3, seed=12)
    args = (vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
    assert torch.equal(norm.normalise(x), LTXPipeline._normalize_latents(x, *args))
    assert torch.equal(norm.denormalise(x), LTXPipeline._denormalize_latents(x, *args))
    torch.testing.assert_close(norm.denormalise(norm.normalise(x)), x)


def test_plan_normaliser_with_literal_lists(tmp_path: Path) -> None:
    mean, std = stats(CHANNELS, seed=21)
    mean_list = [round(v, 4) for v in mean.tolist()]
    std_list = [round(v, 4) for v in std.tolist()]
    body = f'[latent]\nnormalise = {{ kind = "mean_std", mean = {mean_list}, std = {std_list}, scaling_factor = 0.6 }}'
    plan = compile_spec(load_spec(child_spec(tmp_path, body)))
    components = plan.components()
    norm = plan.normaliser(components)
    assert isinstance(norm, MeanStd)
    expected_mean = torch.tensor(mean_list, dtype=torch.float32)
    expected_std = torch.tensor(std_list, dtype=torch.float32)
    assert torch.equal(norm.mean, expected_mean)
    assert torch.equal(norm.std, expected_std)
    assert norm.scaling_factor == 0.6
    assert not components.is_built("vae")  # literal statistics need no VAE

    x = randn(2, CHANNELS, 2, 2, 2, seed=22)
    args = (expected_mean, expected_std, 0.6)
    assert torch.equal(norm.normalise(x), LTXPipeline._normalize_latents(x, *args))
    assert torch.equal(norm.denormalise(x), LTXPipeline._denormalize_latents(x, *args))
    torch.testing.assert_close(norm.denormalise(norm.normalise(x)), x)


def with_normaliser(plan: Plan, normaliser: object) -> Plan:
    return attrs.evolve(plan, latent=attrs.evolve(plan.latent, normalise=normaliser))


def test_plan_normaliser_shift_scale_and_none() -> None:
    plan = compile_spec(load_spec(TINY_LTX))
    components = plan.components()
    x = randn(2, CHANNELS, 2, 2, 2, seed=31)

    literal = with_normaliser(plan, spec_types.ShiftScaleSpec("shift_scale", 0.25, 4.0)).normaliser(components)
    assert literal == ShiftScale(0.25, 4.0)
    torch.testing.assert_close(literal.normalise(x), (x - 0.25) * 4.0)
    torch.testing.assert_close(literal.denormalise(literal.normalise(x)), x)

    # a reference to a component's config, read at build time
    referenced = with_normaliser(plan, spec_types.ShiftScaleSpec("shift_scale", 0.5, "vae.config.scaling_factor"))
    assert referenced.normaliser(components) == ShiftScale(0.5, float(components["vae"].config.scaling_factor))

    identity = with_normaliser(plan, spec_types.NoNormaliseSpec("none")).normaliser(components)
    assert isinstance(identity, Identity)
    assert torch.equal(identity.normalise(x), x)


@pytest.mark.parametrize(
    ("table", "expected"),
    [('{ kind = "shift_scale", shift = 0.5, scale = 2.0 }', ShiftScale(0.5, 2.0)), ('{ kind = "none" }', Identity())],
)
def test_child_spec_can_switch_normaliser_kind(tmp_path: Path, table: str, expected: object) -> None:
    plan = compile_spec(load_spec(child_spec(tmp_path, f"[latent]\nnormalise = {table}")))
    assert plan.normaliser(plan.components()) == expected
