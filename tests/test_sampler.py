"""The sampler against its oracle, diffusers' LTXPipeline built on the very same component objects.

Same seed and prompt -> the same frames and final latents (fp32, max |Δ| ≤ 1e-4; in practice exactly 0), with
and without CFG, square and non-square; a wrong size is a clear error; seeds are deterministic.

Run: `pytest -q tests/test_sampler.py -s` (-s prints the measured differences; CPU, tiny models, no downloads).
"""

from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import TINY_LTX
from diffusers import LTXPipeline

from ltxc.compiler import compile_spec
from ltxc.geometry import ShapeError
from ltxc.plan import Plan
from ltxc.sampler import Generation, Sampler
from ltxc.spec import load_spec

PROMPT = "a red ball bounces across a wooden floor"
TOLERANCE = 1e-4
SIZES = [(9, 64, 96), (17, 96, 64)]  # frames, height, width: non-square both ways


@pytest.fixture(scope="module")
def components(plan: Plan) -> Any:
    return plan.components()


@pytest.fixture(scope="module")
def pipeline(components: Any) -> LTXPipeline:
    roles = [name for name in inspect.signature(LTXPipeline.__init__).parameters if name != "self"]
    pipe = LTXPipeline(**{role: components[role] for role in roles})
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sampler(plan: Plan, components: Any) -> Sampler:
    return Sampler(plan, components)


def reference(
    pipe: LTXPipeline,
    plan: Plan,
    prompts: list[str],
    size: tuple[int, int, int],
    guidance: float,
    seed: int,
    output_type: str = "np",
    **extra: Any,
) -> torch.Tensor:
    """The pipeline's output for the spec's sampler settings, every setting passed explicitly."""
    s = plan.sampler
    frames, height, width = size
    out = pipe(
        prompt=prompts,
        negative_prompt=s.negative_prompt,
        num_frames=frames,
        height=height,
        width=width,
        frame_rate=int(s.fps),
        num_inference_steps=s.steps,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(seed),
        decode_timestep=s.decode_timestep,
        decode_noise_scale=s.decode_noise_scale,
        max_sequence_length=s.max_sequence_length or plan.text.max_length,
        output_type=output_type,
        **extra,
    ).frames
    return torch.from_numpy(np.asarray(out)) if output_type == "np" else out


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("guidance", [1.0, 3.0], ids=["no-cfg", "cfg"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_frames_and_latents_match_the_pipeline(
    sampler: Sampler, pipeline: LTXPipeline, plan: Plan, size: tuple[int, int, int], guidance: float
) -> None:
    frames, height, width = size
    ours = sampler([PROMPT], frames=frames, height=height, width=width, guidance=guidance, seed=7)
    assert isinstance(ours, Generation)
    assert ours.video is not None and ours.video.shape == (1, frames, height, width, 3)
    assert ours.video.dtype == torch.float32 and ours.video.min() >= 0 and ours.video.max() <= 1
    assert ours.video.std() > 1e-3  # a real decode, not a constant image
    assert ours.negative_prompt == (plan.sampler.negative_prompt if guidance > 1 else None)

    frames_delta = max_abs(ours.video, reference(pipeline, plan, [PROMPT], size, guidance, seed=7))
    packed = reference(pipeline, plan, [PROMPT], size, guidance, seed=7, output_type="latent")
    latents_delta = max_abs(plan.geometry.pack(ours.latents), packed)
    print(
        f"\n{'x'.join(map(str, size))} guidance {guidance}: frames max|Δ| {frames_delta:.3e}, "
        f"latents max|Δ| {latents_delta:.3e}"
    )
    assert frames_delta <= TOLERANCE
    assert latents_delta <= TOLERANCE


def test_cfg_uses_the_negative_prompt(sampler: Sampler) -> None:
    plain = sampler([PROMPT], guidance=1.0, decode=False)
    guided = sampler([PROMPT], guidance=3.0, decode=False)
    other_negative = sampler([PROMPT], guidance=3.0, negative_prompt="", decode=False)
    assert plain.video is None
    assert not torch.equal(plain.latents, guided.latents)
    assert not torch.equal(guided.latents, other_negative.latents)


def test_batch_and_guidance_rescale_match_the_pipeline(sampler: Sampler, pipeline: LTXPipeline, plan: Plan) -> None:
    prompts = [PROMPT, "a blue cube spins slowly"]
    size = (9, 64, 64)
    ours = sampler(prompts, frames=size[0], height=size[1], width=size[2], guidance=3.0, guidance_rescale=0.7, seed=3)
    theirs = reference(pipeline, plan, prompts, size, 3.0, seed=3, guidance_rescale=0.7)
    delta = max_abs(ours.video, theirs)
    print(f"\nbatch 2, CFG + rescale 0.7: frames max|Δ| {delta:.3e}")
    assert delta <= TOLERANCE
    assert not torch.equal(ours.video[0], ours.video[1])


def test_defaults_come_from_the_spec(sampler: Sampler, plan: Plan) -> None:
    s = plan.sampler
    out = sampler([PROMPT], decode=False)
    assert (out.frames, out.height, out.width, out.steps, out.guidance, out.fps) == (
        s.frames,
        s.height,
        s.width,
        s.steps,
        s.guidance,
        s.fps,
    )
    shape = plan.geometry.latent_shape(s.frames, s.height, s.width)
    assert out.latents.shape == (1, *shape.as_list())


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ((16, 64, 96), "16 frames is not a valid count (8n+1); use 9 or 17"),
        ((9, 100, 96), "height 100 must be a multiple of 32"),
        ((9, 64, 100), "width 100 must be a multiple of 32"),
    ],
)
def test_a_wrong_size_is_a_clear_error(sampler: Sampler, size: tuple[int, int, int], message: str) -> None:
    frames, height, width = size
    with pytest.raises(ShapeError) as raised:
        sampler([PROMPT], frames=frames, height=height, width=width, steps=1)
    assert message in str(raised.value)


def test_seeds_are_deterministic(sampler: Sampler) -> None:
    a = sampler([PROMPT], steps=3, seed=11)
    b = sampler([PROMPT], steps=3, seed=11)
    c = sampler([PROMPT], steps=3, seed=12)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.video, b.video)
    assert not torch.equal(a.latents, c.latents) and not torch.equal(a.video, c.video)
    assert (a.seed, c.seed) == (11, 12)


def test_decode_false_keeps_the_same_latents(sampler: Sampler) -> None:
    full = sampler([PROMPT], steps=2, seed=5)
    latents_only = sampler([PROMPT], steps=2, seed=5, decode=False)
    assert latents_only.video is None
    assert torch.equal(full.latents, latents_only.latents)


def test_a_given_transformer_is_used_and_its_mode_restored(plan: Plan, components: Any, sampler: Sampler) -> None:
    base = sampler([PROMPT], steps=2, seed=1, decode=False)
    same = copy.deepcopy(components["transformer"]).train()
    out = Sampler(plan, components, transformer=same)([PROMPT], steps=2, seed=1, decode=False)
    assert torch.equal(out.latents, base.latents)
    assert same.training  # a live training model goes back to training mode

    changed = copy.deepcopy(components["transformer"])
    with torch.no_grad():
        changed.proj_out.bias.add_(0.1)
    out = Sampler(plan, components, transformer=changed)([PROMPT], steps=2, seed=1, decode=False)
    assert not torch.equal(out.latents, base.latents)


def test_sampler_max_sequence_length_reaches_the_text_encoder(tmp_path: Path) -> None:
    child = tmp_path / "short.toml"
    child.write_text(
        f'[model]\nname = "short-text"\nextends = "{TINY_LTX.as_posix()}"\n\n[sampler]\nmax_sequence_length = 32\n'
    )
    plan = compile_spec(load_spec(child))
    components = plan.components()
    pipe = LTXPipeline(
        **{role: components[role] for role in ("scheduler", "vae", "text_encoder", "tokenizer", "transformer")}
    )
    pipe.set_progress_bar_config(disable=True)
    ours = Sampler(plan, components)([PROMPT], steps=2, seed=2)
    s = plan.sampler
    theirs = pipe(
        prompt=[PROMPT],
        negative_prompt=s.negative_prompt,
        num_frames=s.frames,
        height=s.height,
        width=s.width,
        frame_rate=int(s.fps),
        num_inference_steps=2,
        guidance_scale=s.guidance,
        generator=torch.Generator().manual_seed(2),
        decode_timestep=s.decode_timestep,
        decode_noise_scale=s.decode_noise_scale,
        max_sequence_length=32,
        output_type="np",
    ).frames
    assert max_abs(ours.video, torch.from_numpy(theirs)) <= TOLERANCE


def test_progress_bar_goes_to_stderr(sampler: Sampler, capsys: pytest.CaptureFixture[str]) -> None:
    sampler([PROMPT], steps=2, decode=False, progress=True)
    assert "2/2" in capsys.readouterr().err


def test_trace_names_every_stage(sampler: Sampler, plan: Plan) -> None:
    """The stage contract `ltxc verify` builds its rows on: names, layouts, and the same result as without a trace."""
    seen: dict[str, torch.Tensor] = {}
    out = sampler([PROMPT], steps=2, seed=4, trace=lambda name, tensor: seen.setdefault(name, tensor.clone()))
    text = [f"{side}.{name}" for side in ("text", "negative_text") for name in plan.text_names]
    roles = [f"prediction.video.{role}" for role in ("uncond", "cond")]
    inputs = [f"input.timestep.{role}" for role in ("uncond", "cond")]  # the noise level, as the transformer gets it
    stages = ["sigmas", "timesteps", "noise.video", *inputs, *roles, "step1.video", "final.video", "frames"]
    assert sorted(seen) == sorted(text + stages)
    assert all(seen[name].shape == (1,) and seen[name].dtype == torch.float32 for name in inputs)
    tokens = list(plan.geometry.pack(out.latents).shape)
    assert all(list(seen[name].shape) == tokens for name in ("noise.video", "step1.video", "final.video", *roles))
    assert all(seen[name].dtype == torch.float32 for name in roles)
    assert torch.equal(seen["final.video"], plan.geometry.pack(out.latents))
    assert torch.equal(seen["frames"], out.video)
    plain = sampler([PROMPT], steps=2, seed=4)
    assert torch.equal(plain.latents, out.latents) and torch.equal(plain.video, out.video)


def test_one_step_with_a_terminal_shift_is_refused_not_nan(sampler: Sampler) -> None:
    """The tiny LTX spec's scheduler has shift_terminal 0.1: diffusers stretches one step's σ by 0/0 (NaN, in the
    pipeline too); the sampler says so instead of writing NaN frames."""
    from ltxc.errors import UserError

    with pytest.raises(UserError, match=r"1 sampling step\(s\) give NaN noise levels .*shift_terminal 0.1.*--steps 2"):
        sampler([PROMPT], steps=1)
