"""Bit-equal to the reference pipelines at the precision users run (issue 11): float32 and the real specs' dtypes.

The sampler's arithmetic is spec data (`[sampler] cfg`, `cfg_order`, `input_dtype`, `guidance_dtype`, `decode`,
`[latent] normalise.denormalise`) and its latents stay in the transformer's layout between steps, so each family's
tiny spec verifies with max |Δ| = 0 — not within a tolerance — against its reference diffusers pipeline on the same
modules. Covers, for specs/tiny/ltx.toml, ltx-2.3.toml and wan-2.1.toml:
- float32 (the tiny spec as it is) and a twin with every module component at the real spec's dtype (bfloat16,
  Wan's VAE float32): final latents and frames max |Δ| = 0, with non-trivial VAE statistics (the tiny LTX VAEs
  have mean 0 / std 1, which hides the decode's cast order; the test gives them random ones; Wan's are the real
  Wan 2.1 statistics already). Measured before this issue: ltx 1.3e-2 / 2.0e-2, ltx-2.3 3.2e-2 / 2.9e-2,
  wan-2.1 4.0e-2 / 8.0e-2 in bf16; wan-2.1 2.6e-6 / 1.2e-7 in float32;
- LTX-2.3 with a timestep-conditioned VAE in bf16: the decode noise mixed in normalised space, before the
  denormalisation, as LTX2Pipeline does (0 / 0);
- the compile-time checks of the new keys (a `FILE:LINE: key: message` error each);
- `divide_reciprocal` is WanPipeline's `x / (1 / std) + mean` bit for bit, and differs from `multiply` in bf16;
- the adapter's packed path (the sampler's) gives the transformer the same kwargs as its training path.

Run: `pytest -q tests/test_precision.py` (CPU, tiny models, about a minute).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import SPECS

from ltxc.errors import ConfigError

FAMILIES = ("ltx", "ltx-2.3", "wan-2.1")


def twin(tmp_path: Path, family: str, dtype: str, tables: dict[str, str] | None = None) -> Path:
    """The tiny spec of `family`; for "bfloat16", a child with each module at the real spec's dtype (and `tables`)."""
    from ltxc.spec import load_spec

    tiny = SPECS / "tiny" / f"{family}.toml"
    tables = dict(tables or {})
    if dtype == "float32" and not tables:
        return tiny
    if dtype != "float32":
        real = load_spec(SPECS / f"{family}.toml").value.components
        for role, component in real.items():
            if component.kind in (None, "module") and not role.startswith(("tokenizer", "scheduler")):
                key = f"components.{role}"
                tables[key] = f'dtype = "{component.dtype}"\n' + tables.get(key, "")
    body = "".join(f"\n[{name}]\n{lines}" for name, lines in tables.items())
    path = tmp_path / f"{family}-{dtype}.toml"
    path.write_text(f'[model]\nname = "{family}-{dtype}"\nextends = "{tiny.as_posix()}"\n{body}', encoding="utf-8")
    return path


@pytest.fixture
def realistic_statistics(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """VAE latent statistics kept in buffers get random, realistic values (mean ~ N(0, 0.5²), std ~ U(0.5, 2))."""
    from ltxc.plan import Plan

    build = Plan.components

    def components(self: Plan) -> Any:
        built = build(self)
        vae = built[self.latent.vae]
        mean, std = vae._buffers.get("latents_mean"), vae._buffers.get("latents_std")
        if mean is not None and std is not None:
            gen = torch.Generator().manual_seed(1)
            mean.copy_(torch.randn(mean.numel(), generator=gen) * 0.5)
            std.copy_(0.5 + 1.5 * torch.rand(std.numel(), generator=gen))
        return built

    monkeypatch.setattr(Plan, "components", components)
    yield


def verified(spec: Path) -> dict[str, float | None]:
    from ltxc.commands.verify import verify
    from ltxc.compiler import compile_spec
    from ltxc.spec import load_spec

    # 3 steps: every stage (first step, later steps, decode) at a third of the spec's cost (bf16 is slow on CPU)
    report = verify(compile_spec(load_spec(spec)), steps=3)
    return {check.name: check.max_abs for check in report.checks}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_verify_is_bit_equal(family: str, dtype: str, tmp_path: Path, realistic_statistics: None) -> None:
    found = verified(twin(tmp_path, family, dtype))
    assert (found["latents"], found["frames"]) == (0.0, 0.0), found


def test_decode_noise_before_denormalising_is_bit_equal(tmp_path: Path, realistic_statistics: None) -> None:
    tables = {
        "components.vae": "config = { timestep_conditioning = true }\n",
        "sampler": "decode_timestep = 0.05\ndecode_noise_scale = 0.025\n",
    }
    found = verified(twin(tmp_path, "ltx-2.3", "bfloat16", tables))
    assert (found["latents"], found["frames"]) == (0.0, 0.0), found


# -- the keys' compile-time checks ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sampler", "message"),
    [
        ('decode = ["cast:nowhere", "denormalise"]', "decode: 'cast:nowhere': no [components.nowhere]"),
        ('decode = ["cast:vae"]', "decode: has 'denormalise' 0 times"),
        ('decode = ["denormalise", "denormalise"]', "decode: has 'denormalise' 2 times"),
        ('decode = ["noise", "denormalise", "noise"]', "decode: has 'noise' 2 times"),
        ('input_dtype = "nowhere"', "input_dtype: no [components.nowhere]"),
    ],
)
def test_sampler_keys_are_checked(sampler: str, message: str, tmp_path: Path) -> None:
    from ltxc.compiler import compile_spec
    from ltxc.spec import load_spec

    spec = tmp_path / "bad.toml"
    spec.write_text(
        f'[model]\nname = "bad"\nextends = "{(SPECS / "tiny" / "ltx.toml").as_posix()}"\n\n[sampler]\n{sampler}\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        compile_spec(load_spec(spec))
    assert f"{spec}:6: sampler." in str(caught.value) and message in str(caught.value), str(caught.value)


@pytest.mark.parametrize("values", ['cfg_order = ["cond", "cond"]', 'cfg = "both"', 'decode = ["flip"]'])
def test_sampler_key_values_are_validated(values: str, tmp_path: Path) -> None:
    from ltxc.spec import load_spec

    spec = tmp_path / "bad.toml"
    spec.write_text(
        f'[model]\nname = "bad"\nextends = "{(SPECS / "tiny" / "ltx.toml").as_posix()}"\n\n[sampler]\n{values}\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError):
        load_spec(spec)


def test_defaults_keep_the_old_behaviour() -> None:
    from ltxc.compiler import compile_spec
    from ltxc.spec import load_spec

    plan = compile_spec(load_spec(SPECS / "tiny" / "wan-2.1.toml"))
    assert plan.decode == ("cast:vae", "denormalise") and plan.input_role == "transformer"
    base = load_spec(SPECS / "tiny" / "ltx.toml").value
    from ltxc.spec.types import SamplerSpec

    default = SamplerSpec()
    assert (default.cfg, default.cfg_order, default.guidance_dtype) == ("batched", ("uncond", "cond"), "float32")
    assert default.input_dtype is None and default.decode is None
    assert base.sampler.decode == ("denormalise", "cast:text_encoder", "noise", "cast:vae")


# -- the arithmetic ---------------------------------------------------------------------------------------------


def test_divide_reciprocal_is_the_reference_form() -> None:
    from ltxc.normalise import MeanStd

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 3, 4, 5, generator=gen).to(torch.bfloat16)
    mean, std = torch.randn(16, generator=gen), 0.5 + 2 * torch.rand(16, generator=gen)
    ours = MeanStd(mean, std, 1.0, "divide_reciprocal").denormalise(x)
    # WanPipeline (pipeline_wan.py:665-672): the statistics in x's dtype, the reciprocal rounded there
    theirs = x / (1.0 / std.view(1, -1, 1, 1, 1).to(x.dtype)) + mean.view(1, -1, 1, 1, 1).to(x.dtype)
    assert torch.equal(ours, theirs)
    assert not torch.equal(MeanStd(mean, std, 1.0, "multiply").denormalise(x), theirs)  # why the key exists


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_environment_equals_the_training_one(family: str) -> None:
    from ltxc.adapter import Adapter
    from ltxc.compiler import compile_spec
    from ltxc.spec import load_spec

    plan = compile_spec(load_spec(SPECS / "tiny" / f"{family}.toml"))
    adapter, shape = Adapter(plan), plan.geometry.latent_shape(9, 64, 96)
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(2, *shape.as_list(), generator=gen)
    text = {"embeds": torch.randn(2, 8, 32, generator=gen), "mask": torch.ones(2, 8, dtype=torch.long)}
    sigma = torch.tensor([0.3, 0.8])
    grid = (shape.frames, shape.height, shape.width)
    for dtype in (None, torch.bfloat16):
        unpacked = adapter.environment(latents, sigma, text, 24.0, compute_dtype=dtype)
        packed = adapter.environment(plan.geometry.pack(latents), sigma, text, 24.0, compute_dtype=dtype, grid=grid)
        assert unpacked.keys() == packed.keys()
        for key, value in unpacked.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, packed[key]) and value.dtype == packed[key].dtype, key
            else:
                assert value == packed[key], key
