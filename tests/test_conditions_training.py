"""Conditioned training: the run config's `[tasks.<name>] probability` over the spec's `[tasks]`
(ltxc/runner/tasks.py, the task parts of ltxc/runner/step.py and ltxc/flow.py).

Covers:
- the masked loss: each sample's mean over its kept elements, checked by hand; the left-out elements get exactly
  zero gradient (even where the prediction is not finite), the others a nonzero one;
- image-to-video on the tiny LTX-Video spec, through the real transformer: the conditioned sample's first latent
  frame is its clean latent in the condition's normaliser (x0 / 4 for the tiny VAE's scaling factor 4), every
  other latent is x_t bit for bit; the transformer gets timestep 0 on the conditioned tokens and σ·1000 on all
  others; d loss / d prediction is exactly 0 on them and nonzero elsewhere; the loss is the hand-computed mean
  over the unconditioned elements;
- LTX-2.3: the same per-token timestep while `sigma` (its prompt modulation) and the audio timestep stay [B];
- probability 0 is bit-identical to the text-to-video step as it was before tasks (a copy of that step is run
  as the reference: the same losses and the same final weights and optimiser state); the task coin is drawn
  after σ, noise and dropout, so those draws do not change when tasks train;
- draws: the same with the global batch on 1 or 2 "ranks" (rank offsets, no processes), per sample and per
  micro-batch; each task's share of samples is its probability, a sample never trains two;
- an appended (IC-LoRA) reference: its tokens follow the target's, clean and masked, its grid reaches the call;
  the loss has exactly zero gradient on the transformer's outputs for them; they are taken as cached (normalised
  as the condition says); a cache without references (or at another downscale), or a batch without them, is
  refused naming the run-config key;
- validation: with `validation.images` each prompt is sampled from its image (read once at set-up, covered and
  cropped to the video's size) through the image task; a missing image stops the run before its first step;
- the run config: `--set tasks.i2v.probability=0.5` trains 3 steps in-process on the tiny spec with conditioned
  and unconditioned samples; an unknown task, probabilities over 1, validation images without an image task or
  not one per prompt, and two per-sample tasks with different calls are `FILE:LINE: key: message` errors.

Run: `pytest -q tests/test_conditions_training.py` (CPU, tiny random weights; ~40 s on 2 cores).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch
from conftest import TINY_LTX, TINY_LTX2, TINY_WAN, run_cli
from test_train import assert_same, config, make_cache, read_checkpoint

from ltxc.adapter import Adapter, dropout_decisions
from ltxc.compiler import compile_spec
from ltxc.errors import ConfigError, UserError
from ltxc.flow import flow_loss, flow_target, loss_weights, noisy_latents, sample_sigmas
from ltxc.media.synthetic import make_sample_dataset, write_image
from ltxc.plan import Plan
from ltxc.processor import Processor
from ltxc.runner import step as step_module
from ltxc.runner.config import DataSection, RunConfig, TaskSection, load_run_config
from ltxc.runner.parallelize import unsharded_autocast
from ltxc.runner.seeds import derived_seed
from ltxc.runner.step import draw_micro
from ltxc.runner.tasks import REFERENCE_LATENTS, TrainingTasks, check_tasks, predict, task_problems, training_tasks
from ltxc.runner.train import train
from ltxc.runner.validation import read_image
from ltxc.spec import load_spec

pytestmark = pytest.mark.usefixtures("module_process_group")

GRID = (2, 2, 3)  # latent frames, height, width: 9 frames of 64x96 pixels
FRAME_TOKENS = GRID[1] * GRID[2]  # tokens per latent frame
IC_TASK = """
[tasks.ic]
noise = "packed"   # sampling draws the noise over the whole token sequence (target, then reference)

[tasks.ic.call]
timestep = "unsqueeze(float32(sigma * 1000), -1) * (1 - condition.mask)"
num_frames = "latent.frames + reference.frames"   # the reference as frames after the target's (same size)

[tasks.ic.conditions.reference]
input = "video"
place = "append"
# not [latent]'s: the cache holds references normalised as the condition says, so training takes them as they are
normalise = { kind = "mean_std", mean = "vae.latents_mean", std = "vae.latents_std", scaling_factor = 1.0 }

[tasks.last.call]
timestep = "float32(sigma * 1000)"

[tasks.last.conditions.image]
input = "image"
place = "frames"
frames = [1, 2]
"""


# -- fixtures and helpers -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ic_plan(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    """The tiny LTX-Video spec plus an appended-reference task `ic` and a last-frame task `last`."""
    spec = tmp_path_factory.mktemp("ic") / "ic.toml"
    spec.write_text(f'[model]\nname = "ltx-video-tiny-ic"\nextends = "{TINY_LTX.resolve().as_posix()}"\n{IC_TASK}')
    return compile_spec(load_spec(spec))


@pytest.fixture(scope="module")
def ltx2() -> Plan:
    return compile_spec(load_spec(TINY_LTX2))


@pytest.fixture(scope="module")
def cache(plan: Plan, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 cached clips of the tiny spec (two buckets)."""
    media = tmp_path_factory.mktemp("media")
    make_sample_dataset(media, clips=4, images=0, seed=0)
    return make_cache(plan, media, tmp_path_factory.mktemp("cache") / "cache")


def with_tasks(**probabilities: float) -> RunConfig:
    return RunConfig(tasks={name: TaskSection(p) for name, p in probabilities.items()})


def text_of(plan: Plan, batch: int) -> dict[str, torch.Tensor]:
    return Processor(plan, plan.components()).transformer_text(["a cat", "waves"][:batch])


@pytest.fixture
def kwargs_seen() -> Iterator[list[dict[str, Any]]]:
    """Collects the keyword arguments of every transformer call a test's hooks see."""
    yield []


def spy(model: torch.nn.Module, seen: list[dict[str, Any]]) -> Any:
    return model.register_forward_pre_hook(lambda _m, _a, kwargs: seen.append(dict(kwargs)), with_kwargs=True)


def example(seed: int = 0, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x0, noise, σ) for latents [batch, 128, *GRID]."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, 128, *GRID, generator=g)
    return x0, torch.randn(x0.shape, generator=g), torch.tensor([0.3, 0.8][:batch])


# -- the masked loss ----------------------------------------------------------------------------------


def test_masked_loss_is_the_mean_over_kept_elements() -> None:
    g = torch.Generator().manual_seed(0)
    prediction = torch.randn(2, 3, 2, 2, 2, generator=g).requires_grad_(True)
    target = torch.randn(2, 3, 2, 2, 2, generator=g)
    keep = torch.ones(2, 1, 2, 2, 2)
    keep[0, :, 0] = 0  # sample 0: its first frame is given
    weights = torch.tensor([1.0, 2.0])
    loss, per_sample = flow_loss(prediction, target, weights, keep)
    squared = (prediction.detach() - target) ** 2
    hand = [squared[0, :, 1].sum() / 12, squared[1].sum() / 24]  # 3 channels x 4 kept cells; all 24
    assert torch.allclose(per_sample, torch.stack(hand), rtol=1e-6)
    assert torch.allclose(loss, (hand[0] + 2 * hand[1]) / 2, rtol=1e-6)
    loss.backward()
    assert torch.equal(prediction.grad[0, :, 0], torch.zeros(3, 2, 2))  # exactly zero, not small
    assert bool((prediction.grad[0, :, 1] != 0).all()) and bool((prediction.grad[1] != 0).all())

    # a non-finite prediction on a left-out element changes nothing
    broken = prediction.detach().clone()
    broken[0, :, 0] = float("nan")
    broken.requires_grad_(True)
    again, _ = flow_loss(broken, target, weights, keep)
    again.backward()
    assert torch.equal(again, loss.detach()) and torch.equal(broken.grad, prediction.grad)
    # no element kept: 0, not NaN
    assert flow_loss(prediction, target, weights, torch.zeros(2, 1, 1, 1, 1))[1].tolist() == [0.0, 0.0]


# -- image-to-video through the tiny transformer ------------------------------------------------------


def test_i2v_conditions_the_first_frame_with_zero_gradient(plan: Plan, kwargs_seen: list) -> None:
    tasks = training_tasks(plan, with_tasks(i2v=1.0))
    task = plan.tasks["i2v"]
    x0, noise, sigma = example()
    noisy = noisy_latents(x0, noise, sigma)
    inputs = tasks.inputs({}, x0, noisy, (task, None))
    assert inputs is not None and inputs.grid is None
    # the conditioned frame: the clip's own latent in the condition's normaliser (scaling 1, not the VAE's 4)
    torch.testing.assert_close(inputs.latents[0, :, 0], x0[0, :, 0] / 4, rtol=1e-6, atol=1e-7)
    assert torch.equal(inputs.latents[0, :, 1:], noisy[0, :, 1:]) and torch.equal(inputs.latents[1], noisy[1])
    expected_mask = torch.zeros(2, 2 * FRAME_TOKENS)
    expected_mask[0, :FRAME_TOKENS] = 1
    assert torch.equal(inputs.conditions.mask, expected_mask)

    model = plan.components()["transformer"].train()
    hook = spy(model, kwargs_seen)
    try:
        prediction = predict(Adapter(plan), model, inputs, sigma, text_of(plan, 2), 24.0)
    finally:
        hook.remove()
    (kwargs,) = kwargs_seen
    timestep = kwargs["timestep"]
    assert timestep.shape == (2, 2 * FRAME_TOKENS) and timestep.dtype == torch.float32
    assert torch.equal(timestep[0, :FRAME_TOKENS], torch.zeros(FRAME_TOKENS))
    assert torch.equal(timestep[0, FRAME_TOKENS:], (sigma[0] * 1000).expand(FRAME_TOKENS))
    assert torch.equal(timestep[1], (sigma[1] * 1000).expand(2 * FRAME_TOKENS))

    prediction.retain_grad()
    target = flow_target(x0, noise)
    loss, per_sample = flow_loss(prediction, target, torch.ones(2), inputs.keep)
    squared = (prediction.detach() - target) ** 2
    hand = torch.stack([squared[0, :, 1:].mean(), squared[1].mean()])
    torch.testing.assert_close(per_sample, hand, rtol=1e-5, atol=0)
    torch.testing.assert_close(loss, hand.mean(), rtol=1e-5, atol=0)
    loss.backward()
    grad = prediction.grad
    assert torch.equal(grad[0, :, 0], torch.zeros_like(grad[0, :, 0]))
    assert bool((grad[0, :, 1] != 0).all()) and bool((grad[1] != 0).all())


def test_ltx2_keeps_sigma_per_sample(ltx2: Plan, kwargs_seen: list) -> None:
    tasks = training_tasks(ltx2, with_tasks(i2v=1.0))
    x0, noise, sigma = example(1)
    inputs = tasks.inputs({}, x0, noisy_latents(x0, noise, sigma), (None, ltx2.tasks["i2v"]))
    assert inputs is not None
    model = ltx2.components()["transformer"].train()
    hook = spy(model, kwargs_seen)
    try:
        with torch.no_grad():
            prediction = predict(Adapter(ltx2), model, inputs, sigma, text_of(ltx2, 2), 24.0)
    finally:
        hook.remove()
    assert prediction.shape == x0.shape
    (kwargs,) = kwargs_seen
    assert torch.equal(kwargs["sigma"], sigma * 1000) and kwargs["sigma"].shape == (2,)
    assert torch.equal(kwargs["audio_timestep"], sigma * 1000)
    timestep = kwargs["timestep"]
    assert timestep.shape == (2, 2 * FRAME_TOKENS)
    assert torch.equal(timestep[1, :FRAME_TOKENS], torch.zeros(FRAME_TOKENS))
    assert torch.equal(timestep[1, FRAME_TOKENS:], (sigma[1] * 1000).expand(FRAME_TOKENS))
    assert torch.equal(timestep[0], (sigma[0] * 1000).expand(2 * FRAME_TOKENS))


# -- probability 0 is text-to-video, bit for bit ------------------------------------------------------


def text_to_video_accumulate(t: Any, step: int, micro: int) -> Any:
    """The training step's micro-batch as it was before tasks (commit 3931356), kept as the reference."""
    began = time.monotonic()
    batch = next(t.batches)
    fetched = time.monotonic()
    device = t.info.device
    x0 = batch["latents"].to(device, torch.float32, non_blocking=True)
    b = x0.shape[0]
    tokens = math.prod(x0.shape[2:])
    first = t.info.rank * b
    seed = t.config.run.seed
    gens = [torch.Generator().manual_seed(derived_seed(seed, step, micro, first + i)) for i in range(b)]
    sigma = torch.cat([sample_sigmas(t.plan.flow, 1, tokens, g) for g in gens]).to(device)
    noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in gens]).to(device)
    text = t.data.text(batch, dropout_decisions(gens, t.config.train.cfg_dropout))
    with unsharded_autocast(t.model, t.compute_dtype, device):
        prediction = t.adapter.predict(
            t.model, noisy_latents(x0, noise, sigma), sigma, text, t.data.fps, compute_dtype=t.compute_dtype
        )
    weights = loss_weights(t.plan.loss_weight, sigma, t.plan.constants)
    loss, sample_losses = flow_loss(prediction, flow_target(x0, noise), weights)
    (loss / t.config.train.grad_accum).backward()
    return step_module._Micro(loss.detach(), sigma.detach(), sample_losses.detach(), fetched - began, 0.0)


def test_probability_zero_is_the_text_to_video_step(
    plan: Plan, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def run(name: str, **tasks: float) -> Any:
        sections = {"train": {"steps": 3, "grad_accum": 2}, "data": {"batch_size": 2}}
        run_config = config(tmp_path / name, cache, **sections)
        return train(plan, attrs.evolve(run_config, tasks={k: TaskSection(p) for k, p in tasks.items()}))

    with monkeypatch.context() as patch:
        patch.setattr(step_module, "_accumulate", text_to_video_accumulate)
        before = run("before")
    conditioned: list[Any] = []
    original = step_module.predict
    monkeypatch.setattr(step_module, "predict", lambda *a, **k: conditioned.append(a) or original(*a, **k))
    now = run("now", i2v=0.0)
    assert conditioned == []
    assert now.losses == before.losses and len(set(now.losses)) > 1
    assert_same(read_checkpoint(before.checkpoint, tmp_path), read_checkpoint(now.checkpoint, tmp_path))


def test_task_coins_come_after_the_other_draws(ic_plan: Plan) -> None:
    shape = (4, 128, *GRID)
    off = draw_micro(ic_plan, RunConfig(), training_tasks(ic_plan, RunConfig()), 3, 1, 4, shape)
    on_tasks = training_tasks(ic_plan, with_tasks(i2v=0.4, ic=0.3))
    on = draw_micro(ic_plan, RunConfig(), on_tasks, 3, 1, 4, shape)
    assert off.tasks == (None,) * 4
    assert torch.equal(on.sigma, off.sigma) and torch.equal(on.noise, off.noise) and torch.equal(on.drop, off.drop)


# -- draws ----------------------------------------------------------------------------------------------


def test_draws_are_the_same_on_one_or_two_ranks(ic_plan: Plan) -> None:
    tasks = training_tasks(ic_plan, with_tasks(i2v=0.4, ic=0.3))
    run = RunConfig()
    seen = set()
    for step in range(12):
        for micro in range(2):
            whole = draw_micro(ic_plan, run, tasks, step, micro, 0, (4, 128, *GRID))
            halves = [draw_micro(ic_plan, run, tasks, step, micro, first, (2, 128, *GRID)) for first in (0, 2)]
            assert whole.tasks == halves[0].tasks + halves[1].tasks
            assert torch.equal(whole.sigma, torch.cat([h.sigma for h in halves]))
            assert torch.equal(whole.noise, torch.cat([h.noise for h in halves]))
            assert torch.equal(whole.drop, torch.cat([h.drop for h in halves]))
            seen.update(None if t is None else t.name for t in whole.tasks)
            if any(t is not None and t.name == "ic" for t in whole.tasks):
                assert {t.name for t in whole.tasks} == {"ic"}  # per micro-batch: all its samples
    assert seen == {None, "i2v", "ic"}  # else this test compared nothing


def test_each_task_trains_its_share_of_samples(ic_plan: Plan) -> None:
    tasks = training_tasks(ic_plan, with_tasks(i2v=0.3, ic=0.2, last=0.1))
    counts = {None: 0, "i2v": 0, "ic": 0, "last": 0}
    batches = 1500
    for micro in range(batches):
        gens = [torch.Generator().manual_seed(derived_seed(0, 0, micro, i)) for i in range(4)]
        for task in tasks.draw(gens, 0, 0, micro, GRID[0]):
            counts[None if task is None else task.name] += 1
    shares = {name: count / (4 * batches) for name, count in counts.items()}
    # 4 standard deviations: sqrt(p(1-p)/6000) per sample, sqrt(p(1-p)/1500) per micro-batch for ic
    assert abs(shares["i2v"] - 0.3) < 0.024 and abs(shares["last"] - 0.1) < 0.016
    assert abs(shares["ic"] - 0.2) < 0.042 and abs(shares[None] - 0.4) < 0.05


# -- an appended reference ------------------------------------------------------------------------------


def test_appended_reference_is_outside_the_loss(ic_plan: Plan, kwargs_seen: list) -> None:
    tasks = training_tasks(ic_plan, with_tasks(ic=1.0))
    x0, noise, sigma = example(2)
    reference = torch.randn(2, 128, 1, *GRID[1:], generator=torch.Generator().manual_seed(3))
    drawn = tasks.draw([torch.Generator().manual_seed(i) for i in range(2)], 0, 0, 0, GRID[0])
    assert [t.name for t in drawn] == ["ic", "ic"]
    noisy = noisy_latents(x0, noise, sigma)
    inputs = tasks.inputs({REFERENCE_LATENTS: reference}, x0, noisy, drawn)
    assert inputs is not None and inputs.grid == GRID
    target_tokens = 2 * FRAME_TOKENS
    geometry = ic_plan.geometry
    assert torch.equal(inputs.latents[:, :target_tokens], geometry.pack(noisy))
    assert torch.equal(inputs.latents[:, target_tokens:], geometry.pack(reference))  # clean, as cached
    assert inputs.conditions.appended == FRAME_TOKENS and inputs.conditions.reference_grid == (1, *GRID[1:])
    assert torch.equal(inputs.conditions.mask[:, target_tokens:], torch.ones(2, FRAME_TOKENS))
    assert not inputs.conditions.mask[:, :target_tokens].any() and bool(inputs.keep.all())

    model = ic_plan.components()["transformer"].train()
    outputs: list[torch.Tensor] = []
    hooks = [spy(model, kwargs_seen), model.register_forward_hook(lambda _m, _a, out: outputs.append(out[0]))]
    try:
        prediction = predict(Adapter(ic_plan), model, inputs, sigma, text_of(ic_plan, 2), 24.0)
    finally:
        for hook in hooks:
            hook.remove()
    (kwargs,) = kwargs_seen
    assert kwargs["num_frames"] == 3 and kwargs["hidden_states"].shape == (2, 3 * FRAME_TOKENS, 128)
    assert torch.equal(kwargs["timestep"][:, target_tokens:], torch.zeros(2, FRAME_TOKENS))
    assert prediction.shape == x0.shape
    raw = outputs[0]
    raw.retain_grad()
    loss, _ = flow_loss(prediction, flow_target(x0, noise), torch.ones(2), inputs.keep)
    loss.backward()
    assert torch.equal(raw.grad[:, target_tokens:], torch.zeros_like(raw.grad[:, target_tokens:]))
    assert bool((raw.grad[:, :target_tokens] != 0).all())


def test_ltx2_ic_lora_trains_through_the_spec_call(ltx2: Plan, kwargs_seen: list) -> None:
    """The shipped LTX-2.3 `ic_lora` task (if the spec declares it): the reference's tokens after the target's, at
    timestep 0, with their own positions; σ stays [B]."""
    if "ic_lora" not in ltx2.tasks:
        pytest.skip("specs/ltx-2.3.toml declares no ic_lora task yet")
    tasks = training_tasks(ltx2, with_tasks(ic_lora=1.0))
    x0, noise, sigma = example(4)
    reference = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))  # downscale 1: the target's size
    drawn = tasks.draw([torch.Generator().manual_seed(i) for i in range(2)], 0, 0, 0, GRID[0])
    inputs = tasks.inputs({REFERENCE_LATENTS: reference}, x0, noisy_latents(x0, noise, sigma), drawn)
    assert inputs is not None and inputs.conditions.appended == 2 * FRAME_TOKENS
    model = ltx2.components()["transformer"].train()
    hook = spy(model, kwargs_seen)
    try:
        with torch.no_grad():
            prediction = predict(Adapter(ltx2), model, inputs, sigma, text_of(ltx2, 2), 24.0)
    finally:
        hook.remove()
    assert prediction.shape == x0.shape and bool(torch.isfinite(prediction).all())
    (kwargs,) = kwargs_seen
    tokens = 4 * FRAME_TOKENS  # target, then reference
    assert kwargs["hidden_states"].shape[1] == tokens and kwargs["video_coords"].shape == (2, 3, tokens, 2)
    assert torch.equal(kwargs["video_coords"][:, :, : tokens // 2], kwargs["video_coords"][:, :, tokens // 2 :])
    assert torch.equal(kwargs["timestep"][:, tokens // 2 :], torch.zeros(2, tokens // 2))
    assert torch.equal(kwargs["sigma"], sigma * 1000)


def test_a_cache_or_batch_without_reference_latents_is_refused(ic_plan: Plan) -> None:
    tasks = training_tasks(ic_plan, with_tasks(ic=0.5))
    pairs = {"column": "reference", "task": "ic", "condition": "reference", "downscale": 1}
    tasks.check_cache({"reference": pairs}, "cache")
    with pytest.raises(UserError, match=r"tasks\.ic\.probability > 0 .* cache holds no references: preprocess"):
        tasks.check_cache({}, "cache")
    with pytest.raises(UserError, match=r"references at 1/2 of the target's size, .* takes 1/1"):
        tasks.check_cache({"reference": {**pairs, "downscale": 2}}, "cache")
    training_tasks(ic_plan, with_tasks(i2v=0.5)).check_cache({}, "cache")  # no appended task: no references needed
    x0, noise, sigma = example()
    with pytest.raises(UserError) as caught:
        tasks.inputs({}, x0, noisy_latents(x0, noise, sigma), (None, None))
    message = str(caught.value)
    assert "tasks.ic.probability" in message and REFERENCE_LATENTS in message and "preprocess" in message


# -- the run config -------------------------------------------------------------------------------------


def test_set_i2v_probability_trains_from_the_cli(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    masks: list[torch.Tensor] = []
    original = step_module.predict

    def record(adapter: Any, model: Any, inputs: Any, *rest: Any) -> torch.Tensor:
        masks.append(inputs.conditions.mask.clone())
        return original(adapter, model, inputs, *rest)

    monkeypatch.setattr(step_module, "predict", record)
    sets = [
        *(f"data.cache={cache}", f"run.output={tmp_path / 'run'}", "train.steps=3", "data.batch_size=2"),
        *("log.progress=false", "log.tensorboard=false", "export.full=false", "tasks.i2v.probability=0.5"),
    ]
    code, out, err = run_cli(capsys, "run", "train", *(item for s in sets for item in ("--set", s)))
    assert code == 0, err
    assert "loss" in out and "checkpoint" in out
    conditioned = [bool(row.any()) for mask in masks for row in mask]  # the micro-batches with a task
    unconditioned = conditioned.count(False) + 2 * (3 - len(masks))
    assert conditioned.count(True) > 0 and unconditioned > 0  # both kinds of sample trained


def run_config_file(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path, load_run_config(path)


def test_unknown_task_is_an_error_at_its_line(plan: Plan, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, loaded = run_config_file(tmp_path, "[train]\nsteps = 2\n\n[tasks.x2v]\nprobability = 0.5\n")
    with pytest.raises(ConfigError) as caught:
        check_tasks(plan, loaded)
    assert str(caught.value) == f"{path}:4: tasks.x2v: spec 'ltx-video-tiny' has no task 'x2v' (its [tasks]: i2v)"
    with pytest.raises(UserError, match=r"run config: tasks\.x2v: spec 'ltx-video-tiny' has no task"):
        training_tasks(plan, loaded.value)  # the runner's own check, for in-process callers
    code, _, err = run_cli(capsys, "run", "train", "--set", "tasks.x2v.probability=0.5", "--set", "train.steps=1")
    assert code == 2 and err.strip().splitlines()[-1].startswith("--set:1: tasks.x2v: spec 'ltx-video-tiny'")


def test_task_settings_the_plan_cannot_train(plan: Plan, ic_plan: Plan, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"run.toml:3: tasks.b.probability: task probabilities add up to 1.1"):
        run_config_file(tmp_path, "[tasks]\na.probability = 0.6\nb.probability = 0.5\n")
    with pytest.raises(ConfigError, match=r"validation.images: 1 images for 2 prompts"):
        run_config_file(tmp_path, '[validation]\nprompts = ["a", "b"]\nimages = ["a.png"]\n')
    _, loaded = run_config_file(tmp_path, '[validation]\nprompts = ["a"]\nimages = ["a.png"]\n')
    check_tasks(plan, loaded)  # the tiny LTX-Video spec has an image task
    wan = compile_spec(load_spec(TINY_WAN))
    with pytest.raises(ConfigError, match=r"run.toml:3: validation.images: .*no task takes an 'image' input"):
        check_tasks(wan, loaded)
    mixed = RunConfig(tasks={"i2v": TaskSection(0.2), "last": TaskSection(0.2)}, data=DataSection(batch_size=2))
    ((key, message),) = task_problems(ic_plan, mixed)
    assert key == ("tasks", "last", "probability") and "otherwise than 'i2v'" in message and "batch size 1" in message
    single = attrs.evolve(mixed, data=attrs.evolve(mixed.data, batch_size=1))
    assert task_problems(ic_plan, single) == []
    assert isinstance(training_tasks(ic_plan, single), TrainingTasks)


# -- validation from images -------------------------------------------------------------------------------


def test_validation_generates_each_prompt_from_its_image(
    plan: Plan, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ltxc.sampler import Sampler

    images = [write_image(tmp_path / f"{i}.png", i, (128, 64)) for i in range(2)]  # wider: covered, then cropped
    pixels = [read_image(str(path), 64, 96) for path in images]
    assert pixels[0].shape == (1, 3, 64, 96) and -1 <= float(pixels[0].min()) < float(pixels[0].max()) <= 1
    assert not torch.equal(pixels[0], pixels[1])
    calls: list[tuple[Any, Any]] = []
    original = Sampler.__call__

    def record(self: Sampler, prompts: Any, **kwargs: Any) -> Any:
        result = original(self, prompts, **kwargs)
        calls.append((kwargs.get("image"), result.task))
        return result

    monkeypatch.setattr(Sampler, "__call__", record)
    validation = {"prompts": ("a red square", "a blue square"), "images": tuple(map(str, images)), "steps": 2}
    train(plan, config(tmp_path / "run", cache, train={"steps": 1}, validation=validation))
    assert [task for _, task in calls] == ["i2v", "i2v"]
    for (image, _), expected in zip(calls, pixels, strict=True):
        assert torch.equal(image, expected)
    written = sorted(p.name for p in (tmp_path / "run" / "validation").rglob("*.mp4"))
    assert written == ["prompt-0.mp4", "prompt-1.mp4"]

    with pytest.raises(UserError, match=r"validation\.images: .*nowhere\.png"):
        broken = {**validation, "images": (str(tmp_path / "nowhere.png"), str(images[0]))}
        train(plan, config(tmp_path / "broken", cache, train={"steps": 1}, validation=broken))
    assert not (tmp_path / "broken" / "checkpoints").exists()  # refused at set-up, before any step


def test_a_task_that_does_not_fit_the_sample_trains_text_to_video(ic_plan: Plan) -> None:
    """An image (1 latent frame): i2v would hold all of it, `last` (frame 1) none of it; `ic` appends and fits."""
    run = RunConfig()
    for task in ("i2v", "last"):
        tasks = training_tasks(ic_plan, with_tasks(**{task: 1.0}))
        assert draw_micro(ic_plan, run, tasks, 0, 0, 0, (3, 128, 1, 2, 3)).tasks == (None,) * 3
        assert {t.name for t in draw_micro(ic_plan, run, tasks, 0, 0, 0, (3, 128, *GRID)).tasks} == {task}
    ic = training_tasks(ic_plan, with_tasks(ic=1.0))
    assert {t.name for t in draw_micro(ic_plan, run, ic, 0, 0, 0, (3, 128, 1, 2, 3)).tasks} == {"ic"}
