"""LoRA and full fine-tune exports on the tiny LTX-Video spec, checked against diffusers as the oracle.

- LoRA, diffusers format: a fresh `LTXPipeline.load_lora_weights(dir)` reproduces the trained (LoRA'd)
  transformer's output and a 2-step pipeline call exactly, with alpha != rank so a wrong scale would show.
- LoRA, ComfyUI format: keys, counts, alpha tensors, and the same B·A·alpha/rank deltas as peft.
- Full fine-tune: `LTXVideoTransformer3DModel.from_pretrained(dir)` gives the exported weights (also sharded
  and cast to bf16).
- `lora_config(exclude=...)` keeps excluded modules untouched.

Run: `pytest tests/test_export.py` (CPU, tiny random weights, nothing downloaded; a few seconds).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from diffusers import LTXPipeline, LTXVideoTransformer3DModel
from safetensors import safe_open
from safetensors.torch import load_file

from ltxc.plan import Plan
from ltxc.runner.config import ExportSection
from ltxc.runner.export import (
    COMFYUI_LORA,
    COMFYUI_PREFIX,
    DIFFUSERS_LORA,
    WEIGHTS_INDEX,
    export_full,
    export_lora,
    export_trained,
    from_comfyui,
)
from ltxc.runner.lora import add_lora, lora_config, lora_state_dict
from ltxc.runner.run_dir import LORA, TRANSFORMER, RunDir

RANK, ALPHA = 4, 8.0  # scale 2: a loader that assumed alpha = rank would be off by 2x
TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def fixed_inputs() -> dict[str, Any]:
    """One small, fixed transformer input: 1x2x3 latent tokens, 5 text tokens."""
    gen = torch.Generator().manual_seed(0)
    return {
        "hidden_states": torch.randn(1, 6, 128, generator=gen),
        "encoder_hidden_states": torch.randn(1, 5, 32, generator=gen),
        "encoder_attention_mask": torch.ones(1, 5),
        "timestep": torch.tensor([500.0]),
        "num_frames": 1,
        "height": 2,
        "width": 3,
    }


@torch.no_grad()
def forward(transformer: torch.nn.Module) -> torch.Tensor:
    return transformer.eval()(**fixed_inputs(), return_dict=False)[0]


def pipeline(components: Any) -> LTXPipeline:
    return LTXPipeline(**{role: components[role] for role in components})


@torch.no_grad()
def generate(pipe: LTXPipeline) -> torch.Tensor:
    """A 2-step generation with a fixed seed, decoded to pixels."""
    out = pipe(
        prompt="a red square moving right",
        num_inference_steps=2,
        num_frames=9,
        height=64,
        width=96,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    )
    return out.frames


@pytest.fixture(scope="module")
def trained(plan: Plan, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The tiny transformer with a "trained" LoRA (random non-zero A and B), exported once."""
    components = plan.components()
    transformer = components["transformer"]
    config = lora_config(TARGETS, RANK, ALPHA)
    add_lora(transformer, config)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if ".lora_" in name:  # lora_B starts at zero: without this the adapter would change nothing
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    state = lora_state_dict(transformer)
    out = tmp_path_factory.mktemp("lora")
    paths = export_lora(state, out, pipeline_reference=plan.spec.model.reference, config=config)
    return SimpleNamespace(components=components, transformer=transformer, config=config, state=state, out=out,
                           paths=paths)  # fmt: skip


def test_export_writes_both_formats(trained: SimpleNamespace, plan: Plan) -> None:
    assert plan.spec.model.reference == "diffusers:LTXPipeline"
    assert trained.paths == {"diffusers": trained.out / DIFFUSERS_LORA, "comfyui": trained.out / COMFYUI_LORA}
    assert all(path.is_file() for path in trained.paths.values())
    assert sorted(p.name for p in trained.out.iterdir()) == sorted([DIFFUSERS_LORA, COMFYUI_LORA])  # no temp left
    # 2 blocks x 2 attentions x 4 projections, each with A and B
    assert len(trained.state) == 2 * 2 * 4 * 2
    assert all(v.device.type == "cpu" and v.dtype == torch.float32 for v in trained.state.values())


def test_diffusers_lora_reproduces_trained_transformer(trained: SimpleNamespace, plan: Plan) -> None:
    fresh = pipeline(plan.components())
    base = forward(fresh.transformer)
    expected = forward(trained.transformer)
    assert (expected - base).abs().max() > 1e-2  # the LoRA changes the output noticeably

    fresh.load_lora_weights(trained.out)
    (adapter,) = fresh.transformer.peft_config.values()
    assert (adapter.r, adapter.lora_alpha) == (RANK, ALPHA)  # from the file's metadata, not guessed
    got = forward(fresh.transformer)
    assert (got - expected).abs().max() <= 1e-6


def test_diffusers_lora_reproduces_pipeline_output(trained: SimpleNamespace, plan: Plan) -> None:
    expected = generate(pipeline(trained.components))
    fresh = pipeline(plan.components())
    base = generate(fresh)
    fresh.load_lora_weights(trained.out)
    got = generate(fresh)
    assert got.shape == expected.shape == (1, 9, 3, 64, 96)
    assert (expected - base).abs().max() > 1e-4
    assert (got - expected).abs().max() <= 1e-6


def test_comfyui_file_keys_alphas_and_deltas(trained: SimpleNamespace) -> None:
    comfy = load_file(trained.paths["comfyui"])
    modules = {key.removesuffix(".lora_A.weight") for key in trained.state if key.endswith(".lora_A.weight")}
    assert len(comfy) == len(trained.state) + len(modules)  # A, B and one alpha per module
    assert all(key.startswith(COMFYUI_PREFIX) for key in comfy)
    for module in modules:
        for part in ("lora_A.weight", "lora_B.weight"):
            assert torch.equal(comfy[f"{COMFYUI_PREFIX}{module}.{part}"], trained.state[f"{module}.{part}"])
        alpha = comfy[f"{COMFYUI_PREFIX}{module}.alpha"]
        assert alpha.shape == () and alpha.item() == ALPHA

    with safe_open(trained.paths["comfyui"], framework="pt") as handle:
        meta = handle.metadata()
    assert (meta["ss_network_dim"], float(meta["ss_network_alpha"])) == (str(RANK), ALPHA)

    weights, alphas = from_comfyui(comfy)
    assert set(weights) == set(trained.state) and set(alphas) == modules
    layers = dict(trained.transformer.named_modules())
    for module in modules:
        a, b = weights[f"{module}.lora_A.weight"], weights[f"{module}.lora_B.weight"]
        comfy_delta = b @ a * (alphas[module] / a.shape[0])  # ComfyUI: up @ down * alpha / rank
        layer = layers[module]
        peft_delta = layer.get_delta_weight("default")  # peft's own B @ A * scaling
        assert layer.scaling["default"] == ALPHA / RANK
        assert torch.allclose(comfy_delta, peft_delta, rtol=0, atol=1e-6)
        assert peft_delta.abs().max() > 1e-2


def test_comfyui_keys_are_what_diffusers_reads_as_original_format(trained: SimpleNamespace) -> None:
    """diffusers' own reader for the original (non-diffusers) LTX LoRA layout maps our keys onto its own."""
    comfy = load_file(trained.paths["comfyui"])
    without_alpha = {k: v for k, v in comfy.items() if not k.endswith(".alpha")}
    converted = LTXPipeline.lora_state_dict(without_alpha)
    assert set(converted) == set(load_file(trained.paths["diffusers"]))


def test_lora_config_exclude_keeps_modules_untouched(plan: Plan) -> None:
    transformer = plan.components()["transformer"]
    add_lora(transformer, lora_config(TARGETS, 2, 2.0, exclude=("transformer_blocks.1", "attn2")))
    adapted = {name for name, module in transformer.named_modules() if hasattr(module, "lora_A")}
    expected = {f"transformer_blocks.0.attn1.{t}" for t in TARGETS}
    assert adapted == expected
    trainable = {name for name, p in transformer.named_parameters() if p.requires_grad}
    assert trainable == {f"{m}.lora_{ab}.default.weight" for m in expected for ab in "AB"}
    assert set(lora_state_dict(transformer)) == {f"{m}.lora_{ab}.weight" for m in expected for ab in "AB"}


def test_lora_weights_stay_fp32_on_a_bf16_base(plan: Plan) -> None:
    transformer = plan.components()["transformer"].to(torch.bfloat16)
    add_lora(transformer, lora_config(TARGETS, RANK, ALPHA))
    params = dict(transformer.named_parameters())
    assert {p.dtype for n, p in params.items() if ".lora_" in n} == {torch.float32}
    assert {p.dtype for n, p in params.items() if ".lora_" not in n} == {torch.bfloat16}
    assert all(p.requires_grad == (".lora_" in n) for n, p in params.items())


def perturbed_transformer(plan: Plan) -> torch.nn.Module:
    """The tiny transformer with one weight changed, so a load of the seeded original would not match."""
    transformer = plan.components()["transformer"]
    with torch.no_grad():
        transformer.proj_in.weight.add_(1.0)
    return transformer


@pytest.mark.parametrize("mode", ["module", "state_dict_sharded", "bf16"])
def test_full_export_loads_with_from_pretrained(plan: Plan, tmp_path: Path, mode: str) -> None:
    transformer = perturbed_transformer(plan)
    expected = {k: v.clone() for k, v in transformer.state_dict().items()}
    out = tmp_path / "transformer"
    if mode == "module":
        export_full(transformer, out)
    elif mode == "state_dict_sharded":
        export_full(transformer, out, state_dict=expected, max_shard_size="20KB")
        assert (out / WEIGHTS_INDEX).is_file() and len(list(out.glob("*.safetensors"))) > 1
    else:
        export_full(transformer, out, dtype=torch.bfloat16)
        expected = {k: v.to(torch.bfloat16) for k, v in expected.items()}
    assert not list(tmp_path.glob(".*"))  # the temp directory was renamed into place
    loaded = LTXVideoTransformer3DModel.from_pretrained(out, torch_dtype=next(iter(expected.values())).dtype)
    got = loaded.state_dict()
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_full_export_refuses_a_lora_model(trained: SimpleNamespace, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="LoRA"):
        export_full(trained.transformer, tmp_path / "t")


def test_export_trained_writes_the_run_exports(trained: SimpleNamespace, plan: Plan, tmp_path: Path) -> None:
    export = ExportSection(lora_diffusers=True, lora_comfyui=True, full=True)
    out = RunDir(tmp_path).export
    lora = export_trained(plan, trained.transformer, trained.config, export, out, is_main=True)
    assert set(lora) == {"lora_diffusers", "lora_comfyui"}
    assert Path(lora["lora_diffusers"]) == out / LORA / DIFFUSERS_LORA
    assert load_file(lora["lora_diffusers"]).keys() == load_file(trained.paths["diffusers"]).keys()

    full = export_trained(plan, perturbed_transformer(plan), None, export, out, is_main=True)
    assert set(full) == {"transformer"} and Path(full["transformer"]) == out / TRANSFORMER
    assert (Path(full["transformer"]) / "config.json").is_file()

    # only what the run config asks for
    comfyui_only = ExportSection(lora_diffusers=False, lora_comfyui=True)
    assert set(
        export_trained(plan, trained.transformer, trained.config, comfyui_only, tmp_path / "c", is_main=True)
    ) == {"lora_comfyui"}
    none = ExportSection(lora_diffusers=False, lora_comfyui=False, full=False)
    assert export_trained(plan, perturbed_transformer(plan), None, none, tmp_path / "n", is_main=True) == {}


def test_comfyui_renames_replace_whole_name_parts_and_round_trip(trained: SimpleNamespace) -> None:
    """`[lora] comfyui_names`: whole dot-separated parts, longest first; from_comfyui undoes it exactly."""
    from ltxc.runner.export import rename_parts, to_comfyui

    names = {"attn1": "self_attn", "to_q": "q", "to_out.0": "o", "ffn.net.0.proj": "ffn.0"}
    assert rename_parts("blocks.3.attn1.to_q", names) == "blocks.3.self_attn.q"
    assert rename_parts("blocks.3.attn1.to_out.0", names) == "blocks.3.self_attn.o"
    assert rename_parts("blocks.3.ffn.net.0.proj", names) == "blocks.3.ffn.0"
    assert rename_parts("blocks.13.attn10.to_qk", names) == "blocks.13.attn10.to_qk"  # parts, not substrings
    config = trained.config
    comfy = to_comfyui(trained.state, config, names)
    assert not any(".attn1." in key or ".to_q." in key for key in comfy)
    weights, alphas = from_comfyui(comfy, names)
    assert set(weights) == set(trained.state)
    assert all(torch.equal(weights[key], trained.state[key]) for key in weights)
    assert set(alphas) == {key.removesuffix(".lora_A.weight") for key in trained.state if key.endswith("lora_A.weight")}


def test_ltx23_comfyui_names_are_what_diffusers_reads_as_the_original_ltx2_layout(tmp_path: Path) -> None:
    """LTX-2.3's `comfyui_names` give every Linear of the transformer (both streams' attention, the cross-modal
    modules, and the parts diffusers' conversion renames: proj_in, time_embed, prompt_adaln, av_cross_attn_*) the
    original checkpoint's name: diffusers' own reader for that layout maps each key back onto the diffusers name."""
    from diffusers import LTX2Pipeline

    from ltxc.compiler import compile_spec
    from ltxc.runner.export import rename_parts, to_comfyui
    from ltxc.spec import load_spec

    plan = compile_spec(load_spec(Path(__file__).parent.parent / "specs" / "tiny" / "ltx-2.3.toml"))
    transformer = plan.components()["transformer"]
    linears = [n for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)]
    renamed = {n for n in linears if rename_parts(n, plan.lora.comfyui_names) != n}
    assert any(n.startswith("audio_proj_in") for n in renamed) and any("time_embed" in n for n in renamed)
    assert any(".audio_attn1.to_q" in n for n in linears) and any("video_to_audio_attn" in n for n in linears)
    config = lora_config(tuple(sorted(set(linears))), RANK, ALPHA)
    add_lora(transformer, config)
    state = lora_state_dict(transformer)
    comfy = to_comfyui(state, config, plan.lora.comfyui_names)
    converted = LTX2Pipeline.lora_state_dict({k: v for k, v in comfy.items() if not k.endswith(".alpha")})
    assert set(converted) == {f"transformer.{key}" for key in state}
    # ComfyUI's LTX-2 model carries the original names only (diffusers' reader above also accepts its own, so check
    # directly that no diffusers-only part name is left)
    diffusers_only = set(plan.lora.comfyui_names)
    assert not {part for key in comfy for part in key.split(".")} & diffusers_only
    assert "diffusion_model.patchify_proj.lora_A.weight" in comfy
