"""Joint audio-video training on the tiny LTX-2.3 spec (run config `train.audio`; ltxc/runner/streams.py, the
stream parts of ltxc/runner/step.py, lora.py and model.py; docs/audio-training.md).

Covers:
- the transformer gets the audio stream's noisy latents (1 - σ)·x0 + σ·ε, its ε drawn from each sample's generator
  after the video's draws, with the video's σ (shared: audio_timestep = audio_sigma = σ·1000) or its own
  (independent), and modalities not isolated;
- the loss is video + w·audio (w·audio alone with `train.video = false`), each a per-sample mean, the audio's
  masked by `audio_mask`, checked by hand; a masked sample's audio prediction gets exactly zero gradient;
  loss_video and loss_audio are logged;
- independent σ: drawn after the noise from the sample's generator with the shift of the audio's token count,
  reproducible, not the video's; a spec whose call does not read `audio.sigma` cannot declare it, nor a run train
  it with a task whose call gives the audio timestep from the video's σ;
- what trains: a video-only LoRA has no adapter on the audio or cross-modal modules and leaves the (isolated)
  audio prediction bit-identical; a joint LoRA adds them; `train.video = false` adapts only them (and the loss is
  the audio term alone); full fine-tuning follows the same parts;
- joint training lowers the audio loss on a fixed batch; a joint run resumes exactly, and a resume that would
  train other streams is refused;
- CFG dropout drops the audio text with the video text;
- refusals naming the key: `train.audio` on a spec without streams or a cache without audio latents,
  `train.video = false` without `train.audio`.

Run: `pytest -q tests/test_audio_training.py` (CPU, tiny random weights, nothing downloaded).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch
from conftest import TINY_LTX, TINY_LTX2
from safetensors.torch import load_file, save_file
from test_train import config, make_cache

from ltxc.adapter import Adapter, dropout_decisions
from ltxc.compiler import compile_spec
from ltxc.data.dataset import CacheDataset
from ltxc.errors import ConfigError, UserError
from ltxc.flow import sample_sigmas
from ltxc.media.synthetic import make_sample_dataset
from ltxc.plan import Plan
from ltxc.runner.config import RunConfig, TaskSection, TrainSection, load_run_config
from ltxc.runner.lora import add_lora, run_lora_config
from ltxc.runner.metrics import read_metrics
from ltxc.runner.model import _make_trainable
from ltxc.runner.seeds import derived_seed
from ltxc.runner.streams import StreamInputs, TrainingStreams, check_streams, parameter_trains
from ltxc.runner.text import TrainingText
from ltxc.runner.train import train
from ltxc.spec import load_spec

pytestmark = pytest.mark.usefixtures("module_process_group")

MASKS = (1.0, 0.0, 0.0, 1.0)  # each bucket (clips 0-1, 2-3) has one clip with sound and one without
AUDIO_PARTS = ("audio", "av_cross", "a2v")


@pytest.fixture(scope="module")
def plan() -> Plan:
    return compile_spec(load_spec(TINY_LTX2))


def child_plan(directory: Path, body: str) -> Plan:
    spec = directory / "child.toml"
    spec.write_text(f'[model]\nname = "ltx-2.3-child"\nextends = {json.dumps(TINY_LTX2.as_posix())}\n\n{body}')
    return compile_spec(load_spec(spec))


@pytest.fixture(scope="module")
def cache(plan: Plan, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 cached clips (two buckets) whose audio latents are seeded noise and whose masks are MASKS."""
    media = tmp_path_factory.mktemp("media")
    make_sample_dataset(media, clips=4, images=0, seed=0)
    path = make_cache(plan, media, tmp_path_factory.mktemp("cache") / "cache")
    dataset = CacheDataset(path)
    length = round(9 / float(dataset.header["settings"]["fps"]) * 25)  # the pipeline's L for 9 frames
    for index, record in enumerate(dataset.records):
        file = path / record["file"]
        tensors = load_file(file)
        tensors["audio_latents"] = torch.randn(length, 128, generator=torch.Generator().manual_seed(index))
        tensors["audio_mask"] = torch.tensor(MASKS[index])
        save_file(tensors, file)
    return path


def joint(run_dir: Path, cache: Path, **train_keys: Any) -> RunConfig:
    sections: dict[str, Any] = {k: v for k, v in train_keys.items() if isinstance(v, dict)}
    keys = {k: v for k, v in train_keys.items() if not isinstance(v, dict)}
    return config(run_dir, cache, train={"audio": True, "steps": 1, **keys}, **sections)


class Calls:
    """Every transformer call of a run: its keyword arguments and outputs, and each micro-batch's stream inputs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.kwargs: list[dict[str, Any]] = []
        self.outputs: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []
        self.batches: list[dict[str, Any]] = []
        self.inputs: list[StreamInputs] = []
        run, inputs = Adapter.run, TrainingStreams.inputs

        def record_run(adapter: Adapter, transformer: Any, kwargs: Any) -> Any:
            out = run(adapter, transformer, kwargs)
            self.kwargs.append(dict(kwargs))
            self.outputs.append(out)
            return out

        def record_inputs(streams: TrainingStreams, batch: Any, drawn: Any, sigma: torch.Tensor) -> Any:
            self.batches.append(dict(batch))
            result = inputs(streams, batch, drawn, sigma)
            self.inputs.append(result)
            return result

        monkeypatch.setattr(Adapter, "run", record_run)
        monkeypatch.setattr(TrainingStreams, "inputs", record_inputs)


def hand_draws(plan: Plan, batch: dict[str, Any], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(σ [B], video noise, audio noise) of step 0, micro-batch 0, as each sample's generator gives them in order."""
    x0, audio = batch["latents"], batch["audio_latents"]
    sigmas, video, sound = [], [], []
    for i in range(x0.shape[0]):
        g = torch.Generator().manual_seed(derived_seed(seed, 0, 0, i))
        sigmas.append(sample_sigmas(plan.flow, 1, x0[0, 0].numel(), g))
        video.append(torch.randn(x0.shape[1:], generator=g))
        dropout_decisions([g], 0.1)
        sound.append(torch.randn(audio.shape[1:], generator=g))
    return torch.cat(sigmas), torch.stack(video), torch.stack(sound)


# -- what the transformer gets ----------------------------------------------------------------------------


def test_audio_stream_gets_its_noisy_latents_at_the_shared_sigma(
    plan: Plan, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = Calls(monkeypatch)
    train(plan, joint(tmp_path / "run", cache, data={"batch_size": 2}))
    (kwargs,), (batch,) = calls.kwargs, calls.batches
    sigma, _, noise = hand_draws(plan, batch)
    x0 = batch["audio_latents"].float()
    expected = (1 - sigma.view(-1, 1, 1)) * x0 + sigma.view(-1, 1, 1) * noise
    assert torch.equal(kwargs["audio_hidden_states"], expected)
    assert kwargs["isolate_modalities"] is False
    assert torch.equal(kwargs["timestep"], (sigma * 1000).float())
    assert torch.equal(kwargs["audio_timestep"], kwargs["timestep"])
    assert torch.equal(kwargs["audio_sigma"], kwargs["sigma"])
    assert kwargs["audio_num_frames"] == x0.shape[1]


def test_video_only_training_feeds_the_isolated_dummy(
    plan: Plan, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = Calls(monkeypatch)
    train(plan, config(tmp_path / "run", cache, train={"steps": 1}))
    (kwargs,) = calls.kwargs
    assert calls.inputs == [] and kwargs["isolate_modalities"] is True
    assert kwargs["audio_hidden_states"].shape[1] == 1 and not kwargs["audio_hidden_states"].any()
    assert torch.equal(kwargs["audio_timestep"], kwargs["timestep"])  # the video's σ: as before the audio keys


def test_independent_sigma_is_the_streams_own_draw(
    plan: Plan, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    child = child_plan(tmp_path, '[streams.audio]\nsigma = "independent"\n')
    assert child.streams["audio"].sigma == "independent" and plan.streams["audio"].sigma == "shared"

    def after_video() -> tuple[list[torch.Generator], torch.Tensor]:
        """64 samples' generators after their video σ draw (6 tokens), and those σ."""
        gens = [torch.Generator().manual_seed(derived_seed(0, 5, 0, i)) for i in range(64)]
        return gens, torch.cat([sample_sigmas(child.flow, 1, 6, g) for g in gens])

    gens, video = after_video()
    noise, sigma = TrainingStreams(child, joint(tmp_path / "run", cache)).draw(gens, {"audio": (9, 128)})["audio"]
    again = TrainingStreams(child, joint(tmp_path / "run", cache)).draw(after_video()[0], {"audio": (9, 128)})
    assert sigma is not None and torch.equal(sigma, again["audio"][1]) and torch.equal(noise, again["audio"][0])
    assert not torch.equal(sigma, video) and float((sigma - video).abs().mean()) > 0.05
    # each sample's: after its noise, with the shift of the audio's 9 tokens (not the video's 6)
    g = torch.Generator().manual_seed(derived_seed(0, 5, 0, 3))
    sample_sigmas(child.flow, 1, 6, g)
    assert torch.equal(noise[3], torch.randn(9, 128, generator=g))
    assert torch.equal(sigma[3:4], sample_sigmas(child.flow, 1, 9, g))
    # shared: no σ of its own, the same noise
    shared = TrainingStreams(plan, joint(tmp_path / "run", cache)).draw(after_video()[0], {"audio": (9, 128)})
    assert shared["audio"][1] is None and torch.equal(shared["audio"][0], noise)

    # through a step: the audio latents and the audio timestep/σ follow the stream's own σ
    child_cache = tmp_path / "cache"
    shutil.copytree(cache, child_cache)
    header = json.loads((child_cache / "cache.json").read_text())
    header["spec"]["hash"] = child.hash
    (child_cache / "cache.json").write_text(json.dumps(header))
    calls = Calls(monkeypatch)
    train(child, joint(tmp_path / "step", child_cache))
    (kwargs,), (inputs,) = calls.kwargs, calls.inputs
    own = inputs.sigma["audio"]
    assert torch.equal(kwargs["audio_timestep"], (own * 1000).float())
    assert torch.equal(kwargs["audio_sigma"], (own * 1000).float())
    assert not torch.equal(kwargs["audio_sigma"], kwargs["sigma"])


def test_independent_sigma_needs_a_call_that_reads_it(tmp_path: Path) -> None:
    body = (
        '[streams.audio]\nsigma = "independent"\n\n[transformer.call]\n'
        'audio_timestep = "float32(sigma * 1000)"\naudio_sigma = "float32(sigma * 1000)"\n'
    )
    with pytest.raises(ConfigError, match=r"streams\.audio\.sigma: \"independent\" needs \[transformer\.call\]"):
        child_plan(tmp_path, body)
    # the shipped i2v task gives the audio timestep from the video's σ: not trained with independent σ
    child = child_plan(tmp_path, '[streams.audio]\nsigma = "independent"\n')
    run = RunConfig(train=TrainSection(audio=True), tasks={"i2v": TaskSection(0.5)})
    with pytest.raises(UserError, match=r"task 'i2v' gives audio_timestep from the video's σ"):
        check_streams(child, run, [child.tasks["i2v"]])
    check_streams(child, attrs.evolve(run, tasks={}))


# -- the loss ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_video", [True, False], ids=["joint", "audio-only"])
def test_loss_is_video_plus_weighted_masked_audio(
    plan: Plan, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_video: bool
) -> None:
    calls = Calls(monkeypatch)
    settings = joint(tmp_path / "run", cache, audio_loss_weight=0.5, video=with_video, data={"batch_size": 2})
    result = train(plan, settings)
    ((video, streams),), (batch,), (inputs,) = calls.outputs, calls.batches, calls.inputs
    sigma, noise, _ = hand_draws(plan, batch)
    assert torch.equal(inputs.sigma["audio"], sigma)
    target = noise - batch["latents"].float()
    f, h, w = batch["latents"].shape[2:]
    prediction = Adapter(plan).geometry.unpack(video.detach(), f, h, w).float()
    video_term = (prediction - target).square().flatten(1).mean(1).mean()
    audio_target = inputs.noise["audio"] - inputs.x0["audio"]
    per_sample = (streams["audio"].detach().float() - audio_target).square().flatten(1).mean(1)
    mask = batch["audio_mask"].float()
    assert mask.tolist() in ([1.0, 0.0], [0.0, 1.0])
    audio_term = (mask * per_sample).sum() / 2
    expected = video_term + 0.5 * audio_term if with_video else 0.5 * audio_term  # audio-only: the video term is logged
    assert result.losses[0] == pytest.approx(float(expected), rel=1e-6, abs=0)
    (record,) = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert record["loss_video"] == pytest.approx(float(video_term), rel=1e-6)
    assert record["loss_audio"] == pytest.approx(float(audio_term), rel=1e-6)


def test_a_silent_samples_audio_gets_zero_gradient(plan: Plan, tmp_path: Path, cache: Path) -> None:
    streams = TrainingStreams(plan, joint(tmp_path, cache))
    x0, noise = torch.randn(3, 9, 128), torch.randn(3, 9, 128)
    sigma, mask = torch.tensor([0.2, 0.5, 0.9]), torch.tensor([1.0, 0.0, 1.0])
    inputs = StreamInputs({"audio": x0}, {"audio": noise}, {"audio": x0}, {"audio": sigma}, {"audio": mask})
    prediction = torch.randn(3, 9, 128, requires_grad=True)
    video = torch.tensor(0.25, requires_grad=True)
    total, terms = streams.loss(video, {"audio": prediction}, inputs)
    total.backward()
    assert prediction.grad is not None and video.grad is not None
    assert torch.equal(prediction.grad[1], torch.zeros(9, 128))
    assert bool(prediction.grad[0].ne(0).all()) and bool(prediction.grad[2].ne(0).all())
    assert float(video.grad) == 1.0 and set(terms) == {"video", "audio"}


# -- what trains ---------------------------------------------------------------------------------------------


def lora_names(plan: Plan, train_section: TrainSection) -> set[str]:
    model = plan.components()[plan.transformer_role]
    _make_trainable(model, plan, RunConfig(train=train_section))
    return {n.split(".lora_")[0] for n, p in model.named_parameters() if p.requires_grad}


def test_lora_targets_by_mode(plan: Plan) -> None:
    video_only = lora_names(plan, TrainSection())
    both = lora_names(plan, TrainSection(audio=True))
    audio_only = lora_names(plan, TrainSection(audio=True, video=False))
    own = lambda names: {n for n in names if any(p in n for p in AUDIO_PARTS)}  # noqa: E731
    assert video_only and not own(video_only)
    assert "transformer_blocks.0.attn1.to_q" in video_only
    for name in ("audio_attn1.to_q", "audio_attn2.to_v", "audio_to_video_attn.to_k", "video_to_audio_attn.to_out.0"):
        assert f"transformer_blocks.1.{name}" in both and f"transformer_blocks.1.{name}" in audio_only
    assert both == video_only | own(both) and audio_only == own(both)


def test_full_fine_tuning_follows_the_same_parts(plan: Plan) -> None:
    names = [n for n, _ in plan.components()[plan.transformer_role].named_parameters()]
    modes = {
        "video": RunConfig(train=TrainSection(mode="full")),
        "both": RunConfig(train=TrainSection(mode="full", audio=True)),
        "audio": RunConfig(train=TrainSection(mode="full", audio=True, video=False)),
    }
    trains = {mode: {n for n in names if parameter_trains(n, plan, c)} for mode, c in modes.items()}
    audio = {n for n in names if any(p in n for p in AUDIO_PARTS)}
    assert trains["video"] == set(names) - audio and trains["both"] == set(names) and trains["audio"] == audio
    assert "audio_proj_in.weight" in audio and "transformer_blocks.0.video_a2v_cross_attn_scale_shift_table" in audio


def test_a_video_only_lora_leaves_the_isolated_audio_bit_identical(plan: Plan, cache: Path) -> None:
    """Audio sampled isolated (as video-only training runs it): a trained video LoRA changes the video only."""
    item = CacheDataset(cache)[0]
    adapter = Adapter(plan)
    isolated = {"isolate_modalities": next(p for p in plan.perturbations if p.name == "modality").call[
        "isolate_modalities"]}  # fmt: skip
    text = {"embeds": item["text_embeds"][None], "audio_embeds": item["text_audio_embeds"][None],
            "mask": item["text_mask"][None]}  # fmt: skip
    latents, audio = item["latents"][None].float(), item["audio_latents"][None].float()
    env = adapter.environment(latents, torch.tensor([0.6]), text, 24.0, streams={"audio": audio})
    base = plan.components()[plan.transformer_role].eval()
    with torch.no_grad():
        base_video, base_streams = adapter.outputs(base, env, isolated)
    tuned = copy.deepcopy(base)
    add_lora(tuned, run_lora_config(RunConfig(), plan))
    with torch.no_grad():
        for name, param in tuned.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn_like(param))  # a "trained" LoRA: B is no longer zero
        video, streams = adapter.outputs(tuned, env, isolated)
    assert not torch.equal(video, base_video)
    assert torch.equal(streams["audio"], base_streams["audio"])


def test_joint_training_lowers_the_audio_loss_on_a_fixed_batch(plan: Plan, cache: Path, tmp_path: Path) -> None:
    run = joint(tmp_path, cache, mode="lora", lora={"rank": 4, "alpha": 8.0})
    model = plan.components()[plan.transformer_role]
    torch.manual_seed(0)
    _make_trainable(model, plan, run)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    item = CacheDataset(cache)[0]
    text = {"embeds": item["text_embeds"][None], "audio_embeds": item["text_audio_embeds"][None],
            "mask": item["text_mask"][None]}  # fmt: skip
    g = torch.Generator().manual_seed(7)
    sigma = torch.tensor([0.7])
    x0, audio = item["latents"][None].float(), item["audio_latents"][None].float()
    noise, audio_noise = torch.randn(x0.shape, generator=g), torch.randn(audio.shape, generator=g)
    noisy = (1 - sigma) * audio + sigma * audio_noise
    inputs = StreamInputs({"audio": audio}, {"audio": audio_noise}, {"audio": noisy}, {"audio": sigma},
                          {"audio": torch.ones(1)})  # fmt: skip
    streams, adapter = TrainingStreams(plan, run), Adapter(plan)
    losses = []
    for _ in range(25):
        env = adapter.environment((1 - sigma) * x0 + sigma * noise, sigma, text, 24.0, streams={"audio": noisy})
        video, predicted = adapter.outputs(model, env)
        video_term = (video - (noise - x0)).square().mean()
        total, terms = streams.loss(video_term, predicted, inputs)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(float(terms["audio"]))
    assert losses[-1] < 0.85 * losses[0] and losses[-1] == min(losses), losses


# -- resume, dropout, refusals ------------------------------------------------------------------------------


def test_a_joint_run_resumes_exactly(plan: Plan, cache: Path, tmp_path: Path) -> None:
    def run(run_dir: Path, stop_after: int | None = None) -> Any:
        torch.manual_seed(0)
        settings = joint(run_dir, cache, steps=6, data={"batch_size": 2}, checkpoint={"every": 3, "keep": 0})
        return train(plan, settings, stop_after=stop_after)

    straight = run(tmp_path / "straight")
    assert len(set(straight.losses)) > 1
    first = run(tmp_path / "split", stop_after=3)
    video_only = config(tmp_path / "split", cache, train={"steps": 6}, data={"batch_size": 2})
    with pytest.raises(UserError, match=r"trained the streams video\+audio .* --set train\.audio=true"):
        train(plan, video_only)  # other modules would train: refused
    second = run(tmp_path / "split")
    assert first.losses + second.losses == straight.losses  # bit-equal
    records = read_metrics(tmp_path / "split" / "metrics.jsonl")
    expected = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    assert [r["loss_audio"] for r in records] == [r["loss_audio"] for r in expected]
    assert len({r["loss_audio"] for r in records}) > 1


def test_cfg_dropout_drops_the_audio_text_with_the_video_text(plan: Plan, cache: Path) -> None:
    dataset = CacheDataset(cache)
    text = TrainingText(plan, dataset, torch.device("cpu"))
    items = [dataset[0], dataset[1]]
    batch = {key: torch.stack([i[key] for i in items]) for key in ("text_embeds", "text_audio_embeds", "text_mask")}
    out = text(batch, torch.tensor([True, False]))
    for name in ("embeds", "audio_embeds", "mask"):
        assert torch.equal(out[name][0], text.null[name]) and torch.equal(out[name][1], batch[f"text_{name}"][1])
    assert not torch.equal(text.null["audio_embeds"], batch["text_audio_embeds"][0])


def test_refusals_name_the_key(plan: Plan, cache: Path, tmp_path: Path) -> None:
    video_plan = compile_spec(load_spec(TINY_LTX))
    with pytest.raises(UserError, match=r"train\.audio = true, but spec 'ltx-video-tiny' has no \[streams\]"):
        train(video_plan, joint(tmp_path / "a", tmp_path / "nowhere"))
    silent = tmp_path / "silent"
    shutil.copytree(cache, silent)
    header = json.loads((silent / "cache.json").read_text())
    header.pop("audio", None)
    (silent / "cache.json").write_text(json.dumps(header))
    for file in silent.rglob("*.safetensors"):
        tensors = load_file(file)
        save_file({k: v for k, v in tensors.items() if not k.startswith("audio_")}, file)
    with pytest.raises(UserError, match=r"train\.audio = true .* no audio_latents"):
        train(plan, joint(tmp_path / "b", silent))
    assert not (tmp_path / "b" / "checkpoints").exists()
    run_toml = tmp_path / "run.toml"
    run_toml.write_text("[train]\nvideo = false\n")
    with pytest.raises(ConfigError, match=r"run\.toml:2: train\.video: false trains no stream"):
        load_run_config(run_toml)
    assert attrs.evolve(RunConfig().train, audio=True).video is True


def test_the_audio_text_can_drop_on_its_own_coin(plan: Plan, cache: Path, tmp_path: Path) -> None:
    """`train.audio_cfg_dropout`: the text only the audio reads ([streams.audio] text = audio_embeds) is dropped on a
    coin of its own, drawn after every other draw (σ, noise, the video coin and the audio noise are unchanged);
    the video's text still follows the video coin. Unset, both drop together (test above)."""
    from ltxc.runner.step import draw_micro
    from ltxc.runner.tasks import training_tasks

    assert plan.streams["audio"].text == ("audio_embeds",)
    dataset = CacheDataset(cache)
    text = TrainingText(plan, dataset, torch.device("cpu"))
    items = [dataset[0], dataset[1]]
    batch = {key: torch.stack([i[key] for i in items]) for key in ("text_embeds", "text_audio_embeds", "text_mask")}
    out = text(batch, torch.tensor([True, False]), torch.tensor([False, True]))
    for name in ("embeds", "mask"):
        assert torch.equal(out[name][0], text.null[name]) and torch.equal(out[name][1], batch[f"text_{name}"][1])
    assert torch.equal(out["audio_embeds"][0], batch["text_audio_embeds"][0])
    assert torch.equal(out["audio_embeds"][1], text.null["audio_embeds"])

    shape, shapes = (2, 128, 2, 2, 3), {"audio": (7, 128)}
    draws = {}
    for rate in (None, 0.0, 1.0):
        cfg = joint(tmp_path / "run", cache, audio_cfg_dropout=rate, cfg_dropout=0.5)
        streams = TrainingStreams(plan, cfg)
        tasks = training_tasks(plan, cfg)
        draws[rate] = draw_micro(plan, cfg, tasks, 0, 0, 0, shape, streams, shapes)
    assert draws[None].stream_drop is None
    assert draws[0.0].stream_drop.tolist() == [False, False] and draws[1.0].stream_drop.tolist() == [True, True]
    for rate in (0.0, 1.0):
        assert torch.equal(draws[rate].sigma, draws[None].sigma) and torch.equal(draws[rate].noise, draws[None].noise)
        assert torch.equal(draws[rate].drop, draws[None].drop)
        assert torch.equal(draws[rate].streams["audio"][0], draws[None].streams["audio"][0])

    run_toml = tmp_path / "own.toml"
    run_toml.write_text("[train]\naudio_cfg_dropout = 0.2\n")
    with pytest.raises(ConfigError, match=r"own\.toml:2: train\.audio_cfg_dropout: a rate of the audio's own needs"):
        load_run_config(run_toml)


def test_the_built_in_sample_set_has_sound_when_the_run_trains_audio(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ltxc run train --set train.audio=true` with no data: the synthetic clips carry a tone each, so every cached
    sample has its sound (audio_mask 1) and the audio loss is a real term, not a masked zero."""
    from conftest import isolated_process_group, run_cli

    monkeypatch.chdir(tmp_path)
    plan_path = compile_spec(load_spec(TINY_LTX2)).save(tmp_path / "plan")
    with isolated_process_group():
        code, _, err = run_cli(capsys, "run", "train", "--plan", str(plan_path), "--set", "train.audio=true",
                               "--set", "train.steps=2",
                               "--set", "log.progress=false", "--set", "export.full=false")  # fmt: skip
    assert code == 0, err[-3000:]
    dataset = CacheDataset(tmp_path / "runs" / "default" / "cache")
    assert len(dataset) == 4 and all(float(dataset[i]["audio_mask"]) == 1.0 for i in range(len(dataset)))
    records = read_metrics(tmp_path / "runs" / "default" / "metrics.jsonl")
    assert all(r["loss_audio"] > 0 for r in records if "loss_audio" in r) and records
