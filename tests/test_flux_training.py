"""Training's transformer inputs for the tiny FLUX.1-dev spec are what FluxPipeline passes for the same latents and σ.

The adapter builds them from a cache record (the processor's `cache_text`: T5 sequence, CLIP pooled output) through
the same `[transformer.call]` as sampling: hidden_states, timestep (σ·1000 in the latents' dtype, / 1000), the
guidance input at its training value (the spec's 1.0, or an override as the run config gives it), the pooled
projections, the text ids and the image ids. The reference is a forward hook on FluxPipeline's transformer at its
first step, run with guidance_scale equal to the training value; in float32 and on a bf16 twin.

Run: `pytest -q tests/test_flux_training.py` (CPU, tiny models, no downloads).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import SPECS

from ltxc.adapter import Adapter
from ltxc.commands.verify import build_reference
from ltxc.compiler import compile_spec
from ltxc.errors import UserError
from ltxc.processor import Processor
from ltxc.spec import load_spec

TINY_FLUX = SPECS / "tiny" / "flux-1.toml"


def _reference_call(pipeline, guidance: float) -> dict[str, torch.Tensor]:
    """The keyword tensors FluxPipeline's transformer got at the first step, and the step's σ (as `sigma`)."""
    got: dict[str, torch.Tensor] = {}

    def hook(_module, _args, kwargs, _output):
        if not got:
            got.update({k: v.detach().clone() for k, v in kwargs.items() if torch.is_tensor(v)})

    handle = pipeline.transformer.register_forward_hook(hook, with_kwargs=True)
    try:
        pipeline(prompt=["a red ball"], height=32, width=48, num_inference_steps=2, guidance_scale=guidance,
                 max_sequence_length=32, generator=torch.Generator().manual_seed(0), output_type="latent")  # fmt: skip
    finally:
        handle.remove()
    got["sigma"] = pipeline.scheduler.sigmas[:1].clone()
    return got


def bf16_twin(directory: Path) -> Path:
    """The tiny spec with its transformer, VAE and both text encoders in bf16."""
    roles = ("transformer", "vae", "text_encoder", "text_encoder_2")
    twin = directory / "flux-bf16.toml"
    twin.write_text(f'[model]\nname = "flux-bf16"\nextends = {json.dumps(TINY_FLUX.resolve().as_posix())}\n'
                    + "".join(f'\n[components.{role}]\ndtype = "bfloat16"\n' for role in roles))  # fmt: skip
    return twin


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("override", [None, 3.5])
def test_training_inputs_equal_the_pipelines(override: float | None, dtype: str, tmp_path: Path) -> None:
    from diffusers import FluxPipeline

    plan = compile_spec(load_spec(TINY_FLUX if dtype == "float32" else bf16_twin(tmp_path)))
    components = plan.components()
    pipeline = build_reference(FluxPipeline, components)
    pipeline.set_progress_bar_config(disable=True)
    guidance = plan.inputs["guidance"].train if override is None else override
    theirs = _reference_call(pipeline, guidance)

    text = Processor(plan, components).cache_text(["a red ball"])  # what the cache stores
    assert text["pooled"].shape == (1, 32)  # CLIP's pooled output: no length axis
    grid = plan.geometry.unpack(theirs["hidden_states"], 1, 4, 6)  # the same latents, as a cache batch holds them
    adapter = Adapter(plan, inputs=None if override is None else {"guidance": override})
    transformer = components[plan.transformer_role]
    env = adapter.environment(grid, theirs["sigma"], text, plan.sampler.fps, compute_dtype=transformer.dtype)
    ours = adapter.model_kwargs(env)

    assert set(ours) == {k for k in theirs if k != "sigma"}
    for key, value in ours.items():
        assert value.dtype == theirs[key].dtype, key
        assert torch.equal(value, theirs[key]), key


def test_unknown_input_override_is_a_user_error() -> None:
    plan = compile_spec(load_spec(TINY_FLUX))
    with pytest.raises(UserError, match=r"has no input 'guidanse'.*its \[inputs\]: guidance"):
        Adapter(plan, inputs={"guidanse": 2.0})
