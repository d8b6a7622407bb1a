"""FlowSpec matching (`ltxc.flow`): σ sampling, the shifts, noising, the velocity target, loss weights and the loss.

σ samplers are checked on 200k draws with fixed seeds: uniform mean and quantiles; logit-normal median
and logit-quantiles against N(mean, std); a fixed shift's quantiles against the shift formula applied to
the base distribution's quantiles; the resolution shift against diffusers' `calculate_shift` and
`FlowMatchEulerDiscreteScheduler.time_shift` at several token counts; the uniform fraction (made visible
by a huge shift); float32 output; determinism. Noising and target are checked at σ = 0 and 1, per
sample, and for v-prediction consistency (hypothesis); loss weights through compiled expressions; the
loss and its gradient against a hand computation; the LTX spec's `[flow]` end to end.

Run: `pytest -q tests/test_flow.py`
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import SPECS
from hypothesis import given, settings
from hypothesis import strategies as st

from ltxc.flow import (
    apply_shift,
    flow_loss,
    flow_target,
    loss_weights,
    noisy_latents,
    resolution_mu,
    sample_sigmas,
    shift_value,
)
from ltxc.spec.expr import compile_expr
from ltxc.spec.types import (
    FixedShiftSpec,
    FlowSpec,
    LogitNormalSigmaSpec,
    NoShiftSpec,
    ResolutionShiftSpec,
    UniformSigmaSpec,
)

N = 200_000
QS = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)
LTX_SHIFT = ResolutionShiftSpec(kind="resolution", base_seq_len=1024, max_seq_len=4096, base_shift=0.95, max_shift=2.05)
TOKEN_COUNTS = [256, 1024, 2048, 4096, 6144, 13376]
UNIFORM = UniformSigmaSpec(kind="uniform")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _draw(flow: FlowSpec, tokens: int = 1024, seed: int = 0, n: int = N) -> torch.Tensor:
    return sample_sigmas(flow, n, tokens, _gen(seed))


def _quantiles(x: torch.Tensor) -> torch.Tensor:
    return torch.quantile(x.double(), QS)


def _normal_quantiles(mean: float, std: float) -> torch.Tensor:
    return mean + std * math.sqrt(2) * torch.erfinv(2 * QS - 1)


# --- base distributions ---------------------------------------------------------------------------------


def test_uniform_mean_and_quantiles():
    sigma = _draw(FlowSpec(sigma=UNIFORM))
    # The standard error of the mean is 0.289 / sqrt(200k) ≈ 6.5e-4, of each quantile ≈ 1e-3.
    assert abs(sigma.double().mean().item() - 0.5) < 0.003
    assert torch.allclose(_quantiles(sigma), QS, atol=0.005)
    assert sigma.min().item() > 0 and sigma.max().item() < 1


@pytest.mark.parametrize(("mean", "std"), [(0.0, 1.0), (0.5, 1.5), (-1.0, 0.5)])
def test_logit_normal_logit_quantiles_match_the_normal(mean: float, std: float):
    sigma = _draw(FlowSpec(sigma=LogitNormalSigmaSpec(kind="logit_normal", mean=mean, std=std)))
    logit = torch.logit(sigma.double())
    assert torch.allclose(_quantiles(logit), _normal_quantiles(mean, std), atol=0.02)
    assert abs(sigma.double().median().item() - torch.sigmoid(torch.tensor(mean)).item()) < 0.005


def test_logit_normal_differs_from_uniform():
    # The median alone can't tell them apart (both 0.5); the spread can: logit-normal(0, 1) is centred.
    sigma = _draw(FlowSpec(sigma=LogitNormalSigmaSpec(kind="logit_normal")))
    assert abs(sigma.double().median().item() - 0.5) < 0.005
    inner = ((sigma > 0.25) & (sigma < 0.75)).double().mean().item()
    # P(|Z| < logit(0.75)) = P(|Z| < 1.0986) ≈ 0.728, against 0.5 for uniform.
    assert abs(inner - 0.728) < 0.005


# --- shifts ---------------------------------------------------------------------------------------------


def test_fixed_shift_quantiles_follow_the_formula():
    s = 3.0
    shifted = _draw(FlowSpec(sigma=UNIFORM, shift=FixedShiftSpec(kind="fixed", value=s)))
    # The shift is monotone, so the q-quantile of shifted σ is the shift of the base q-quantile (= q).
    assert torch.allclose(_quantiles(shifted), s * QS / (1 + (s - 1) * QS), atol=0.005)

    logit_normal = LogitNormalSigmaSpec(kind="logit_normal", mean=0.0, std=1.0)
    shifted = _draw(FlowSpec(sigma=logit_normal, shift=FixedShiftSpec(kind="fixed", value=s)), seed=1)
    base_q = torch.sigmoid(_normal_quantiles(0.0, 1.0))
    assert torch.allclose(_quantiles(shifted), s * base_q / (1 + (s - 1) * base_q), atol=0.005)


def test_shift_is_applied_to_the_same_draws():
    # Same seed, same base draws: the shifted sampler is exactly the shift of the unshifted one.
    flow = FlowSpec(sigma=LogitNormalSigmaSpec(kind="logit_normal", mean=0.3, std=0.8))
    plain = sample_sigmas(flow, 4096, 1024, _gen(5))
    fixed = FixedShiftSpec(kind="fixed", value=2.5)
    shifted = sample_sigmas(FlowSpec(sigma=flow.sigma, shift=fixed), 4096, 1024, _gen(5))
    assert torch.allclose(shifted, apply_shift(plain, 2.5), atol=1e-6)
    assert not torch.allclose(shifted, plain, atol=1e-3)


@pytest.mark.parametrize("tokens", TOKEN_COUNTS)
def test_resolution_mu_matches_diffusers_calculate_shift(tokens: int):
    from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift

    expected = calculate_shift(tokens, 1024, 4096, 0.95, 2.05)
    assert resolution_mu(LTX_SHIFT, tokens) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert shift_value(LTX_SHIFT, tokens) == pytest.approx(math.exp(expected), rel=1e-12)


def test_resolution_mu_interpolates_and_extrapolates():
    assert resolution_mu(LTX_SHIFT, 1024) == pytest.approx(0.95)
    assert resolution_mu(LTX_SHIFT, 4096) == pytest.approx(2.05)
    assert resolution_mu(LTX_SHIFT, 2560) == pytest.approx(1.5)
    assert resolution_mu(LTX_SHIFT, 7168) == pytest.approx(3.15)  # one span past max: extrapolated, not clamped
    assert resolution_mu(LTX_SHIFT, 0) == pytest.approx(0.95 - 1.1 / 3)


@pytest.mark.parametrize("tokens", TOKEN_COUNTS)
def test_apply_shift_equals_diffusers_exponential_time_shift(tokens: int):
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True,
        time_shift_type="exponential",
        base_image_seq_len=1024,
        max_image_seq_len=4096,
        base_shift=0.95,
        max_shift=2.05,
    )
    mu = resolution_mu(LTX_SHIFT, tokens)
    sigmas = torch.linspace(1.0, 1 / 50, 50, dtype=torch.float64)
    expected = scheduler.time_shift(mu, 1.0, sigmas)
    assert torch.allclose(apply_shift(sigmas, shift_value(LTX_SHIFT, tokens)), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("tokens", TOKEN_COUNTS)
def test_resolution_shift_sampler_follows_the_formula(tokens: int):
    s = math.exp(resolution_mu(LTX_SHIFT, tokens))
    sigma = _draw(FlowSpec(sigma=UNIFORM, shift=LTX_SHIFT), tokens=tokens, seed=tokens)
    assert torch.allclose(_quantiles(sigma), s * QS / (1 + (s - 1) * QS), atol=0.005)
    # And exactly the fixed shift with s = exp(mu), on the same draws.
    fixed = _draw(FlowSpec(sigma=UNIFORM, shift=FixedShiftSpec(kind="fixed", value=s)), tokens=tokens, seed=tokens)
    assert torch.allclose(sigma, fixed, atol=1e-6)


def test_more_tokens_mean_more_noise():
    flow = FlowSpec(sigma=LogitNormalSigmaSpec(kind="logit_normal"), shift=LTX_SHIFT)
    medians = [_draw(flow, tokens=t, n=20_000).median().item() for t in TOKEN_COUNTS]
    assert medians == sorted(medians) and medians[-1] - medians[0] > 0.3


def test_no_shift_is_one_and_resolution_needs_two_lengths():
    assert shift_value(NoShiftSpec(kind="none"), 123456) == 1.0
    assert shift_value(FixedShiftSpec(kind="fixed", value=3.0), 17) == 3.0
    degenerate = ResolutionShiftSpec(
        kind="resolution", base_seq_len=1024, max_seq_len=1024, base_shift=1.0, max_shift=2.0
    )
    with pytest.raises(ValueError, match="base_seq_len != max_seq_len"):
        resolution_mu(degenerate, 2048)
    with pytest.raises(ValueError, match="positive"):
        apply_shift(torch.rand(3), 0.0)


@settings(max_examples=60, deadline=None)
@given(
    sigma=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=16),
    a=st.floats(0.05, 20.0),
    b=st.floats(0.05, 20.0),
)
def test_apply_shift_properties(sigma: list[float], a: float, b: float):
    x = torch.tensor(sigma, dtype=torch.float64)
    y = apply_shift(x, a)
    assert ((y >= 0) & (y <= 1)).all()
    assert torch.equal(apply_shift(torch.tensor([0.0, 1.0], dtype=torch.float64), a), torch.tensor([0.0, 1.0]).double())
    assert torch.allclose(apply_shift(x, 1.0), x, rtol=1e-15, atol=0)
    assert torch.allclose(apply_shift(y, b), apply_shift(x, a * b), atol=1e-12)  # shifts compose by multiplying
    order = torch.argsort(x)
    assert (y[order].diff() >= -1e-15).all()  # monotone, up to rounding


# --- uniform fraction -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0])
def test_uniform_fraction_replaces_that_share_with_unshifted_uniform(fraction: float):
    # s = 1e6 pushes every shifted σ above 0.99 (unless the base σ < 1e-4), so σ < 0.99 marks a uniform draw.
    flow = FlowSpec(sigma=UNIFORM, shift=FixedShiftSpec(kind="fixed", value=1e6), uniform_fraction=fraction)
    sigma = _draw(flow)
    low = sigma[sigma < 0.99]
    assert abs(low.numel() / N - fraction * 0.99) < 0.005
    if fraction > 0:
        # The replaced ones are plain U(0, 1) restricted to [0, 0.99): unshifted and spread out.
        scaled = low.double() / 0.99
        assert abs(scaled.mean().item() - 0.5) < 0.01
        assert torch.allclose(_quantiles(scaled), QS, atol=0.01)


def test_uniform_fraction_is_per_sample():
    # One coin per sample, not per batch: small batches mix replaced and shifted samples.
    flow = FlowSpec(sigma=UNIFORM, shift=FixedShiftSpec(kind="fixed", value=1e6), uniform_fraction=0.5)
    generator = _gen(3)
    mixed = 0
    for _ in range(50):
        low = (sample_sigmas(flow, 8, 1024, generator) < 0.99).sum().item()
        mixed += 0 < low < 8
    assert mixed > 40  # P(a batch of 8 is all one kind) = 2 / 256


# --- dtype, device, determinism -------------------------------------------------------------------------


@pytest.mark.parametrize("default", [torch.bfloat16, torch.float64])
def test_sigmas_are_float32_whatever_the_default_dtype(default: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(default)
    try:
        for flow in (
            FlowSpec(sigma=UNIFORM, shift=LTX_SHIFT, uniform_fraction=0.1),
            FlowSpec(sigma=LogitNormalSigmaSpec(kind="logit_normal"), shift=FixedShiftSpec(kind="fixed", value=3.0)),
        ):
            sigma = sample_sigmas(flow, 64, 2048, _gen(), device="cpu")
            assert sigma.dtype == torch.float32 and sigma.shape == (64,)
    finally:
        torch.set_default_dtype(previous)
    assert apply_shift(torch.rand(4, dtype=torch.bfloat16), 2.0).dtype == torch.float32


def test_same_seed_same_sigmas_and_generator_advances():
    flow = FlowSpec(sigma=LogitNormalSigmaSpec(kind="logit_normal"), shift=LTX_SHIFT, uniform_fraction=0.2)
    a = sample_sigmas(flow, 32, 3000, _gen(7))
    b = sample_sigmas(flow, 32, 3000, _gen(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, sample_sigmas(flow, 32, 3000, _gen(8)))
    generator = _gen(7)
    first, second = sample_sigmas(flow, 32, 3000, generator), sample_sigmas(flow, 32, 3000, generator)
    assert torch.equal(first, a) and not torch.equal(first, second)


@pytest.mark.parametrize("batch", [1, 3, 16, 17])
def test_generator_advances_the_same_whatever_the_settings(batch: int):
    # Changing the σ settings must not shift the random stream that later draws (noise, dropout) see.
    after = []
    logit_normal = LogitNormalSigmaSpec(kind="logit_normal")
    for flow in (FlowSpec(), FlowSpec(sigma=logit_normal, shift=LTX_SHIFT, uniform_fraction=0.5)):
        generator = _gen(11)
        sample_sigmas(flow, batch, 1024, generator)
        after.append(torch.rand(4, generator=generator))
    assert torch.equal(after[0], after[1])


@pytest.mark.parametrize("mean", [-120.0, 30.0])
def test_sigmas_stay_strictly_inside_the_unit_interval(mean: float):
    # sigmoid(±30) and beyond round to exactly 0 or 1 in float32; the sampler keeps σ strictly inside (0, 1).
    flow = FlowSpec(sigma=LogitNormalSigmaSpec(kind="logit_normal", mean=mean, std=1.0))
    sigma = sample_sigmas(flow, 1000, 1024, _gen())
    assert ((sigma > 0) & (sigma < 1)).all()
    huge = sample_sigmas(FlowSpec(shift=FixedShiftSpec(kind="fixed", value=1e30)), 1000, 1024, _gen())
    assert (huge < 1).all()


def test_batch_must_be_positive():
    with pytest.raises(ValueError, match="batch"):
        sample_sigmas(FlowSpec(), 0, 1024, _gen())


# --- noising and target ---------------------------------------------------------------------------------


def test_noisy_latents_endpoints_and_per_sample_sigma():
    x0, noise = torch.randn(3, 5, 4, generator=_gen(1)), torch.randn(3, 5, 4, generator=_gen(2))
    xt = noisy_latents(x0, noise, torch.tensor([0.0, 1.0, 0.25]))
    assert torch.equal(xt[0], x0[0])
    assert torch.equal(xt[1], noise[1])
    assert torch.allclose(xt[2], 0.75 * x0[2] + 0.25 * noise[2])
    assert torch.equal(flow_target(x0, noise), noise - x0)


def test_noising_is_float32_whatever_the_input_dtype():
    x0 = torch.randn(2, 3, 4, 4, 8, generator=_gen(1)).bfloat16()
    noise = torch.randn(2, 3, 4, 4, 8, generator=_gen(2)).bfloat16()
    sigma = torch.tensor([0.3, 0.7])
    xt = noisy_latents(x0, noise, sigma.bfloat16())
    assert xt.dtype == torch.float32
    # σ is used at float32 precision: bf16(0.3) would round to 0.30078125.
    s = torch.tensor([0.30078125, 0.69921875]).view(2, 1, 1, 1, 1)
    assert torch.equal(xt, (1 - s) * x0.float() + s * noise.float())
    xt = noisy_latents(x0, noise, sigma)
    assert torch.equal(xt, (1 - sigma.view(2, 1, 1, 1, 1)) * x0.float() + sigma.view(2, 1, 1, 1, 1) * noise.float())
    target = flow_target(x0, noise)
    assert target.dtype == torch.float32 and torch.equal(target, noise.float() - x0.float())


@settings(max_examples=50, deadline=None)
@given(
    batch=st.integers(1, 4),
    rest=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    seed=st.integers(0, 2**31 - 1),
)
def test_velocity_prediction_recovers_clean_latents_and_noise(batch: int, rest: list[int], seed: int):
    generator = _gen(seed)
    x0 = torch.randn(batch, *rest, generator=generator)
    noise = torch.randn(batch, *rest, generator=generator)
    sigma = torch.rand(batch, generator=generator)
    xt, target = noisy_latents(x0, noise, sigma), flow_target(x0, noise)
    s = sigma.view(batch, *([1] * len(rest)))
    assert torch.allclose(xt - s * target, x0, atol=1e-5)
    assert torch.allclose(xt + (1 - s) * target, noise, atol=1e-5)


def test_noising_rejects_mismatched_shapes():
    x0 = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="sigma"):
        noisy_latents(x0, x0, torch.zeros(3))
    with pytest.raises(ValueError, match="differ"):
        noisy_latents(x0, torch.zeros(2, 4), torch.zeros(2))
    with pytest.raises(ValueError, match="unknown flow target"):
        flow_target(x0, x0, "epsilon")


# --- loss weights and loss ------------------------------------------------------------------------------


def test_loss_weights_from_compiled_expressions():
    sigma = torch.tensor([0.0, 0.25, 0.5, 1.0])
    weights = loss_weights(compile_expr("1 / (sigma + 1)", {"sigma"}, {}), sigma)
    assert weights.dtype == torch.float32 and torch.allclose(weights, 1 / (sigma + 1))
    ones = loss_weights(compile_expr("1", {"sigma"}, {}), sigma)
    assert ones.dtype == torch.float32 and torch.equal(ones, torch.ones(4))
    # The compiler lets a weight read geometry constants; they are passed alongside sigma.
    scaled = loss_weights(compile_expr("sigma * patch_t", {"sigma", "patch_t"}, {}), sigma, {"patch_t": 3})
    assert torch.allclose(scaled, 3 * sigma)
    # A bf16 σ is evaluated in float32.
    assert loss_weights(compile_expr("sigma", {"sigma"}, {}), sigma.bfloat16()).dtype == torch.float32


def test_loss_weights_of_the_wrong_shape_are_refused():
    ops = {"tensor": lambda values: torch.tensor(values)}
    with pytest.raises(ValueError, match="shape"):
        loss_weights(compile_expr("tensor([1.0, 2.0])", {"sigma"}, ops), torch.rand(3))


def test_flow_loss_equals_a_hand_computation():
    generator = _gen(4)
    prediction = torch.randn(3, 6, 5, generator=generator, requires_grad=True)
    target = torch.randn(3, 6, 5, generator=generator)
    weights = torch.tensor([0.5, 1.0, 2.0])
    loss, per_sample = flow_loss(prediction, target, weights)

    by_hand = []
    for b in range(3):
        pairs = zip(prediction[b].flatten().tolist(), target[b].flatten().tolist(), strict=True)
        diffs = [(p - t) ** 2 for p, t in pairs]
        by_hand.append(sum(diffs) / len(diffs))
    expected = sum(w * mse for w, mse in zip(weights.tolist(), by_hand, strict=True)) / 3
    assert loss.dim() == 0 and loss.item() == pytest.approx(expected, rel=1e-5)
    assert torch.allclose(per_sample, torch.tensor(by_hand), rtol=1e-5)

    loss.backward()
    n = 6 * 5
    expected_grad = 2 * weights.view(3, 1, 1) * (prediction.detach() - target) / (3 * n)
    assert torch.allclose(prediction.grad, expected_grad, atol=1e-7)


def test_flow_loss_is_float32_for_bf16_predictions():
    prediction = torch.randn(2, 4, 8, generator=_gen(1)).bfloat16()
    target = torch.randn(2, 4, 8, generator=_gen(2))
    loss, per_sample = flow_loss(prediction, target, torch.ones(2))
    assert loss.dtype == per_sample.dtype == torch.float32
    assert torch.equal(per_sample, (prediction.float() - target).square().mean(dim=(1, 2)))


def test_flow_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ"):
        flow_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2))
    with pytest.raises(ValueError, match="weights"):
        flow_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(3))


# --- the LTX spec end to end ----------------------------------------------------------------------------


def test_ltx_spec_flow_drives_the_sampler_and_the_loss():
    from ltxc.compiler import compile_spec
    from ltxc.spec import load_spec

    plan = compile_spec(load_spec(SPECS / "ltx.toml"))
    flow = plan.spec.flow
    assert isinstance(flow.shift, ResolutionShiftSpec) and flow.uniform_fraction > 0
    # LTXPipeline's sequence length is latent frames × height × width: 161 frames at 480×704 → 21·15·22.
    tokens = 21 * 15 * 22
    sigma = sample_sigmas(flow, 4096, tokens, _gen())
    assert sigma.dtype == torch.float32 and ((sigma > 0) & (sigma < 1)).all()
    assert sigma.median().item() > 0.8  # mu ≈ 3.1 at 6930 tokens pushes most samples to high noise
    weights = loss_weights(plan.loss_weight, sigma, plan.constants)
    assert torch.equal(weights, torch.ones(4096))
