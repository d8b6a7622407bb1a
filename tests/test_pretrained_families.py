"""Real-weight loading for the new families: tiny LTX-2.3 and Wan 2.1 components saved in diffusers format
load back through the *real* specs (specs/ltx-2.3.toml, specs/wan-2.1.toml) tensor for tensor, and the real
spec then verifies against its reference pipeline on those weights.

The pipelines are saved with their own `save_pretrained` (one subfolder per role, as on the hub); the child
spec only swaps `pretrained` for the local directory, the tokenizer class for the tiny model's, the dtype for
float32, and the sizes that a 2-layer random model cannot take (text length, STG block index).

Run: pytest -q tests/test_pretrained_families.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import SPECS, run_cli

from ltxc.commands.verify import build_reference
from ltxc.compiler import compile_spec
from ltxc.components import resolve_class
from ltxc.spec import load_spec

FAMILIES = {
    "ltx-2.3": {
        "model": 'reference_args = { spatio_temporal_guidance_blocks = "[1]" }\n',
        "extra": "[text]\nmax_length = 32\nlength_multiple = 8\n[sampler]\nmax_sequence_length = 32\n"
        '[[sampler.perturbations]]\nname = "stg"\nscale = 1.0\ncall = { spatio_temporal_guidance_blocks = "[1]" }\n'
        '[[sampler.perturbations]]\nname = "modality"\nscale = 3.0\nweight = "scale - 1"\n'
        'call = { isolate_modalities = "True" }\n',
    },
    "wan-2.1": {"extra": "[text]\nmax_length = 32\n[sampler]\nmax_sequence_length = 32\n"},
}


def _states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def saved(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path, dict]:
    """(family, pipeline dir, child spec path, the tiny components that were saved)."""
    family = request.param
    tiny = compile_spec(load_spec(SPECS / "tiny" / f"{family}.toml"))
    components = tiny.components()
    from diffusers import DiffusionPipeline

    pipeline = build_reference(resolve_class(tiny.spec.model.reference, DiffusionPipeline), components)
    root = tmp_path_factory.mktemp(f"saved-{family}")
    pipeline.save_pretrained(root / "pipe")
    built = {role: components[role] for role in tiny.recipes}
    parent = json.dumps(str(SPECS / f"{family}.toml"))
    lines = [f'[model]\nname = "{family}-local"\nextends = {parent}\n' + FAMILIES[family].get("model", "")]
    for role, recipe in tiny.recipes.items():
        table = [f"[components.{role}]", f"pretrained = {json.dumps(str(root / 'pipe'))}"]
        if recipe.kind == "module":
            table.append('dtype = "float32"')
        if role == "tokenizer":
            table.append(f'class = "{recipe.reference}"')  # the tiny model's tokenizer, as saved
        lines.append("\n".join(table) + "\n")
    spec = root / "child.toml"
    spec.write_text("\n".join(lines) + FAMILIES[family]["extra"])
    return family, root / "pipe", spec, built


def test_saved_components_load_back_through_the_real_spec(saved) -> None:
    family, _, spec, built = saved
    plan = compile_spec(load_spec(spec))
    assert {r.source for r in plan.recipes.values()} == {"pretrained"}
    loaded = plan.components()
    for role, original in built.items():
        if isinstance(original, torch.nn.Module):
            assert _states_equal(loaded[role], original), f"{family}: {role} differs after the round trip"
        else:
            assert type(loaded[role]) is type(original), role


def test_the_real_spec_verifies_on_saved_weights(saved, capsys: pytest.CaptureFixture[str]) -> None:
    _, _, spec, _ = saved
    code, out, err = run_cli(
        capsys, "verify", str(spec), "--frames", "9", "--height", "64", "--width", "96", "--steps", "3"
    )
    print(out)
    assert code == 0, out + err
    assert "latents" in out and "PASS" in out


# ---------------------------------------------------------------------------------------------------------
# Against a pipeline loaded on its own: `verify` hands ltxc's own modules to the reference, so it cannot see
# what ltxc's loader does differently from diffusers'. Here both sides read the same saved directory.

INDEPENDENT = {"ltx": "", "wan-2.1": ""}
SIZE = {"frames": 9, "height": 64, "width": 96}


@pytest.fixture(scope="module", params=sorted(INDEPENDENT))
def saved_pipeline(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """(family, the tiny spec's pipeline saved with `save_pretrained`)."""
    family = request.param
    tiny = compile_spec(load_spec(SPECS / "tiny" / f"{family}.toml"))
    from diffusers import DiffusionPipeline

    pipeline = build_reference(resolve_class(tiny.spec.model.reference, DiffusionPipeline), tiny.components())
    root = tmp_path_factory.mktemp(f"independent-{family}")
    pipeline.save_pretrained(root / "pipe")
    return family, root / "pipe"


def _child_spec(family: str, pipe: Path, dtype: str | None, directory: Path) -> Path:
    """A spec extending the real one that reads every component from `pipe`; modules at `dtype`, or at the
    real spec's own dtypes when None."""
    tiny = compile_spec(load_spec(SPECS / "tiny" / f"{family}.toml"))
    lines = [f'[model]\nname = "{family}-independent"\nextends = {json.dumps(str(SPECS / f"{family}.toml"))}\n']
    for role, recipe in tiny.recipes.items():
        table = [f"[components.{role}]", f"pretrained = {json.dumps(str(pipe))}", f'subfolder = "{role}"']
        if recipe.kind == "module" and dtype:
            table.append(f'dtype = "{dtype}"')
        if role == "tokenizer":
            table.append(f'class = "{recipe.reference}"')
        lines.append("\n".join(table) + "\n")
    path = directory / f"{family}-{dtype or 'real'}.toml"
    path.write_text("\n".join(lines) + "[text]\nmax_length = 32\n[sampler]\nmax_sequence_length = 32\n")
    return path


@pytest.mark.parametrize("dtype", ["float32", None], ids=["float32", "real-dtypes"])
def test_matches_an_independently_loaded_pipeline(saved_pipeline, dtype: str | None, tmp_path: Path) -> None:
    """ltxc on a spec extending the real one vs `Pipeline.from_pretrained(dir, torch_dtype=...)` loaded on its
    own, same seed, prompt, size, steps, guidance: final latents and float frames bit-equal."""
    import numpy as np
    from diffusers import DiffusionPipeline

    from ltxc.commands.verify import reference_call
    from ltxc.components import DTYPES
    from ltxc.sampler import Sampler

    family, pipe = saved_pipeline
    plan = compile_spec(load_spec(_child_spec(family, pipe, dtype, tmp_path)))
    steps, guidance, prompt = 3, plan.sampler.guidance, "a red ball bounces across a wooden floor"
    ours = Sampler(plan, plan.components(), "cpu")([prompt], **SIZE, steps=steps, guidance=guidance, seed=0)

    pipeline_class = resolve_class(plan.reference, DiffusionPipeline)
    dtypes = {role: DTYPES[r.dtype] for role, r in plan.recipes.items() if r.kind == "module"}
    reference = pipeline_class.from_pretrained(str(pipe), torch_dtype={**dtypes, "default": dtypes["transformer"]})
    reference.set_progress_bar_config(disable=True)
    kwargs, _ = reference_call(pipeline_class, plan, prompt, *SIZE.values(), steps, guidance)
    captured: dict[str, torch.Tensor] = {}

    def capture(_pipe, _step, _t, tensors):  # type: ignore[no-untyped-def]
        captured["latents"] = tensors["latents"].detach().float().clone()
        return tensors

    output = reference(
        **kwargs | {"generator": torch.Generator().manual_seed(0)},
        output_type="np",
        callback_on_step_end=capture,
        callback_on_step_end_tensor_inputs=["latents"],
    )
    latents = (plan.geometry.pack(ours.latents) - captured["latents"]).abs().max().item()
    frames = (ours.video - torch.from_numpy(np.asarray(output.frames)).float()).abs().max().item()
    print(
        f"\n{family} {dtype or 'real dtypes'}: independent pipeline max |Δ| latents {latents:.3e} frames {frames:.3e}"
    )
    assert (latents, frames) == (0.0, 0.0)
