"""The memory plan (`ltxc run train --dry-run`, `ltxc/runner/memory_plan.py`): checked, not guessed.

- Its parameter, gradient and optimiser bytes equal the bytes of the tensors the runner actually allocates
  (`build_model`, `make_optimizer`, one step on zero gradients; counted with `quantise.tensor_bytes`, never
  process RSS) on each family's tiny spec and bf16 twin: LoRA and full, as-loaded bf16 and NF4 bases, AdamW,
  AdamW8bit and bf16 AdamW, at 1 rank in-process; and at 2 ranks, in-process too, with torch's fake process
  group (FSDP2 shards as on 2 ranks, the collectives move no data): rank 0's shards equal the plan, rank 1's
  are no larger. The activation figure is an estimate and is not checked here.
- The published transformer configs shipped in `specs/configs/` build the real transformers on the meta
  device with the parameter counts the issue states (LTX-2.3 19.0 B, 5.9 B frozen; LTX-Video 1.9 B).
- The dry run works offline for every shipped run config; the LTX-2.3 one-GPU LoRA and 24 GB configs print
  `fits:` as their last line; a GPU run that does not fit is refused in that one line.

Run: `pytest -q tests/test_memory_plan.py` (CPU; meta-device builds plus tiny models, ~30 s).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import ROOT, SPECS, TINY_LTX, TINY_LTX2, TINY_WAN, isolated_process_group, run_cli
from test_train import config

from ltxc.compiler import compile_spec
from ltxc.plan import Plan
from ltxc.runner.config import RunConfig
from ltxc.runner.distributed import init_distributed
from ltxc.runner.memory_meta import meta_module
from ltxc.runner.memory_plan import plan_memory
from ltxc.runner.model import build_model
from ltxc.runner.optim import make_optimizer
from ltxc.runner.quantise import count_quantised, tensor_bytes
from ltxc.spec import load_spec

MODULES = ("transformer",)


@pytest.fixture(scope="module", autouse=True)
def _process_group() -> Iterator[None]:
    with isolated_process_group():
        yield


def twin(spec: Path, directory: Path) -> Plan:
    """The spec's twin with a bf16 transformer (written beside the test, `extends` the tiny spec)."""
    path = directory / f"{spec.stem}-bf16.toml"
    body = f'[model]\nname = "{spec.stem}-bf16"\nextends = {json.dumps(spec.resolve().as_posix())}\n'
    body += "".join(f'\n[components.{role}]\ndtype = "bfloat16"\n' for role in MODULES)
    path.write_text(body, encoding="utf-8")
    return compile_spec(load_spec(path))


@pytest.fixture(scope="module")
def plans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Plan]:
    directory = tmp_path_factory.mktemp("twins")
    out = {}
    for spec in (TINY_LTX, TINY_LTX2, TINY_WAN):
        out[spec.stem] = compile_spec(load_spec(spec))
        out[f"{spec.stem}-bf16"] = twin(spec, directory)
    return out


def allocated(plan: Plan, cfg: RunConfig) -> tuple[int, int, int, int]:
    """(parameter, gradient, optimiser-state bytes, NF4 weights) the runner allocates: the model built, every
    trainable parameter given a zero gradient (as a backward would give it) and the optimiser's state made.

    torch's AdamW takes one step. torchao's optimizers compile their step (~10 s per case here), so their state
    is made as the first lines of their `step()` make it (`_new_buffer` for each moment, a float32 step count).
    """
    model, _, _ = build_model(plan, cfg, init_distributed("cpu"))
    optimizer = make_optimizer(model.parameters(), cfg.optimizer, torch.device("cpu"))
    trained = [p for p in model.parameters() if p.requires_grad]
    for param in trained:
        param.grad = torch.zeros_like(param)
    if isinstance(optimizer, torch.optim.AdamW):
        optimizer.step()
    else:
        for param in trained:
            optimizer.state[param] = {"step": torch.tensor(0.0), "exp_avg": optimizer._new_buffer(param, True),
                                      "exp_avg_sq": optimizer._new_buffer(param, False)}  # fmt: skip
    params = sum(tensor_bytes(p) for p in model.parameters())
    grads = sum(tensor_bytes(p.grad) for p in trained)
    state = sum(tensor_bytes(v) for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor))
    return params, grads, state, count_quantised(model)


# NF4 and AdamW8bit on the tiny LTX-Video twin only: its width (256) holds whole NF4 blocks (the other tiny
# transformers are 32 wide: nothing would be quantised), and each torchao optimiser compiles its step (~10 s).
CASES = [
    # (spec, train, optimizer)
    ("ltx", {"mode": "lora"}, {}),
    ("ltx-bf16", {"mode": "lora"}, {}),
    ("ltx-bf16", {"mode": "full"}, {}),
    ("ltx-bf16", {"mode": "lora", "base": "nf4"}, {"name": "adamw_8bit"}),
    ("ltx-bf16", {"mode": "lora", "base": "int8"}, {}),
    ("ltx-bf16", {"mode": "full"}, {"name": "adamw_bf16"}),
    ("ltx-2.3-bf16", {"mode": "lora"}, {}),
    ("ltx-2.3-bf16", {"mode": "full"}, {}),
    ("wan-2.1-bf16", {"mode": "lora"}, {}),
    ("wan-2.1-bf16", {"mode": "full"}, {}),
]


@pytest.mark.parametrize(("spec", "train", "optimizer"), CASES, ids=lambda v: str(v))
def test_the_plan_equals_the_allocated_bytes(
    plans: dict[str, Plan], tmp_path: Path, spec: str, train: dict[str, Any], optimizer: dict[str, Any]
) -> None:
    plan = plans[spec]
    cfg = config(tmp_path / "run", tmp_path / "no-cache", train=train, optimizer=optimizer, lora={"rank": 32})
    memory = plan_memory(plan, cfg, world=1, bucket=(9, 64, 96))
    params, grads, state, nf4 = allocated(plan, cfg)
    planned = sum(memory.params.device.values()) + memory.params.host
    print(f"{spec} {train} {optimizer}: params {params} grads {grads} state {state} nf4 {nf4}")
    assert (planned, memory.params.grads, memory.params.optimizer) == (params, grads, state)
    assert memory.params.quantised == nf4
    if train.get("base") in ("nf4", "int8"):
        assert nf4 > 0  # the case checks quantised weights, not an empty set


@contextlib.contextmanager
def fake_ranks(rank: int, world: int) -> Iterator[None]:
    """This process as rank `rank` of `world` (torch's fake process group: FSDP2 shards as it would on `world`
    ranks, its collectives move no data), so a 2-rank plan is checked against real shards in-process."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    with isolated_process_group():
        if dist.is_initialized():
            dist.destroy_process_group()  # the module's 1-rank group; the next test makes it again
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
        dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
        yield


TWO_RANK_CASES = [
    ("ltx-bf16", {"mode": "lora"}, {}),
    ("ltx-bf16", {"mode": "full"}, {}),
    ("ltx-bf16", {"mode": "lora", "base": "nf4"}, {"name": "adamw_8bit"}),
    ("ltx-2.3-bf16", {"mode": "lora"}, {}),
    ("wan-2.1-bf16", {"mode": "full"}, {}),
]


@pytest.mark.parametrize(("spec", "train", "optimizer"), TWO_RANK_CASES, ids=lambda v: str(v))
def test_the_two_rank_plan_equals_rank_0s_shards_and_bounds_rank_1s(
    plans: dict[str, Plan], tmp_path: Path, spec: str, train: dict[str, Any], optimizer: dict[str, Any]
) -> None:
    """Per rank at 2 ranks: rank 0 holds the largest dim-0 chunk of each parameter (FSDP2's split), which is
    what the plan counts; rank 1 holds no more."""
    plan = plans[spec]
    cfg = config(tmp_path / "run", tmp_path / "no-cache", train=train, optimizer=optimizer, lora={"rank": 32})
    memory = plan_memory(plan, cfg, world=2, bucket=(9, 64, 96))
    planned = (sum(memory.params.device.values()) + memory.params.host, memory.params.grads, memory.params.optimizer)
    with fake_ranks(0, 2):
        *rank0, nf4 = allocated(plan, cfg)
    with fake_ranks(1, 2):
        *rank1, _ = allocated(plan, cfg)
    whole = plan_memory(plan, cfg, world=1, bucket=(9, 64, 96))
    print(f"{spec} {train} {optimizer}: planned {planned} rank 0 {rank0} rank 1 {rank1}")
    assert tuple(rank0) == planned
    assert memory.params.quantised == nf4
    assert all(r1 <= r0 for r0, r1 in zip(rank0, rank1, strict=True))
    assert planned[0] < 0.6 * (sum(whole.params.device.values()) + whole.params.host)  # it really is sharded


def test_published_configs_give_the_real_parameter_counts() -> None:
    counts = {}
    for name in ("ltx-2.3", "ltx", "wan-2.1"):
        plan = compile_spec(load_spec(SPECS / f"{name}.toml"))
        model, origin = meta_module(plan.recipes[plan.transformer_role])
        assert "specs/configs" in Path(origin).as_posix()
        frozen = sum(p.numel() for n, p in model.named_parameters() if any(part in n for part in plan.frozen))
        counts[name] = (sum(p.numel() for p in model.parameters()), frozen)
        assert {p.device.type for p in model.parameters()} == {"meta"}
    print(counts)
    assert round(counts["ltx-2.3"][0] / 1e9, 1) == 19.0 and round(counts["ltx-2.3"][1] / 1e9, 1) == 5.9
    assert round(counts["ltx"][0] / 1e9, 1) == 1.9
    assert round(counts["wan-2.1"][0] / 1e9, 1) == 1.4


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory with the plans the shipped run configs name (`ltxc compile` needs no weights)."""
    cwd = tmp_path_factory.mktemp("cwd")
    for name in ("ltx-2.3", "ltx", "wan-2.1", "flux-1"):
        compile_spec(load_spec(SPECS / f"{name}.toml")).save(cwd / ".ltxc" / name)
    return cwd


RUNS = sorted((ROOT / "specs" / "runs").glob("*.toml"))


@pytest.mark.parametrize("run", RUNS, ids=lambda p: p.stem)
def test_the_dry_run_works_offline_for_every_shipped_run_config(
    run: Path, compiled: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(compiled)
    monkeypatch.setenv("WORLD_SIZE", "8" if "8gpu" in run.stem else "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, _ = run_cli(capsys, "run", "train", "--config", str(run), "--dry-run")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith("memory plan:") and "activations" in out
    assert not (compiled / "runs").exists()  # nothing trained, nothing written
    if run.stem in ("ltx-2.3-lora-1gpu", "ltx-2.3-lora-24gb"):
        assert lines[-1].startswith("fits: "), lines[-1]
    if run.stem != "default":  # every H100 / 24 GB config names its card and fits it
        assert lines[-1].startswith("fits: ") and lines[-1].endswith(" GiB per rank"), lines[-1]


def test_a_gpu_run_that_does_not_fit_is_refused_in_one_line(
    compiled: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ltxc.commands import train as train_command

    monkeypatch.chdir(compiled)
    monkeypatch.setattr(train_command, "_on_gpu", lambda device: True)  # as on a GPU machine, before any training
    code, _, err = run_cli(capsys, "run", "train", "--set", "parallel.device_memory_gib=0.5")
    assert code == 2
    assert (
        err.strip()
        .splitlines()[-1]
        .endswith("does not fit: 1.0 GiB of 0.5 GiB per rank (--ignore-memory-plan tries anyway)")
    )
    assert not (compiled / "runs").exists()


def test_a_local_pretrained_directorys_config_wins(tmp_path: Path) -> None:
    """A spec whose `pretrained` is a local directory is planned from that directory's own config.json."""
    tiny = compile_spec(load_spec(TINY_LTX)).recipes["transformer"]
    local = tmp_path / "weights" / "transformer"
    local.mkdir(parents=True)
    (local / "config.json").write_text(json.dumps({**dict(tiny.config or {}), "num_layers": 3}), encoding="utf-8")
    spec, weights = tmp_path / "local.toml", json.dumps((tmp_path / "weights").as_posix())
    spec.write_text(
        f'[model]\nname = "local"\nextends = {json.dumps(TINY_LTX.resolve().as_posix())}\n\n'
        f'[components.transformer]\nsource = "pretrained"\npretrained = {weights}\nsubfolder = "transformer"\n',
        encoding="utf-8",
    )
    plan = compile_spec(load_spec(spec))
    model, origin = meta_module(plan.recipes["transformer"])
    assert Path(origin) == local / "config.json"
    assert len(model.transformer_blocks) == 3 != tiny.config["num_layers"]


def test_validation_costs_the_device_nothing_when_it_decodes_in_the_background(tmp_path: Path) -> None:
    """The plan's validation line: 0 with the default background decode; the VAE's weights when it encodes validation
    images on the device (LTX-2.3's shipped VAE config: 1.35 GiB bf16); with the decode on the device, the sound's
    audio VAE and vocoder too (validation videos have sound: shipped configs, 53.2 M + 128.5 M bf16 parameters)."""
    plan = compile_spec(load_spec(SPECS / "ltx-2.3.toml"))
    lines = {}
    for name, validation in {
        "background": {"prompts": ["a"]},
        "device": {"prompts": ["a"], "decode": "device"},
        "images": {"prompts": ["a"], "images": ["a.png"]},
    }.items():
        cfg = config(tmp_path / "run", tmp_path / "no-cache", validation=validation)
        lines[name] = plan_memory(plan, cfg, world=1, bucket=(9, 64, 96)).validation
    assert lines["background"] == 0
    assert round(lines["images"] / 2**30, 2) == 1.35
    assert lines["device"] - lines["images"] == 2 * (53_248_146 + 128_537_448)


def test_a_run_that_trains_audio_plans_the_audio_tokens_at_the_audio_branchs_width(tmp_path: Path) -> None:
    """`train.audio`: the activation estimate adds round(frames / fps * 25) audio tokens per sample (the spec's audio
    noise shape at its sampler fps) at the audio branch's width (LTX-2.3's published config: 32 heads x 64 = 2048);
    a video-only run feeds a one-token dummy and adds nothing."""
    plan = compile_spec(load_spec(SPECS / "ltx-2.3.toml"))
    bucket = (121, 512, 768)
    plans = {
        audio: plan_memory(
            plan,
            config(tmp_path / "run", tmp_path / "no-cache", train={"audio": audio}, data={"batch_size": 2}),
            world=1,
            bucket=bucket,
        )
        for audio in (False, True)
    }
    audio_tokens = round(121 / plan.sampler.fps * 25) * 2
    assert audio_tokens == 252
    assert f"audio {audio_tokens} tokens x width 2048" in plans[True].activation_note
    assert "audio" not in plans[False].activation_note
    video_unit = 2 * plan.geometry.tokens(*bucket) * 4096
    ratio = plans[True].activations / plans[False].activations
    assert ratio == pytest.approx((video_unit + audio_tokens * 2048) / video_unit)
