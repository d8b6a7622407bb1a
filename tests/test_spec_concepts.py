"""The general spec concepts LTX-2.3 and Wan 2.1 need, on their tiny specs (random weights, CPU, nothing
downloaded), held against diffusers where diffusers is the reference:

- video-only training of an audio-video model: the video prediction in training is exactly independent of
  the audio tokens (and is not once the audio is denoised jointly); the model the runner builds gives the
  frozen branch no gradient and no LoRA, in full and in LoRA mode;
- the text path: `[text.stage]` after a `stack_all` Gemma equals LTX2Pipeline's encode_prompt + connectors,
  `zero_padding` equals WanPipeline's cut-and-pad, `stack_all` is D-major;
- `[text] cache = "before_stage"` stores the encoder's output and the stage later gives what "after_stage"
  stores (also for the null conditioning);
- sampler guidance: x0-space CFG is velocity-space CFG, a zero-weight perturbation costs no transformer
  call, a non-zero one exactly one per step;
- spec errors for the new tables: `FILE:LINE: key.path: message`, and `ltxc verify` naming a reference
  argument the pipeline does not take.

Run: `pytest -q tests/test_spec_concepts.py`
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch
from conftest import SPECS, isolated_process_group, run_cli
from diffusers import LTX2Pipeline, WanPipeline

from ltxc.adapter import Adapter
from ltxc.commands.verify import build_reference, reference_call
from ltxc.compiler import compile_spec
from ltxc.errors import ConfigError, Problem, UserError
from ltxc.guidance import Guide
from ltxc.plan import Plan
from ltxc.processor import Processor
from ltxc.runner.config import (
    CheckpointSection,
    DataSection,
    ExportSection,
    LogSection,
    LoraSection,
    ParallelSection,
    RunConfig,
    RunSection,
    TrainSection,
)
from ltxc.runner.distributed import init_distributed
from ltxc.runner.lora import add_lora, lora_config, lora_state_dict
from ltxc.runner.model import build_model
from ltxc.sampler import Sampler
from ltxc.spec import load_spec

TINY_LTX2 = SPECS / "tiny" / "ltx-2.3.toml"
TINY_WAN = SPECS / "tiny" / "wan-2.1.toml"
PROMPTS = ["a cat", "a red ball bounces across a wooden floor, soft daylight", "waves"]  # short, truncated, short
FPS = 24.0


# -- fixtures and helpers -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plan() -> Plan:
    return compile_spec(load_spec(TINY_LTX2))


@pytest.fixture(scope="module")
def components(plan: Plan) -> Any:
    return plan.components()


@pytest.fixture(scope="module")
def text(plan: Plan, components: Any) -> dict[str, torch.Tensor]:
    """The conditioning the transformer sees for one prompt (the connectors applied)."""
    return Processor(plan, components).transformer_text(PROMPTS[:1])


@pytest.fixture(scope="module")
def process_group() -> Iterator[None]:
    """`build_model` needs a (1-rank) process group: make one, and undo it and its env afterwards."""
    with isolated_process_group():
        yield


def write_child(tmp_path: Path, parent: Path, body: str, model: str = "", name: str = "child.toml") -> Path:
    """A spec extending `parent` by absolute path; `model` goes into its [model] table, `body` after it."""
    path = tmp_path / name
    path.write_text(f'[model]\nname = "child"\nextends = "{parent.resolve().as_posix()}"\n{model}\n{body}')
    return path


def lines_of(path: Path, needle: str) -> list[int]:
    return [n for n, line in enumerate(path.read_text().splitlines(), start=1) if needle in line]


def line_of(path: Path, needle: str) -> int:
    (line,) = lines_of(path, needle)
    return line


def latents(seed: int = 0) -> torch.Tensor:
    """Noisy-looking latents [1, 128, 2, 2, 3] (9 frames of 64x96 pixels)."""
    return torch.randn(1, 128, 2, 2, 3, generator=torch.Generator().manual_seed(seed))


def frozen_part(plan: Plan, name: str) -> bool:
    return any(part in name for part in plan.spec.parallel.frozen)


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.double() - b.double()).abs().max().item()


# -- 1. video-only training of the audio-video model --------------------------------------------------


def test_training_video_prediction_ignores_the_audio(plan: Plan, components: Any, text: dict) -> None:
    adapter, transformer = Adapter(plan), components["transformer"]
    sigma = torch.tensor([0.6])
    train_env = adapter.environment(latents(), sigma, text, FPS)  # training: the audio gets its zero dummy
    dummy = train_env["audio.latents"]
    assert dummy.shape == (1, 1, 128) and not dummy.any()  # [8, 1, 16] packed to [B, L, C * M]
    noise = torch.randn(dummy.shape, generator=torch.Generator().manual_seed(5))
    assert adapter.model_kwargs(train_env)["isolate_modalities"] is True

    transformer.train()
    try:
        with torch.no_grad():
            video_dummy, audio_dummy = adapter.outputs(transformer, train_env)
            # the same training call with other audio tokens: the video must not move by a single bit
            video_noise, audio_noise = adapter.outputs(transformer, {**train_env, "audio.latents": noise})
            assert torch.equal(video_dummy, video_noise)
            assert max_abs(audio_dummy["audio"], audio_noise["audio"]) > 1e-3  # the audio did change
            assert torch.equal(adapter.predict(transformer, latents(), sigma, text, FPS), video_dummy)

            # sampling: the audio denoised jointly, cross-modal attention on; now the audio reaches the video
            joint = [
                adapter.environment(latents(), sigma, text, FPS, streams={"audio": audio}, training=False)
                for audio in (dummy, noise)
            ]
            assert adapter.model_kwargs(joint[0])["isolate_modalities"] is False
            video_a, video_b = (adapter.outputs(transformer, env)[0] for env in joint)
            assert max_abs(video_a, video_b) > 1e-3
    finally:
        transformer.eval()


def test_isolated_video_loss_never_reaches_the_audio_branch(plan: Plan, text: dict) -> None:
    """Even with every weight trainable, the training call gives the frozen parts no gradient; the
    sampling call (cross-modal attention on) would: isolation, not only freezing, keeps them out."""
    adapter = Adapter(plan)
    model = plan.components()["transformer"].train().requires_grad_(True)
    sigma = torch.tensor([0.6])

    def grads(env: dict) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        adapter.outputs(model, env)[0].mean().backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().max() > 0}

    isolated = grads(adapter.environment(latents(), sigma, text, FPS))
    assert not [name for name in isolated if frozen_part(plan, name)]
    assert [name for name in isolated if "attn1.to_q" in name]  # the video branch learns
    audio = torch.randn(1, 9, 128, generator=torch.Generator().manual_seed(2))
    joint = grads(adapter.environment(latents(), sigma, text, FPS, streams={"audio": audio}, training=False))
    assert [name for name in joint if "audio_to_video_attn" in name]


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_runner_model_freezes_the_audio_branch(
    plan: Plan, text: dict, tmp_path: Path, process_group: None, mode: str
) -> None:
    settings = RunConfig(train=TrainSection(mode=mode, activation_checkpointing="off"),
                         lora=LoraSection(rank=4, alpha=4.0), parallel=ParallelSection(precision="fp32"))  # fmt: skip
    model, config, compute_dtype = build_model(plan, settings, init_distributed("cpu"))
    assert compute_dtype is None and (config is None) == (mode == "full")
    frozen = {n: p for n, p in model.named_parameters() if frozen_part(plan, n)}
    assert len(frozen) > 100  # audio_*, av_cross_*, *a2v* of the tiny transformer
    assert not [n for n, p in frozen.items() if p.requires_grad]

    prediction = Adapter(plan).predict(model, latents(), torch.tensor([0.6]), text, FPS)
    prediction.mean().backward()
    assert not [n for n, p in frozen.items() if p.grad is not None and p.grad.abs().max() > 0]
    learning = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().max() > 0]
    assert learning and not [n for n in learning if frozen_part(plan, n)]
    if mode == "full":
        assert "proj_in.weight" in learning and "transformer_blocks.1.attn1.to_q.weight" in learning
        return
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    assert all("lora_B" in n for n in learning)  # B starts at zero, so only B has a gradient at step 0

    keys = list(lora_state_dict(model))
    assert "transformer_blocks.0.attn1.to_q.lora_A.weight" in keys
    assert "transformer_blocks.1.attn2.to_out.0.lora_B.weight" in keys
    assert not [key for key in keys if any(part in key for part in ("audio", "av_cross", "a2v"))]
    # without the exclusion the same targets would put LoRAs into the audio branch: the check above can fail
    unexcluded = plan.components()["transformer"]
    add_lora(unexcluded, lora_config(plan.spec.lora.targets, 4, 4.0))
    assert [key for key in lora_state_dict(unexcluded) if "audio" in key]


# -- 2. the text path against the reference pipelines -------------------------------------------------


def test_ltx2_conditioning_equals_the_pipeline(plan: Plan, components: Any) -> None:
    ours = Processor(plan, components).transformer_text(PROMPTS)
    pipe = build_reference(LTX2Pipeline, components)
    with torch.no_grad():
        embeds, mask, _, _ = pipe.encode_prompt(
            PROMPTS, do_classifier_free_guidance=False, max_sequence_length=plan.text.max_length
        )
        video, audio, connector_mask = pipe.connectors(embeds, mask, padding_side="left")
    assert set(ours) == {"embeds", "audio_embeds", "mask"}
    assert ours["embeds"].shape == video.shape == (3, 32, 32)
    assert ours["audio_embeds"].shape == audio.shape == (3, 32, 16)
    assert max_abs(ours["embeds"], video) <= 1e-6
    assert max_abs(ours["audio_embeds"], audio) <= 1e-6
    assert torch.equal(ours["mask"].long(), connector_mask.long())
    assert max_abs(ours["embeds"][0], ours["embeds"][2]) > 1e-3  # the prompts do reach the output
    # the tokenizer's mask, before the stage, is the pipeline's: left padding, the short prompt padded
    raw = Processor(plan, components).encoder_output(PROMPTS)
    assert torch.equal(raw["mask"].long(), mask.long())
    assert not raw["mask"][0, 0] and raw["mask"][0, -1] and raw["mask"][1].all()
    assert max_abs(raw["embeds"], embeds) <= 1e-6


def test_wan_conditioning_equals_the_pipeline() -> None:
    plan = compile_spec(load_spec(TINY_WAN))
    components = plan.components()
    ours = Processor(plan, components).transformer_text(PROMPTS)
    pipe = build_reference(WanPipeline, components)
    with torch.no_grad():
        theirs = pipe._get_t5_prompt_embeds(PROMPTS, max_sequence_length=plan.text.max_length)
    assert ours["embeds"].shape == theirs.shape == (3, 32, 32)
    assert max_abs(ours["embeds"], theirs) <= 1e-6
    mask = ours["mask"]
    lengths = mask.sum(1).tolist()
    assert lengths == [len(PROMPTS[0]) + 1, 32, len(PROMPTS[2]) + 1]  # bytes + </s>, right padding
    assert torch.equal(mask, torch.arange(32)[None] < mask.sum(1, keepdim=True))
    padded = ours["embeds"][~mask]
    assert padded.numel() and torch.equal(padded, torch.zeros_like(padded))  # exactly zero
    assert (ours["embeds"][mask].abs().sum(-1) > 0).all()
    # UMT5 itself does not give zeros there: zero_padding is what makes them so
    tokenizer, encoder = components["tokenizer"], components["text_encoder"]
    tokens = tokenizer(PROMPTS, padding="max_length", max_length=32, truncation=True, return_tensors="pt")
    with torch.no_grad():
        raw = encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
    assert (raw[~mask].abs().sum(-1) > 0).all()


def test_stack_all_is_stack_on_a_new_last_dim_then_flatten(plan: Plan, components: Any) -> None:
    ours = Processor(plan, components).encoder_output(PROMPTS)["embeds"]
    tokenizer, encoder = components["tokenizer"], components["text_encoder"]
    tokenizer.padding_side = "left"
    tokens = tokenizer(PROMPTS, padding="max_length", max_length=32, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(
            tokens.input_ids, attention_mask=tokens.attention_mask, output_hidden_states=True
        ).hidden_states
    assert len(hidden) == 3  # the embeddings and 2 layers, each [B, L, 32]
    assert ours.shape == (3, 32, 96)
    assert torch.equal(ours, torch.stack(hidden, -1).flatten(2, 3))
    assert not torch.equal(ours, torch.cat(hidden, -1))  # layer-major would be a different layout


# -- 3. cache before or after the stage ---------------------------------------------------------------


def test_before_stage_cache_then_stage_equals_after_stage_cache(plan: Plan, components: Any, tmp_path: Path) -> None:
    child = write_child(tmp_path, TINY_LTX2, '[text]\ncache = "before_stage"\n')
    before_plan = compile_spec(load_spec(child))
    assert plan.spec.text.cache == "after_stage" and before_plan.hash != plan.hash
    after, before = Processor(plan, components), Processor(before_plan, components)

    after_cache = after.cache_text(PROMPTS)
    before_cache = before.cache_text(PROMPTS)
    assert set(after_cache) == {"embeds", "audio_embeds", "mask"}
    assert set(before_cache) == {"embeds", "mask"}
    assert before_cache["embeds"].shape == (3, 32, 96)  # Gemma's 3 stacked states of width 32
    assert before_cache["mask"].dtype == torch.bool
    assert after_cache["embeds"].shape == (3, 32, 32)
    staged = before.apply_stage(before_cache)
    assert set(staged) == set(after_cache)
    for name, tensor in after_cache.items():
        assert staged[name].dtype == tensor.dtype, name
        assert max_abs(staged[name].cpu(), tensor) <= 1e-6, name

    # "no text" for CFG dropout: cached in either form, the transformer sees the same after the stage
    null_after, null_before = after.null_conditioning(), before.null_conditioning()
    assert set(null_before) == {"embeds", "mask"} and null_before["embeds"].shape == (1, 32, 96)
    staged_null = before.apply_stage(null_before)
    for name, tensor in null_after.items():
        assert max_abs(staged_null[name].cpu(), tensor) <= 1e-6, name
    assert max_abs(null_after["embeds"], after_cache["embeds"][:1]) > 1e-3


# -- 4. sampler guidance ------------------------------------------------------------------------------


def with_space(plan: Plan, space: str) -> Plan:
    return attrs.evolve(plan, sampler=attrs.evolve(plan.sampler, guidance_space=space))


def test_x0_space_cfg_equals_velocity_space_cfg(plan: Plan) -> None:
    assert plan.sampler.guidance_space == "x0"
    gen = torch.Generator().manual_seed(3)
    prediction, sample = torch.randn(2, 128, 2, 2, 3, generator=gen), torch.randn(1, 128, 2, 2, 3, generator=gen)
    perturbed = {name: torch.randn(1, 128, 2, 2, 3, generator=gen) for name in ("stg", "modality")}
    sigma = torch.tensor(0.7)
    velocity = with_space(plan, "velocity")
    for guidance in (3.0, 1.0 + 1e-3):
        x0 = Guide(plan, guidance, 0.0, True)(prediction, {}, sample, sigma)
        v = Guide(velocity, guidance, 0.0, True)(prediction, {}, sample, sigma)
        uncond, cond = prediction.chunk(2)
        assert max_abs(x0, v) <= 1e-5
        assert max_abs(v, uncond + guidance * (cond - uncond)) <= 1e-6
        # the audio stream uses its own scale (7), in either space
        audio = Guide(plan, guidance, 0.0, True)(prediction, {}, sample, sigma, "audio")
        assert max_abs(audio, uncond + 7.0 * (cond - uncond)) <= 1e-5
        # perturbation terms are deltas too: the same in both spaces
        x0 = Guide(plan, guidance, 0.0, True)(prediction, perturbed, sample, sigma)
        v = Guide(velocity, guidance, 0.0, True)(prediction, perturbed, sample, sigma)
        assert max_abs(x0, v) <= 1e-5
        expected = (
            uncond + guidance * (cond - uncond) + (cond - perturbed["stg"]) + 2.0 * (cond - perturbed["modality"])
        )
        assert max_abs(v, expected) <= 1e-5
    # guidance rescale is where the spaces differ (std of x0 vs std of v): the comparison can fail
    x0 = Guide(plan, 3.0, 0.7, True)(prediction, {}, sample, sigma)
    v = Guide(velocity, 3.0, 0.7, True)(prediction, {}, sample, sigma)
    assert max_abs(x0, v) > 1e-3


def count_calls(sampler: Sampler, steps: int) -> list[dict[str, Any]]:
    """Run `steps` steps; return each transformer call's batch size and perturbation arguments."""
    calls: list[dict[str, Any]] = []

    def record(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        calls.append(
            {
                "batch": kwargs["hidden_states"].shape[0],
                "stg": kwargs.get("spatio_temporal_guidance_blocks"),
                "isolate": kwargs.get("isolate_modalities"),
            }
        )

    handle = sampler.transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        sampler(["a cat"], steps=steps, decode=False, seed=1)
    finally:
        handle.remove()
    return calls


PERTURBATIONS = """
[[sampler.perturbations]]
name = "stg"
scale = {stg}
call = {{ spatio_temporal_guidance_blocks = "[1]" }}

[[sampler.perturbations]]
name = "modality"
scale = {modality}
weight = "scale - 1"
call = {{ isolate_modalities = "True" }}
"""


def test_zero_weight_perturbations_are_skipped(components: Any, tmp_path: Path) -> None:
    def sampler(stg: float, modality: float, name: str) -> Sampler:
        child = write_child(tmp_path, TINY_LTX2, PERTURBATIONS.format(stg=stg, modality=modality), name=name)
        return Sampler(compile_spec(load_spec(child)), components)

    steps = 2
    cfg = {"batch": 2, "stg": None, "isolate": False}  # negative and positive in one batch, audio joint
    stg = {"batch": 1, "stg": [1], "isolate": False}
    modality = {"batch": 1, "stg": None, "isolate": True}
    assert count_calls(sampler(1.0, 3.0, "both.toml"), steps) == [cfg, stg, modality] * steps
    assert count_calls(sampler(0.0, 3.0, "modality.toml"), steps) == [cfg, modality] * steps
    assert count_calls(sampler(2.0, 1.0, "stg.toml"), steps) == [cfg, stg] * steps
    none = sampler(0.0, 1.0, "none.toml")
    assert count_calls(none, steps) == [cfg] * steps
    # skipping a zero term changes nothing: the same latents as the plan without perturbations
    # (a child spec cannot drop them: the parent's reference_args name them)
    without = Sampler(attrs.evolve(none.plan, perturbations=()), components)
    latents_none = none(["a cat"], steps=steps, decode=False, seed=1).latents
    assert torch.equal(latents_none, without(["a cat"], steps=steps, decode=False, seed=1).latents)


# -- 5. spec errors -----------------------------------------------------------------------------------


def compile_problem(spec: Path) -> Problem:
    """Compile `spec`, which must fail with exactly one `FILE:LINE: key.path: message` problem."""
    with pytest.raises(ConfigError) as info:
        compile_spec(load_spec(spec))
    problems = info.value.problems
    assert len(problems) == 1, str(info.value)
    (problem,) = problems
    assert str(info.value) == f"{problem.file}:{problem.line}: {problem.path}: {problem.message}"
    assert problem.message.strip()
    return problem


def assert_problem(spec: Path, line: int, key: str, *words: str) -> None:
    problem = compile_problem(spec)
    assert (Path(problem.file).resolve(), problem.line, problem.path) == (spec.resolve(), line, key), str(problem)
    for word in words:
        assert word in problem.message, str(problem)


STREAM = 'noise = "[8, 1, 16]"\ndummy = "[8, 1, 16]"\npack = "flatten(transpose(x, 1, 2), 2)"\n'


def test_stage_component_must_exist(tmp_path: Path) -> None:
    spec = write_child(tmp_path, TINY_LTX2, '[text.stage]\ncomponent = "adapters"\n')
    assert_problem(spec, line_of(spec, "adapters"), "text.stage.component", "[components.adapters]", "connectors")


def test_before_stage_needs_a_stage(tmp_path: Path) -> None:
    spec = write_child(tmp_path, TINY_WAN, '[text]\ncache = "before_stage"\n')
    assert_problem(spec, line_of(spec, "before_stage"), "text.cache", "[text.stage]")


def test_text_lengths_must_be_multiples_of_the_stage_registers(tmp_path: Path) -> None:
    """Caught at compile time, not when the connectors raise in the middle of preprocessing."""
    spec = write_child(tmp_path, TINY_LTX2, "[text]\nmax_length = 30\n")
    assert_problem(spec, line_of(spec, "max_length = 30"), "text.max_length", "length_multiple (8)", "24 or 32")
    spec = write_child(tmp_path, TINY_LTX2, "[sampler]\nmax_sequence_length = 12\n", name="sampler.toml")
    assert_problem(spec, line_of(spec, "= 12"), "sampler.max_sequence_length", "8 or 16")


def test_two_streams_cannot_share_an_output(tmp_path: Path) -> None:
    spec = write_child(tmp_path, TINY_LTX2, f"[streams.echo]\n{STREAM}output = 1\n")
    assert_problem(spec, line_of(spec, "output = 1"), "streams.echo.output", "streams.audio.output")


def test_a_stream_cannot_take_the_video_output(tmp_path: Path) -> None:
    spec = write_child(tmp_path, TINY_LTX2, "[streams.audio]\noutput = 0\n")
    assert_problem(spec, line_of(spec, "output = 0"), "streams.audio.output", "transformer.output")


@pytest.mark.parametrize("name", ["text", "latent", "sigma", "video"])
def test_reserved_stream_names(tmp_path: Path, name: str) -> None:
    spec = write_child(tmp_path, TINY_LTX2, f"[streams.{name}]\n{STREAM}output = 2\n")
    assert_problem(spec, line_of(spec, f"[streams.{name}]"), f"streams.{name}", "reserved")


def test_reserved_stream_name_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_child(tmp_path, TINY_LTX2, f"[streams.text]\n{STREAM}output = 2\n")
    code, _out, err = run_cli(capsys, "compile", str(spec), "--out", str(tmp_path / "out"))
    assert code == 2 and "Traceback" not in err and not (tmp_path / "out" / "plan.json").exists()
    (line,) = err.splitlines()
    assert line.startswith(f"{spec}:{line_of(spec, '[streams.text]')}: streams.text: ") and "reserved" in line


def test_perturbation_names_are_unique(tmp_path: Path) -> None:
    again = '[[sampler.perturbations]]\nname = "stg"\nscale = 2.0\ncall = { spatio_temporal_guidance_blocks = "[0]" }\n'
    spec = write_child(tmp_path, TINY_LTX2, PERTURBATIONS.format(stg=1.0, modality=3.0) + "\n" + again)
    second = lines_of(spec, 'name = "stg"')[1]
    assert_problem(spec, second, "sampler.perturbations[2].name", "'stg'", "earlier")


def test_reference_args_read_only_sampler_settings(tmp_path: Path) -> None:
    spec = write_child(tmp_path, TINY_LTX2, "", model='reference_args = { video_scale = "guidanse * 2" }')
    assert_problem(spec, line_of(spec, "guidanse"), "model.reference_args.video_scale", "'guidanse'")


def test_stream_pack_reads_only_x(tmp_path: Path) -> None:
    spec = write_child(tmp_path, TINY_LTX2, '[streams.audio]\npack = "flatten(transpose(latents, 1, 2), 2)"\n')
    assert_problem(spec, line_of(spec, "pack = "), "streams.audio.pack", "'latents'")


def test_reference_args_the_pipeline_does_not_take(tmp_path: Path) -> None:
    spec = write_child(tmp_path, TINY_LTX2, "", model='reference_args = { audio_guidance_scalee = "audio.guidance" }')
    plan = compile_spec(load_spec(spec))  # the names it reads are fine; the keyword is the reference's business
    with pytest.raises(UserError, match="audio_guidance_scalee") as info:
        reference_call(LTX2Pipeline, plan, "a cat", 9, 64, 96, 1, 3.0)
    assert "LTX2Pipeline" in str(info.value) and "spatio_temporal_guidance_blocks" not in str(info.value)
    # the tiny spec's own reference_args are all taken, with the expressions evaluated
    kwargs, _ = reference_call(LTX2Pipeline, compile_spec(load_spec(TINY_LTX2)), "a cat", 9, 64, 96, 1, 3.0)
    assert kwargs["spatio_temporal_guidance_blocks"] == [1]
    assert kwargs["audio_guidance_scale"] == 7.0 and kwargs["modality_scale"] == 3.0 and kwargs["stg_scale"] == 1.0


def test_verify_cli_names_the_reference_arg_it_cannot_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_child(tmp_path, TINY_LTX2, "", model='reference_args = { audio_guidance_scalee = "audio.guidance" }')
    code, out, err = run_cli(capsys, "verify", str(spec), "--steps", "2", "--device", "cpu")
    assert code == 2 and "Traceback" not in err and "PASS" not in out
    assert "reference_args names audio_guidance_scalee" in err and "LTX2Pipeline" in err


# -- caption cleaning -------------------------------------------------------------------------------------


def test_clean_steps_do_what_they_say() -> None:
    from ltxc.text_clean import clean_caption

    dirty = "  a  red\tball &amp;amp; a\n cube  "
    assert clean_caption(dirty, ["strip"]) == "a  red\tball &amp;amp; a\n cube"
    assert clean_caption(dirty, ["collapse_whitespace"]) == "a red ball &amp;amp; a cube"
    assert clean_caption(dirty, ["unescape_html", "collapse_whitespace"]) == "a red ball & a cube"
    assert clean_caption(dirty, []) == dirty


def test_wan_cleans_captions_as_the_pipeline_does() -> None:
    """A prompt with doubled spaces and HTML entities encodes as WanPipeline encodes it (prompt_clean)."""
    plan = compile_spec(load_spec(TINY_WAN))
    components = plan.components()
    dirty = ["a  red   ball &amp; a cube ", " waves"]
    ours = Processor(plan, components).transformer_text(dirty)
    pipe = build_reference(WanPipeline, components)
    with torch.no_grad():
        theirs = pipe._get_t5_prompt_embeds(dirty, max_sequence_length=plan.text.max_length)
    assert max_abs(ours["embeds"], theirs) <= 1e-6
    # without the spec's cleaning the same prompts encode differently: the check can fail
    raw = attrs.evolve(plan, text=attrs.evolve(plan.text, clean=()))
    unclean = Processor(raw, components).transformer_text(dirty)
    assert max_abs(unclean["embeds"], theirs) > 1e-3


# -- the training loop with the text stage after the cache ------------------------------------------------


@pytest.mark.parametrize("probability", [1.0, 0.0])
def test_before_stage_training_sees_the_after_stage_conditioning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, probability: float
) -> None:
    """With `cache = "before_stage"` the loop runs the connectors itself: the transformer then sees exactly what
    an `after_stage` cache holds (captions kept) or the final null conditioning (captions dropped)."""
    from ltxc.data.dataset import CacheDataset, text_of
    from ltxc.media.synthetic import make_sample_dataset
    from ltxc.preprocess.run import preprocess
    from ltxc.preprocess.settings import build_settings
    from ltxc.runner.train import train

    media = tmp_path / "media"
    make_sample_dataset(media, clips=2, images=0, seed=0)
    after = compile_spec(load_spec(TINY_LTX2))
    before = compile_spec(load_spec(write_child(tmp_path, TINY_LTX2, '[text]\ncache = "before_stage"\n')))
    caches = {}
    for name, plan in (("after", after), ("before", before)):
        caches[name] = tmp_path / f"cache-{name}"
        preprocess(plan, media, caches[name], build_settings(plan), progress=False)
    after_set = CacheDataset(caches["after"])
    kept = [text_of(after_set[i]) for i in range(len(after_set))]
    null = text_of(after_set.null_conditioning())
    assert set(null) == {"embeds", "audio_embeds", "mask"}

    seen: list[dict[str, torch.Tensor]] = []
    original = Adapter.predict

    def spy(self: Adapter, transformer: Any, latents: Any, sigma: Any, text: Any, *a: Any, **k: Any):
        seen.append({name: tensor.detach().clone() for name, tensor in text.items()})
        return original(self, transformer, latents, sigma, text, *a, **k)

    monkeypatch.setattr(Adapter, "predict", spy)
    settings = RunConfig(
        run=RunSection(output=str(tmp_path / "run")), data=DataSection(cache=str(caches["before"]), pin_memory=False),
        train=TrainSection(mode="lora", steps=2, cfg_dropout=probability), checkpoint=CheckpointSection(every=0),
        log=LogSection(progress=False, tensorboard=False),
        export=ExportSection(lora_diffusers=False, lora_comfyui=False, full=False),
    )  # fmt: skip
    train(before, settings)
    assert len(seen) == 2
    for text in seen:
        assert set(text) == {"embeds", "audio_embeds", "mask"}
        row = {name: tensor[0] for name, tensor in text.items()}
        if probability == 1.0:
            assert all(max_abs(row[n], null[n]) <= 1e-6 for n in null)
        else:
            assert any(all(max_abs(row[n], k[n]) <= 1e-6 for n in k) for k in kept)
            assert max_abs(row["embeds"], null["embeds"]) > 1e-3


def test_a_guided_stream_keeps_cfg_on_when_the_video_is_unguided(capsys: pytest.CaptureFixture[str]) -> None:
    """As LTX2Pipeline decides it: video guidance 1 with audio guidance 7 still runs the negative branch (the
    audio is guided, and the video attends to the audio), so ltxc must too to stay equal to the reference."""
    code, out, err = run_cli(capsys, "verify", str(TINY_LTX2), "--guidance", "1", "--steps", "3")
    assert code == 0, out + err
    assert re.search(r"^  latents +max \|Δ\| = 0\.000e\+00", out, re.M)


def test_a_buffer_reference_never_falls_back_to_the_config(tmp_path: Path) -> None:
    """Wan keeps its statistics in the VAE config, not in buffers: "vae.latents_mean" is an error that names
    the right spelling, not diffusers' deprecated config fallback with a warning."""
    spec = write_child(
        tmp_path,
        TINY_WAN,
        '[latent]\nnormalise = { kind = "mean_std", mean = "vae.latents_mean", std = "vae.config.latents_std" }\n',
    )
    plan = compile_spec(load_spec(spec))
    with pytest.raises(UserError, match=r"AutoencoderKLWan has no attribute or buffer 'latents_mean'.*vae\.config"):
        plan.normaliser(plan.components())
    good = compile_spec(load_spec(TINY_WAN))
    mean = good.normaliser(good.components()).mean
    assert mean.shape == (16,) and float(mean[0]) == pytest.approx(-0.7571)
