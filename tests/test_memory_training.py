"""Memory-saving training on the tiny LTX-Video spec and its bf16 twin: what the runner keeps in which form.

- Never upcast what is not trained: a LoRA on the bf16 twin holds ≤ 0.6× the parameter bytes of the same LoRA
  on the float32 spec (frozen base bf16, adapters float32, kept-in-float32 modules as loaded); a full fine-tune
  still trains float32 masters; `parallel.precision = "fp32"` upcasts everything.
- NF4 base (`train.base = "nf4"`): how many frozen linear weights are quantised and how many skipped (sizes
  that do not fit torchao's 64 × 256 blocks), the forward within NF4's error of the bf16 base, gradients only to
  the LoRA; a LoRA trains on it, its diffusers export loads into a fresh pipeline with the trained weights;
  `nf4` with a full fine-tune, and `int8` on several processes, are one-line errors; `int8` on one process stores
  every frozen linear weight int8 (torchao weight-only), forward within int8's error, gradients only to the LoRA.
- Optimizers: `adamw_8bit` keeps 8-bit moments exactly for the tensors of ≥ 4,096 elements (widths here are
  multiples of 128); `adamw_bf16` keeps a full fine-tune's weights bf16 after steps; it is refused for a LoRA.
- Exact resume with an NF4 base and 8-bit AdamW: stop + resume equals the uninterrupted run, at 1 rank here and
  at 2 ranks under torchrun (slow; the harness of test_train_distributed.py).

Run: `pytest -q tests/test_memory_training.py` (CPU, tiny random weights; the 2-rank test is `-m slow`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch
from conftest import TINY_LTX, TINY_LTX2, SharedTorchrun
from diffusers import LTXPipeline
from distributed_worker import Prepared, Scenario, shared_group
from test_train import config, make_cache, read_checkpoint
from test_train_distributed import Run, assert_close, make_workspace, train_args

from ltxc.adapter import Adapter
from ltxc.compiler import compile_spec
from ltxc.errors import UserError
from ltxc.media.synthetic import make_sample_dataset
from ltxc.plan import Plan
from ltxc.runner.config import RunConfig
from ltxc.runner.distributed import init_distributed
from ltxc.runner.model import build_model
from ltxc.runner.optim import STATE_BLOCK, STATE_MIN, make_optimizer, quantised_states
from ltxc.runner.quantise import NF4_UNIT, check_base, count_nf4, is_nf4, is_quantised, quantise_base, tensor_bytes
from ltxc.runner.train import train
from ltxc.spec import load_spec

MODULES = ("transformer", "vae", "text_encoder")


pytestmark = pytest.mark.usefixtures("module_process_group")


def write_bf16_twin(directory: Path) -> Path:
    """The tiny spec's twin with bf16 components (written to `directory`, `extends` the tiny spec)."""
    spec = directory / "bf16.toml"
    body = f'[model]\nname = "ltx-video-tiny-bf16"\nextends = {json.dumps(TINY_LTX.resolve().as_posix())}\n'
    body += "".join(f'\n[components.{role}]\ndtype = "bfloat16"\n' for role in MODULES)
    spec.write_text(body, encoding="utf-8")
    return spec


@pytest.fixture(scope="module")
def bf16_plan(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    """The tiny spec's twin with bf16 components."""
    return compile_spec(load_spec(write_bf16_twin(tmp_path_factory.mktemp("bf16"))))


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    make_sample_dataset(folder, clips=4, images=0, seed=0)
    return folder


@pytest.fixture(scope="module")
def cache(plan: Plan, media: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cache(plan, media, tmp_path_factory.mktemp("cache") / "cache")


def run_config(tmp_path: Path, **sections: dict[str, Any]) -> RunConfig:
    return config(tmp_path / "run", tmp_path / "no-cache", **sections)


def built(plan: Plan, cfg: RunConfig) -> torch.nn.Module:
    model, _, _ = build_model(plan, cfg, init_distributed("cpu"))
    return model


def parameter_bytes(model: torch.nn.Module) -> int:
    return sum(tensor_bytes(p) for p in model.parameters())


# -- 1. never upcast what is not trained ---------------------------------------------------------------


def test_a_lora_on_the_bf16_twin_keeps_its_base_bf16(plan: Plan, bf16_plan: Plan, tmp_path: Path) -> None:
    cfg = run_config(tmp_path)
    f32, half = built(plan, cfg), built(bf16_plan, cfg)
    ratio = parameter_bytes(half) / parameter_bytes(f32)
    print(f"LoRA parameter bytes, bf16 twin / float32 spec: {ratio:.3f}")
    assert ratio <= 0.6
    kept = tuple(type(half)._keep_in_fp32_modules or ())
    for name, param in half.named_parameters():
        if param.requires_grad:
            assert ".lora_" in name and param.dtype == torch.float32, name
        elif not any(part in kept for part in name.split(".")):
            assert param.dtype == torch.bfloat16, name

    full = built(bf16_plan, attrs.evolve(cfg, train=attrs.evolve(cfg.train, mode="full")))
    assert {p.dtype for p in full.parameters()} == {torch.float32}  # what trains gets float32 masters
    upcast = built(bf16_plan, attrs.evolve(cfg, parallel=attrs.evolve(cfg.parallel, precision="fp32")))
    assert {p.dtype for p in upcast.parameters()} == {torch.float32}  # "fp32": float32 throughout


# -- 2. the NF4 base -----------------------------------------------------------------------------------


def nf4_config(tmp_path: Path, **sections: dict[str, Any]) -> RunConfig:
    return run_config(tmp_path, **{**sections, "train": {"base": "nf4", **sections.get("train", {})}})


def expected_nf4(model: torch.nn.Module) -> tuple[int, int]:
    """(quantised, skipped) by the rule, counted independently on the unquantised LoRA model."""
    weights = [m.weight for m in model.modules() if type(m) is torch.nn.Linear and not m.weight.requires_grad]
    fits = sum(w.numel() % NF4_UNIT == 0 for w in weights)
    return fits, len(weights) - fits


def tiny_ltx_inputs() -> dict[str, Any]:
    """Seeded bf16 inputs for the tiny LTX-Video transformer: 6 tokens (1 x 2 x 3 latent grid), 5 text tokens."""
    gen = torch.Generator().manual_seed(0)
    return {
        "hidden_states": torch.randn(1, 6, 128, generator=gen).bfloat16(),
        "encoder_hidden_states": torch.randn(1, 5, 32, generator=gen).bfloat16(),
        "encoder_attention_mask": torch.ones(1, 5),
        "timestep": torch.tensor([500.0]),
        "num_frames": 1,
        "height": 2,
        "width": 3,
    }


def test_nf4_quantises_the_frozen_linear_weights_that_fit(
    bf16_plan: Plan, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reference = built(bf16_plan, run_config(tmp_path))
    capsys.readouterr()
    model = built(bf16_plan, nf4_config(tmp_path))
    err = capsys.readouterr().err
    quantised, skipped = expected_nf4(reference)
    assert (quantised, skipped) == (26, 1)  # skipped: the caption projection's 32 -> 256 (8,192 elements)
    assert f"nf4 base: quantised {quantised} frozen linear weights, left {skipped} as loaded" in err
    assert count_nf4(model) == quantised
    assert not any(is_nf4(p) for p in model.parameters() if p.requires_grad)
    assert parameter_bytes(model) < 0.45 * parameter_bytes(reference)

    # The forward is the bf16 base's within NF4's error; gradients reach only the LoRA.
    inputs = tiny_ltx_inputs()
    want = reference(**inputs).sample.float()
    got = model(**inputs).sample.float()
    error = ((got - want).norm() / want.norm()).item()
    assert 1e-3 < error < 0.2, error  # quantised (not bit-equal), yet close: NF4's ~ 1/16 relative step
    got.square().mean().backward()
    grads = {name for name, p in model.named_parameters() if p.grad is not None}
    assert grads and all(".lora_" in name for name in grads)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_nf4_quantises_every_frozen_linear_and_no_trainable_one() -> None:
    """The frozen branch of a video-only run (the plan's `frozen` parts) is frozen like the base, so it is quantised
    with it. (The tiny LTX-2.3 twin's widths are too small for any NF4 block: 0 of its 96 linear weights fit.)"""
    model = torch.nn.ModuleDict({
        "video": torch.nn.Linear(256, 256), "audio_proj": torch.nn.Linear(256, 128), "odd": torch.nn.Linear(96, 96),
        "trained": torch.nn.Linear(256, 256),
    })  # fmt: skip
    model.requires_grad_(False)
    model["trained"].requires_grad_(True)
    report = quantise_base(model, "nf4", shards=2)
    assert (report.quantised, report.skipped) == (2, 1)
    assert is_nf4(model["video"].weight) and is_nf4(model["audio_proj"].weight)
    assert not is_nf4(model["odd"].weight) and not is_nf4(model["trained"].weight)
    assert report.bytes_after < report.bytes_before
    assert quantise_base(model, "as_loaded") is None


def wide_audio_twin(directory: Path) -> Plan:
    """The tiny LTX-2.3 twin, bf16, with a 256-wide audio branch (4 heads x 64): wide enough for NF4's blocks."""
    spec = directory / "wide-audio.toml"
    spec.write_text(
        f'[model]\nname = "ltx-2.3-wide-audio"\nextends = {json.dumps(TINY_LTX2.resolve().as_posix())}\n\n'
        '[components.transformer]\ndtype = "bfloat16"\n'
        "config = { audio_num_attention_heads = 4, audio_attention_head_dim = 64, audio_cross_attention_dim = 256 }\n",
        encoding="utf-8",
    )
    return compile_spec(load_spec(spec))


def test_nf4_quantises_the_frozen_audio_branch_of_a_video_only_lora(tmp_path: Path) -> None:
    """A video-only LTX-2.3 LoRA: the audio and cross-modal branches (`[parallel] frozen`) are stored NF4 with the
    base; with the modalities isolated (as training runs them) the video prediction is the as-loaded model's (the
    audio weights do not reach it), and gradients reach only the video LoRA."""
    plan = wide_audio_twin(tmp_path)
    # the reference unwrapped as the one-process NF4 model is (the fused step leaves one process unwrapped too), so
    # both compute the LoRA branch alike
    reference = built(plan, run_config(tmp_path, lora={"rank": 4}, train={"fused_optimizer_step": True}))
    model = built(plan, nf4_config(tmp_path, lora={"rank": 4}))
    quantised = [name for name, p in model.named_parameters() if is_nf4(p)]
    in_frozen_branch = [name for name in quantised if any(part in name for part in plan.frozen)]
    print(f"wide-audio LTX-2.3 twin: {len(quantised)} NF4 weights, {len(in_frozen_branch)} in the frozen branch")
    assert quantised and len(in_frozen_branch) == len(quantised)  # the video branch (32 wide) fits no block
    assert any(name.startswith("audio_transformer_blocks") or ".audio_attn" in name for name in quantised)

    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 128, 2, 2, 3, generator=gen)
    text = {"embeds": torch.randn(1, 8, 32, generator=gen), "audio_embeds": torch.randn(1, 8, 256, generator=gen),
            "mask": torch.ones(1, 8, dtype=torch.long)}  # fmt: skip
    sigma = torch.tensor([0.5])
    adapter = Adapter(plan)
    want = adapter.predict(reference, latents, sigma, text, 24.0, compute_dtype=torch.bfloat16)
    got = adapter.predict(model, latents, sigma, text, 24.0, compute_dtype=torch.bfloat16)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    got.square().mean().backward()
    grads = [name for name, p in model.named_parameters() if p.grad is not None]
    assert grads and all(".lora_" in name and not any(part in name for part in plan.frozen) for name in grads)


def test_nf4_is_refused_for_a_full_fine_tune_and_int8_on_several_processes(plan: Plan, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r'train.base = "nf4".*train.mode = "lora"'):
        built(plan, nf4_config(tmp_path, train={"mode": "full"}))
    for world, offload in ((2, False), (1, True)):
        with pytest.raises(UserError, match=r'train.base = "int8" trains on one process only.*use train.base = "nf4"'):
            check_base("int8", "lora", world, offload)
    with pytest.raises(UserError, match=r'optimizer.name = "adamw_bf16".*train.mode = "full"'):
        built(plan, run_config(tmp_path, optimizer={"name": "adamw_bf16"}))


def test_int8_stores_every_frozen_linear_on_one_process(bf16_plan: Plan, tmp_path: Path) -> None:
    """int8 weight-only (one process, where it composes): every frozen linear weight int8 with a scale per row,
    the forward within int8's error of the bf16 base, gradients only to the LoRA, bytes as the plan counts them."""
    reference = built(bf16_plan, run_config(tmp_path, train={"fused_optimizer_step": True}))  # unwrapped alike
    model = built(bf16_plan, run_config(tmp_path, train={"base": "int8"}))
    frozen = [m.weight for m in reference.modules() if type(m) is torch.nn.Linear and not m.weight.requires_grad]
    quantised = [p for p in model.parameters() if is_quantised(p)]
    assert len(quantised) == len(frozen) == 27 and not any(
        is_quantised(p) for p in model.parameters() if p.requires_grad
    )
    assert parameter_bytes(model) < 0.6 * parameter_bytes(reference)
    inputs = tiny_ltx_inputs()
    want, got = reference(**inputs).sample.float(), model(**inputs).sample.float()
    error = ((got - want).norm() / want.norm()).item()
    print(f"int8 base: {len(quantised)} weights, relative error of the forward {error:.2e}")
    assert 0 < error < 5e-2  # quantised (not bit-equal), and well inside NF4's error
    got.square().mean().backward()
    grads = {name for name, p in model.named_parameters() if p.grad is not None}
    assert grads and all(".lora_" in name for name in grads)


def test_an_nf4_lora_trains_and_its_export_loads_in_diffusers(plan: Plan, cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = config(run, cache, train={"steps": 24, "base": "nf4"}, optimizer={"lr": 3e-3},
                 export={"lora_diffusers": True})  # fmt: skip
    result = train(plan, cfg)
    first, last = sum(result.losses[:6]) / 6, sum(result.losses[-6:]) / 6
    print(f"NF4 LoRA, 24 steps: first-6 mean {first:.4f}, last-6 mean {last:.4f}")
    assert last < first

    trained = read_checkpoint(result.checkpoint, tmp_path)["model"]
    components = plan.components()
    pipe = LTXPipeline(**components)
    pipe.load_lora_weights(run / "export" / "lora")
    loaded = {plain(k): v for k, v in pipe.transformer.state_dict().items() if ".lora_" in k}
    want = {plain(k): v for k, v in trained.items()}
    assert set(loaded) == set(want) and loaded
    for key, value in want.items():
        assert torch.equal(loaded[key], value.to(loaded[key].dtype)), key


def plain(key: str) -> str:
    """A LoRA weight's name without its adapter's ("default" in training, "default_0" once loaded)."""
    return re.sub(r"\.default(_\d+)?\.", ".", key)


# -- 3. the low-memory optimizers ----------------------------------------------------------------------


def one_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    gen = torch.Generator().manual_seed(0)
    dtype = next((p.dtype for p in model.parameters() if p.dtype != torch.float32), torch.float32)
    out = model(
        hidden_states=torch.randn(1, 6, 128, generator=gen).to(dtype),
        encoder_hidden_states=torch.randn(1, 5, 32, generator=gen).to(dtype),
        encoder_attention_mask=torch.ones(1, 5),
        timestep=torch.tensor([500.0]),
        num_frames=1,
        height=2,
        width=3,
    ).sample
    out.float().square().mean().backward()
    optimizer.step()


def test_adamw_8bit_keeps_8_bit_moments_for_the_big_tensors(plan: Plan, tmp_path: Path) -> None:
    # LoRA rank 32 on the tiny spec's width 256 (a multiple of 128): every A (32 x 256) and B (256 x 32) holds
    # 8,192 elements, over AdamW8bit's 4,096 and a multiple of its 256-value blocks, so each moment is 8-bit.
    # (torchao compiles its step once per tensor shape: a LoRA has two here, a full fine-tune dozens.)
    cfg = run_config(tmp_path, lora={"rank": 32}, optimizer={"name": "adamw_8bit"})
    model = built(plan, cfg)
    optimizer = make_optimizer(model.parameters(), cfg.optimizer, torch.device("cpu"))
    one_step(model, optimizer)
    trained = [p for p in model.parameters() if p.requires_grad]
    big = sum(p.numel() >= STATE_MIN and p.numel() % STATE_BLOCK == 0 for p in trained)
    assert big == len(trained) == 32  # 2 blocks x 2 attentions x (to_q, to_k, to_v, to_out.0) x (A, B)
    assert quantised_states(optimizer) == (2 * big, 0)

    # rank 4: A and B hold 1,024 elements each, under 4,096: float32 moments, none 8-bit
    cfg = run_config(tmp_path, lora={"rank": 4}, optimizer={"name": "adamw_8bit"})
    model = built(plan, cfg)
    optimizer = make_optimizer(model.parameters(), cfg.optimizer, torch.device("cpu"))
    one_step(model, optimizer)
    assert quantised_states(optimizer) == (0, 64)


def test_adamw_bf16_keeps_a_full_fine_tunes_weights_bf16(bf16_plan: Plan, tmp_path: Path) -> None:
    cfg = run_config(tmp_path, train={"mode": "full"}, optimizer={"name": "adamw_bf16", "lr": 1e-3})
    model = built(bf16_plan, cfg)
    kept = tuple(type(model)._keep_in_fp32_modules or ())
    weights = {n: p for n, p in model.named_parameters() if not any(part in kept for part in n.split("."))}
    assert all(p.requires_grad for p in weights.values())
    assert weights and {p.dtype for p in weights.values()} == {torch.bfloat16}  # no float32 master copy
    # One step over the attention projections only (torchao compiles its step per tensor shape: one shape here).
    stepped = {n: p for n, p in weights.items() if n.endswith(("to_q.weight", "to_k.weight", "to_v.weight"))}
    before = {n: p.detach().clone() for n, p in stepped.items()}
    optimizer = make_optimizer(stepped.values(), cfg.optimizer, torch.device("cpu"))
    one_step(model, optimizer)
    assert {p.dtype for p in weights.values()} == {torch.bfloat16}
    assert all(not torch.equal(before[n], p) for n, p in stepped.items())


# -- 4. exact resume with an NF4 base and 8-bit AdamW ------------------------------------------------------

LOW_MEMORY = {"train": {"steps": 8, "base": "nf4"}, "lora": {"rank": 32}, "optimizer": {"name": "adamw_8bit"}}


def test_nf4_and_adamw_8bit_resume_exactly(plan: Plan, cache: Path, tmp_path: Path) -> None:
    def run(run_dir: Path, stop_after: int | None = None):  # type: ignore[no-untyped-def]
        return train(plan, config(run_dir, cache, **LOW_MEMORY, checkpoint={"every": 0}), stop_after=stop_after)

    straight = run(tmp_path / "straight")
    assert len(set(straight.losses)) > 1
    first = run(tmp_path / "split", stop_after=4)
    second = run(tmp_path / "split")
    assert first.losses + second.losses == straight.losses  # bit-equal
    a, b = read_checkpoint(straight.checkpoint, tmp_path), read_checkpoint(second.checkpoint, tmp_path)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


TWO_RANKS = "memory-training"  # the shared torchrun launch's group (tests/distributed_worker.py)
LOW_MEMORY_SETS = ("train.base=nf4", "lora.rank=32", "optimizer.name=adamw_8bit", "checkpoint.every=6")


@shared_group(TWO_RANKS)
def prepare_two_ranks(root: Path) -> Prepared:
    """The bf16 twin's plan and a cache of the same 4 clips; 12 steps on 2 ranks x batch 1 with a checkpoint at
    step 6 ("straight"), then a second run resuming from that checkpoint ("resumed"): two runs, not three."""
    plan_path, cache = make_workspace(root, write_bf16_twin(root))
    checkpoint = root / "straight" / "checkpoints" / "step-00000006"
    scenarios = []
    for name, resume in (("straight", None), ("resumed", checkpoint)):
        args = train_args(root / name, plan_path, cache, batch=1, mode="lora", sets=LOW_MEMORY_SETS, resume=resume)
        scenarios.append(Scenario(name, tuple(args), cwd=root))
    return Prepared({"root": root}, tuple(scenarios))


@pytest.mark.slow
@pytest.mark.shared_torchrun(TWO_RANKS)
def test_nf4_and_adamw_8bit_resume_exactly_on_two_ranks(shared_torchrun: SharedTorchrun) -> None:
    # The bf16 twin: each FSDP2 unit holds NF4 weights, frozen bf16 parameters and float32 LoRA weights.
    group = shared_torchrun.group(TWO_RANKS)

    def run(name: str) -> Run:
        result = group[name]
        assert result.returncode == 0, result.stderr[-5000:]
        return Run(group.workspace["root"] / name, result.returncode, result.stderr, result.stdout)

    straight = run("straight")
    assert straight.stderr.count("nf4 base: quantised 26 frozen linear weights, left 1 as loaded") == 1  # rank 0
    assert {world for world, _, _ in straight.holds().values()} == {2}
    resumed = run("resumed")  # --resume straight's checkpoint at step 6
    assert sorted(resumed.losses()) == list(range(7, 13))
    after_six = {step: loss for step, loss in straight.losses().items() if step > 6}
    assert_close(resumed.losses(), after_six, 0.0)  # 8-bit moments and NF4 base: bit-equal after resume
