"""FLUX.1 by spec alone: specs/flux-1.toml and specs/flux-1-schnell.toml with their tiny twins.

Covers `ltxc verify` green (max |Δ| = 0 on every row) for both tiny specs in float32 and bfloat16 (and true CFG);
ltxc's pack/unpack against FluxPipeline's `_pack_latents` / `_unpack_latents` (hypothesis over sizes); the
resolution shift counting packed tokens as FluxPipeline's `calculate_shift` (256 -> 0.5, 4096 -> 1.15, 1024² px);
the image frame rule (`frames.max`); errors for bad new spec keys (`FILE:LINE: key: message`); the real specs
compiled, their blocks and LoRA targets found on FLUX.1-dev's transformer built on the meta device.
Training's transformer inputs: tests/test_flux_training.py.

Run: `pytest -q tests/test_flux_spec.py` (CPU, tiny models, no downloads).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import SPECS, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from ltxc.compiler import compile_spec
from ltxc.flow import resolution_mu
from ltxc.geometry import FrameRule, ShapeError
from ltxc.spec import load_spec

TINY_FLUX = SPECS / "tiny" / "flux-1.toml"
TINY_SCHNELL = SPECS / "tiny" / "flux-1-schnell.toml"
ROW = re.compile(r"^  (?P<name>\S+)\s+(?P<value>max \|Δ\| = \S+|skipped)\s+(?P<ok>ok|FAIL)")


def _rows(out: str) -> dict[str, str]:
    return {m["name"]: m["value"] for line in out.splitlines() if (m := ROW.match(line))}


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
@pytest.mark.parametrize("spec", [TINY_FLUX, TINY_SCHNELL], ids=["dev", "schnell"])
def test_verify_is_bit_equal(capsys: pytest.CaptureFixture[str], spec: Path, dtype: str | None) -> None:
    args = ["verify", str(spec)] + (["--dtype", dtype] if dtype else [])
    code, out, _ = run_cli(capsys, *args)
    assert code == 0, out
    rows = _rows(out)
    compared = {name: value for name, value in rows.items() if value != "skipped"}
    expected = {"text.embeds", "text.pooled", "sigmas", "timesteps", "noise", "input.timestep", "pred.cond"}
    assert expected | {"step1", "latents", "frames"} <= set(compared), out
    assert set(compared.values()) == {"max |Δ| = 0.000e+00"}, out
    assert ("input.guidance" in compared) == (spec == TINY_FLUX)  # schnell has no guidance input


def test_verify_true_cfg_runs_separate_passes(capsys: pytest.CaptureFixture[str]) -> None:
    """FluxPipeline's true CFG (true_cfg_scale > 1 with a negative prompt): two batch-1 calls, conditional first."""
    code, out, _ = run_cli(capsys, "verify", str(TINY_FLUX), "--dtype", "bfloat16", "--guidance", "2.5",
                           "--height", "48", "--width", "64")  # fmt: skip
    assert code == 0, out
    rows = _rows(out)
    assert rows["pred.uncond"] == rows["pred.cond"] == rows["frames"] == "max |Δ| = 0.000e+00", out


def test_latents_keep_the_declared_dtype() -> None:
    """Without `[sampler] latent_dtype` the bf16 run keeps float32 noise, which the pipeline never has."""
    from ltxc.commands.verify import verify

    plan = compile_spec(load_spec(TINY_FLUX))
    assert plan.latent_role == "text_encoder_2"
    import attrs

    report = verify(attrs.evolve(plan, latent_role=None), dtype="bfloat16", steps=2)
    failed = [check.name for check in report.checks if check.ok is False]
    assert "step1" in failed, report.format()


# -- packing -------------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 2), rows=st.integers(1, 5), cols=st.integers(1, 5))
def test_pack_equals_flux_pipeline(batch: int, rows: int, cols: int) -> None:
    from diffusers import FluxPipeline

    geometry = compile_spec(load_spec(TINY_FLUX)).geometry
    h, w = 2 * rows, 2 * cols  # latent cells: the 2x2 packing needs even sizes
    grid = torch.randn(batch, 16, 1, h, w)
    ours = geometry.pack(grid)
    theirs = FluxPipeline._pack_latents(grid[:, :, 0], batch, 16, h, w)
    assert torch.equal(ours, theirs)
    back = FluxPipeline._unpack_latents(theirs, h * 8, w * 8, 8)
    assert torch.equal(geometry.unpack(ours, 1, h, w)[:, :, 0], back)


# -- the resolution shift ------------------------------------------------------------------------------
@pytest.mark.parametrize("tokens", [256, 4096, 1024, 77])
def test_shift_mu_equals_calculate_shift(tokens: int) -> None:
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    plan = compile_spec(load_spec(SPECS / "flux-1.toml"))
    assert resolution_mu(plan.sampler.shift, tokens) == calculate_shift(tokens, 256, 4096, 0.5, 1.15)


def test_shift_counts_packed_tokens() -> None:
    """1024x1024 pixels: 128x128 latent cells, 64x64 = 4096 packed tokens -> mu 1.15 (not the cells' 3.23)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from ltxc.schedule import set_schedule

    plan = compile_spec(load_spec(SPECS / "flux-1.toml"))
    shape = plan.geometry.latent_shape(1, 1024, 1024)
    assert shape.tokens == 4096
    config = {"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15}
    ours, theirs = FlowMatchEulerDiscreteScheduler(**config), FlowMatchEulerDiscreteScheduler(**config)
    _, sigmas = set_schedule(plan.sampler, ours, 4, shape, torch.device("cpu"))
    theirs.set_timesteps(sigmas=[1.0, 0.75, 0.5, 0.25], mu=1.15)
    assert torch.equal(sigmas, theirs.sigmas)


# -- the image frame rule ------------------------------------------------------------------------------
def test_image_frame_rule() -> None:
    rule = compile_spec(load_spec(TINY_FLUX)).geometry.frame_rule
    assert rule == FrameRule(1, 1, 1)
    assert [n for n in range(10) if rule.is_valid(n)] == [1]
    assert rule.valid_counts(129) == [1]
    assert rule.fit(121) == 1  # one frame of a longer clip
    with pytest.raises(ShapeError, match="takes one frame \\(an image\\); use 1"):
        rule.check(9)


@settings(max_examples=50, deadline=None)
@given(multiple=st.integers(1, 8), offset=st.integers(0, 7), maximum=st.integers(1, 60), available=st.integers(1, 80))
def test_frame_rule_maximum(multiple: int, offset: int, maximum: int, available: int) -> None:
    rule = FrameRule(multiple, offset % multiple, maximum)
    counts = rule.valid_counts(available)
    assert all(n <= maximum and rule.is_valid(n) for n in counts)
    if available >= rule.minimum and rule.largest is not None and rule.largest >= rule.minimum:
        fitted = rule.fit(available)
        assert rule.is_valid(fitted) and fitted <= available


# -- errors for the new keys ---------------------------------------------------------------------------
BAD = {
    "frames_max": ("[geometry]\nframes = { multiple = 4, offset = 1, max = 0 }\n", "geometry.frames.max"),
    "encoder_role": ("[text.encoders.pooled]\nencoder = \"clip\"\n", "text.encoders.pooled.encoder"),
    "latent_dtype": ("[sampler]\nlatent_dtype = \"t5\"\n", "sampler.latent_dtype"),
    "input_name": ("[transformer.call]\nguidance = \"input.guidanse\"\n", "transformer.call.guidance"),
    "input_train": ("[inputs.scale]\nsample = 1.0\n", "inputs.scale"),
    "reserved": ("[text.encoders.mask]\nencoder = \"text_encoder\"\ntokenizer = \"tokenizer\"\nmax_length = 8\n",
                 "text.encoders"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_new_keys_name_file_and_key(capsys: pytest.CaptureFixture[str], tmp_path: Path, case: str) -> None:
    body, key = BAD[case]
    spec = tmp_path / "child.toml"
    spec.write_text(f"[model]\nname = \"child\"\nextends = '{TINY_FLUX}'\n\n{body}")
    code, out, err = run_cli(capsys, "compile", str(spec), "--out", str(tmp_path / "out"))
    assert code == 2, out + err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if re.match(r"^.+\.toml:\d+: ", line)]
    assert any(f": {key}" in line for line in lines), err


# -- the real specs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["flux-1.toml", "flux-1-schnell.toml"])
def test_real_spec_blocks_and_lora_targets_exist(name: str) -> None:
    """FLUX.1's transformer (its published config) on the meta device has every [parallel] block list, and every
    [lora] target names Linear layers, including the single blocks' proj_mlp, proj_out and norm.linear."""
    from diffusers import FluxTransformer2DModel

    plan = compile_spec(load_spec(SPECS / name))
    config = {"guidance_embeds": name == "flux-1.toml", "axes_dims_rope": (16, 56, 56), "in_channels": 64}
    with torch.device("meta"):
        model = FluxTransformer2DModel(**config)  # the defaults are FLUX.1's sizes
    for block in plan.blocks:
        assert isinstance(getattr(model, block), torch.nn.ModuleList)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    for target in plan.lora.targets:
        assert any(n == target or n.endswith("." + target) for n in names), target
    block = [n for n in names if n.startswith("single_transformer_blocks.0.")]
    single = {t for t in plan.lora.targets if any(n.endswith("." + t) for n in block)}
    assert single >= {"proj_mlp", "proj_out", "norm.linear", "to_q"}
    assert plan.geometry.latent_shape(1, 1024, 1024).tokens == 4096
    assert ("guidance" in plan.inputs) == (name == "flux-1.toml")


# -- the image VAE and the latents' dtype --------------------------------------------------------------------------
def test_image_vae_encode_is_the_vae_on_the_image() -> None:
    """`[latent] vae_input = "image"`: the processor hands AutoencoderKL [B, C, H, W] and keeps [C, 1, H', W']."""
    import numpy as np

    from ltxc.processor import Processor

    plan = compile_spec(load_spec(TINY_FLUX))
    components = plan.components()
    frames = np.random.default_rng(0).integers(0, 256, (1, 32, 48, 3), dtype=np.uint8)
    ours = Processor(plan, components).encode_video(frames, seed=3)
    vae = components["vae"]
    pixels = torch.from_numpy(frames[0]).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    with torch.no_grad():
        sample = vae.encode(pixels).latent_dist.sample(generator=torch.Generator().manual_seed(3))
    expected = (sample - vae.config.shift_factor) * vae.config.scaling_factor
    assert ours.shape == (16, 1, 4, 6)
    assert torch.equal(ours[:, 0], expected[0])


def test_bf16_draw_equals_a_float32_draw_cast() -> None:
    """Why the sampler may draw in float32 and cast: randn_tensor(dtype=bf16) gives the same numbers."""
    from diffusers.utils.torch_utils import randn_tensor

    shape = (2, 16, 6, 10)
    direct = randn_tensor(shape, generator=torch.Generator().manual_seed(7), dtype=torch.bfloat16)
    cast = randn_tensor(shape, generator=torch.Generator().manual_seed(7), dtype=torch.float32).to(torch.bfloat16)
    assert torch.equal(direct, cast)


def test_further_encoder_last_hidden_state_with_mask(tmp_path: Path) -> None:
    """`[text.encoders.<name>]` with output = "last" and encoder_mask = true: the encoder's last hidden state
    [B, L, D] with the tokenizer's mask passed, in the encoder's dtype, beside embeds, mask and pooled."""
    from ltxc.processor import Processor

    spec = tmp_path / "child.toml"
    spec.write_text(
        f'[model]\nname = "child"\nextends = \'{TINY_FLUX}\'\n\n[text.encoders.sequence]\nencoder = "text_encoder"\n'
        'tokenizer = "tokenizer"\nmax_length = 12\noutput = "last"\nencoder_mask = true\n'
    )
    plan = compile_spec(load_spec(spec))
    assert plan.text_names == ("embeds", "mask", "pooled", "sequence")
    components = plan.components()
    text = Processor(plan, components).cache_text(["a cat", "a much longer caption"])
    assert text["sequence"].shape == (2, 12, 32) and text["pooled"].shape == (2, 32)
    tokens = components["tokenizer"](["a cat", "a much longer caption"], padding="max_length", max_length=12,
                                      truncation=True, return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        expected = components["text_encoder"](tokens.input_ids, attention_mask=tokens.attention_mask)[0]
    assert torch.equal(text["sequence"], expected)


def test_sampling_input_override() -> None:
    """`inputs` of a sampler call replace the spec's sampling value (generate's override); unknown names are errors."""
    from ltxc.errors import UserError
    from ltxc.sampler import Sampler

    plan = compile_spec(load_spec(TINY_FLUX))
    sampler = Sampler(plan, plan.components())
    traced: dict[str, torch.Tensor] = {}
    default = sampler(["a cat"], steps=1, decode=False)
    given = sampler(["a cat"], steps=1, decode=False, inputs={"guidance": 5.0},
                    trace=lambda name, t: traced.setdefault(name, t))  # fmt: skip
    assert default.inputs == {"guidance": 3.5} and given.inputs == {"guidance": 5.0}
    assert torch.equal(traced["input.guidance.cond"], torch.tensor([5.0]))
    assert not torch.equal(default.latents, given.latents)
    with pytest.raises(UserError, match="has no input 'scale'"):
        sampler(["a cat"], steps=1, decode=False, inputs={"scale": 1.0})
