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
