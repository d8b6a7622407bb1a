"""The training runner end to end on the tiny LTX-Video spec, single process (the two-rank runs are in
test_train_distributed.py).

Covers:
- learning: ~100 (full) / 200 (LoRA) steps on 4 cached clips lower the loss clearly (last-10 mean over
  first-10 mean below a ratio, measured at 0.71–0.84 over seeds and modes);
- exact resume: N steps straight vs k steps (`stop_after`), then resume to N: the per-step losses after k,
  the metrics.jsonl records and the whole final checkpoint (weights *and* optimiser state) are bit-equal;
  LoRA and full; with batch 2 x grad-accum 2; also resuming from a mid-run checkpoint into another run dir,
  and resuming a finished run (nothing to do); a run is a function of its seed (the LoRA init too), not of
  the process's RNG state;
- CFG dropout: `dropout_decisions` (p=1 all, p=0 none, p=0.3 about 30%, per sample, reproducible),
  `cfg_dropout` on hand-made tensors, and in the loop: with p=1 the transformer only ever sees the cached
  null conditioning, with p=0 never;
- divergence: a child spec whose loss weight overflows float32 (`sigma * 1e39`) stops with
  `TrainingDiverged` naming the step and "no checkpoint", or the last good checkpoint (nothing written
  after it; also one resumed from in another run directory); via the CLI it exits 2 with one line;
  a cache made with another spec is refused;
- resume refusals, each one line naming the --set that continues the run or --resume never: a checkpoint
  of the other mode, another train.steps (or epochs giving another total: the LR schedule), another
  run.seed, another global batch; nothing is written;
- frozen parts: training from a cache builds the transformer and nothing else (no VAE, no text encoder);
- exports: the diffusers LoRA loaded into a fresh `LTXPipeline` gives exactly the output of a transformer
  rebuilt independently from the final DCP checkpoint (and not the base model's); the full fine-tune
  export loads with `from_pretrained`, differs from the initial weights and equals the checkpoint's;
- observability: metrics.jsonl keys and values, TensorBoard scalars, loss.png, samples/s over a partial
  logging interval; `ltxc run train` (embedded default, synthetic media; slow: the README's first command,
  shared) prints the checkpoint, export and loss-curve paths;
- schedule: `lr_factor` hand values for constant/cosine/linear with warmup; the LR each optimiser step
  used follows it, and is the one logged for that step.

In-process runs share one 1-rank gloo group (made on first use); it is destroyed and the RANK/MASTER_*
variables restored when the module ends. CLI runs are in-process too (`run_cli`), except the embedded default:
a subprocess (`python -m ltxc run train`, conftest's session fixture) without those variables.

Run: `pytest -q tests/test_train.py` (CPU, tiny random weights, nothing downloaded; ~45 s on 2 cores);
`pytest -q -m slow tests/test_train.py` for the full embedded default (400 steps; tests/test_demo.py
runs the README's demo on it).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch
from conftest import TINY_LTX, CommandRun, run_cli
from diffusers import LTXPipeline, LTXVideoTransformer3DModel
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from ltxc.adapter import Adapter, cfg_dropout, dropout_decisions
from ltxc.compiler import compile_spec
from ltxc.components import ComponentRecipe
from ltxc.data.dataset import CacheDataset
from ltxc.errors import UserError
from ltxc.media.synthetic import make_sample_dataset
from ltxc.plan import Plan
from ltxc.preprocess.run import preprocess
from ltxc.preprocess.settings import build_settings
from ltxc.runner.checkpoint import latest_checkpoint
from ltxc.runner.config import (
    CheckpointSection,
    DataSection,
    ExportSection,
    LogSection,
    LoraSection,
    OptimizerSection,
    RunConfig,
    RunSection,
    ScheduleSection,
    TrainSection,
)
from ltxc.runner.lora import add_lora, lora_config
from ltxc.runner.metrics import read_metrics
from ltxc.runner.optim import lr_factor, make_lr_schedule
from ltxc.runner.train import TrainingDiverged, TrainResult, train
from ltxc.spec import load_spec

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RANK, ALPHA = 4, 8.0  # alpha != rank, so an export that loses the scale shows


# -- fixtures and helpers -----------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("module_process_group")


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 synthetic clips: two in each of two buckets (64x32x9, 96x64x9)."""
    folder = tmp_path_factory.mktemp("media")
    make_sample_dataset(folder, clips=4, images=0, seed=0)
    return folder


def make_cache(plan: Plan, media: Path, cache: Path) -> Path:
    report = preprocess(plan, media, cache, build_settings(plan), progress=False)
    assert report.total_cached == 4 and not report.rejected
    return cache


@pytest.fixture(scope="module")
def cache(plan: Plan, media: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cache(plan, media, tmp_path_factory.mktemp("cache") / "cache")


@pytest.fixture(scope="module")
def diverging(media: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Plan, Path, Path]:
    """(plan, plan.json, cache) of a child of the tiny spec whose loss weight overflows float32 to inf."""
    directory = tmp_path_factory.mktemp("diverging")
    spec = directory / "diverging.toml"
    spec.write_text(
        f'[model]\nname = "ltx-video-tiny-diverging"\nextends = {json.dumps(TINY_LTX.resolve().as_posix())}\n\n'
        '[flow]\nloss_weight = "sigma * 1e39"\n',
        encoding="utf-8",
    )
    child = compile_spec(load_spec(spec))
    return child, child.save(directory), make_cache(child, media, directory / "cache")


def config(run_dir: Path, cache: Path, **sections: dict[str, Any]) -> RunConfig:
    """A quiet, fast run config: 4 LoRA steps (rank 4, alpha 8) at lr 1e-3, no intermediate checkpoints, no
    progress bar, TensorBoard or exports. `sections` set keys per section, e.g. `train={"steps": 3}`."""
    base = RunConfig(
        run=RunSection(output=str(run_dir)),
        data=DataSection(cache=str(cache), pin_memory=False),
        train=TrainSection(mode="lora", steps=4),
        lora=LoraSection(rank=RANK, alpha=ALPHA),
        optimizer=OptimizerSection(lr=1e-3),
        checkpoint=CheckpointSection(every=0),
        log=LogSection(progress=False, tensorboard=False),
        export=ExportSection(lora_diffusers=False, lora_comfyui=False, full=False),
    )
    return attrs.evolve(base, **{name: attrs.evolve(getattr(base, name), **keys) for name, keys in sections.items()})


def read_checkpoint(path: Path, scratch: Path) -> dict[str, Any]:
    """A DCP checkpoint as one plain dict ({"model": ..., "optim": ...}), read without any process group."""
    file = scratch / f"{path.parent.parent.name}-{path.name}.pt"
    dcp_to_torch_save(str(path), str(file))
    return torch.load(file, weights_only=False)


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Nested dicts/lists/tensors equal bit for bit."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, where


def sample_inputs(cache: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """One cached clip, noised at σ = 0.6 with seeded noise: (x_t, σ, embeds, mask, fps)."""
    dataset = CacheDataset(cache)
    item = dataset[0]
    x0 = item["latents"][None].float()
    sigma = torch.tensor([0.6])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    xt = (1 - sigma.view(-1, 1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1, 1) * noise
    fps = float(dataset.header["settings"]["fps"])
    return xt, sigma, item["text_embeds"][None], item["text_mask"][None], fps


# -- exact resume -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "batch_size", "grad_accum"), [("lora", 1, 1), ("full", 2, 2)], ids=["lora", "full-b2-accum2"]
)
def test_resume_is_exact(plan: Plan, cache: Path, tmp_path: Path, mode: str, batch_size: int, grad_accum: int) -> None:
    def run(run_dir: Path, resume: str = "auto", stop_after: int | None = None) -> TrainResult:
        torch.manual_seed(0)  # the same process RNG state for each run: this test is about resume (see below)
        sections = {
            "train": {"mode": mode, "steps": 12, "grad_accum": grad_accum},
            "data": {"batch_size": batch_size},
            "checkpoint": {"every": 4, "keep": 0, "resume": resume},
        }
        return train(plan, config(run_dir, cache, **sections), stop_after=stop_after)

    straight_dir, split_dir, other_dir = tmp_path / "straight", tmp_path / "split", tmp_path / "other"
    straight = run(straight_dir)
    assert len(straight.losses) == 12
    assert len(set(straight.losses)) > 1  # distinct steps, so a misaligned comparison can't pass

    first = run(split_dir, stop_after=6)
    assert (first.steps_done, first.total_steps) == (6, 12)
    assert first.losses == straight.losses[:6]
    assert first.checkpoint == split_dir / "checkpoints" / "step-00000006"
    assert first.exports == {}  # not finished: no exports yet
    assert (split_dir / "checkpoints" / "step-00000004").is_dir()

    # resuming from a mid-run checkpoint (step 4, not the stop point) into another run directory
    other = run(other_dir, resume=str(split_dir / "checkpoints" / "step-00000004"))
    assert other.losses == straight.losses[4:]

    second = run(split_dir)  # resume = "auto"
    assert (second.steps_done, second.total_steps) == (6, 12)
    assert second.losses == straight.losses[6:]  # bit-equal, not approximately

    records = read_metrics(split_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 13))
    assert [r["loss"] for r in records] == [r["loss"] for r in read_metrics(straight_dir / "metrics.jsonl")]

    # the whole final state, weights and optimiser moments, is the same
    assert second.checkpoint == split_dir / "checkpoints" / "step-00000012"
    assert_same(
        read_checkpoint(straight.checkpoint, tmp_path), read_checkpoint(second.checkpoint, tmp_path), "checkpoint"
    )
    meta = json.loads((second.checkpoint / "meta.json").read_text())
    assert meta["step"] == 12 and meta["global_batch"] == batch_size * grad_accum

    done = run(split_dir)  # a finished run: nothing to do
    assert (done.steps_done, done.losses) == (0, ())
    assert done.checkpoint == second.checkpoint


def test_a_run_is_a_function_of_its_seed(plan: Plan, cache: Path, tmp_path: Path) -> None:
    # The LoRA's random init (A) must come from run.seed, not from whatever the process's global RNG holds
    # (a notebook, a previous run, preprocessing in the same process). B = 0 hides A at step 1, not after.
    torch.manual_seed(1)
    first = train(plan, config(tmp_path / "a", cache, train={"steps": 3}))
    torch.manual_seed(2)
    again = train(plan, config(tmp_path / "b", cache, train={"steps": 3}))
    assert again.losses == first.losses
    other = train(plan, config(tmp_path / "c", cache, train={"steps": 3}, run={"seed": 1}))
    assert other.losses != first.losses


# -- CFG dropout --------------------------------------------------------------------------------------


def generators(count: int, offset: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(offset + i) for i in range(count)]


def test_dropout_decisions() -> None:
    assert dropout_decisions(generators(64), 1.0).tolist() == [True] * 64
    assert dropout_decisions(generators(64), 0.0).tolist() == [False] * 64
    many = dropout_decisions(generators(4000), 0.3)
    assert many.dtype == torch.bool and many.shape == (4000,)
    assert abs(many.float().mean().item() - 0.3) < 0.03  # 4 standard deviations (0.0072)
    # one coin per sample, not one per batch; the same generators decide the same way
    half = dropout_decisions(generators(32, 100), 0.5)
    assert 0 < int(half.sum()) < 32
    assert torch.equal(half, dropout_decisions(generators(32, 100), 0.5))


def test_cfg_dropout_replaces_exactly_the_dropped_rows() -> None:
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(4, 6, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0]]).bool()
    null_embeds, null_mask = torch.randn(6, 5, generator=g), torch.tensor([1, 0, 0, 0, 0, 0]).bool()
    before = (embeds.clone(), mask.clone())
    drop = torch.tensor([True, False, True, False])
    out = cfg_dropout({"embeds": embeds, "mask": mask}, {"embeds": null_embeds, "mask": null_mask}, drop)
    out_embeds, out_mask = out["embeds"], out["mask"]
    assert out_embeds.shape == embeds.shape and out_mask.dtype == torch.bool
    for i in (0, 2):
        assert torch.equal(out_embeds[i], null_embeds) and torch.equal(out_mask[i], null_mask)
    for i in (1, 3):
        assert torch.equal(out_embeds[i], embeds[i]) and torch.equal(out_mask[i], mask[i])
    assert torch.equal(embeds, before[0]) and torch.equal(mask, before[1])  # inputs untouched
    same = cfg_dropout(
        {"embeds": embeds, "mask": mask}, {"embeds": null_embeds, "mask": null_mask}, torch.zeros(4, dtype=torch.bool)
    )
    assert torch.equal(same["embeds"], embeds) and torch.equal(same["mask"], mask)


@pytest.mark.parametrize("probability", [1.0, 0.0])
def test_loop_conditions_on_null_exactly_when_dropped(
    plan: Plan, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, probability: float
) -> None:
    dataset = CacheDataset(cache)
    null = dataset.null_conditioning()
    captions = [dataset[i]["text_embeds"] for i in range(len(dataset))]
    assert not any(torch.equal(c, null["text_embeds"]) for c in captions)  # else the test proves nothing
    assert null["text_embeds"].abs().sum() > 0  # "no text" is the encoded empty prompt, not zeros

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = Adapter.predict

    def spy(self: Adapter, transformer: Any, latents: Any, sigma: Any, text: Any, *a: Any, **k: Any):
        seen.append((text["embeds"].detach().clone(), text["mask"].clone()))
        return original(self, transformer, latents, sigma, text, *a, **k)

    monkeypatch.setattr(Adapter, "predict", spy)
    train(plan, config(tmp_path / "run", cache, train={"steps": 3, "cfg_dropout": probability}, data={"batch_size": 2}))
    rows = [(e[i], m[i]) for e, m in seen for i in range(e.shape[0])]
    assert len(rows) == 6
    for embeds, mask in rows:
        is_null = torch.equal(embeds, null["text_embeds"]) and torch.equal(mask, null["text_mask"])
        assert is_null == (probability == 1.0)
        if probability == 0.0:
            assert any(torch.equal(embeds, c) for c in captions)


# -- divergence and refusals --------------------------------------------------------------------------


def test_cache_from_another_spec_is_refused(diverging: tuple[Plan, Path, Path], cache: Path, tmp_path: Path) -> None:
    child, _, _ = diverging
    tiny_hash = json.loads((cache / "cache.json").read_text())["spec"]["hash"]
    assert tiny_hash != child.hash
    with pytest.raises(UserError) as caught:
        train(child, config(tmp_path / "run", cache))
    message = str(caught.value)
    assert "another spec" in message and "preprocess again" in message
    assert str(cache) in message and tiny_hash[:12] in message and child.hash[:12] in message
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_nonfinite_loss_stops_at_once(diverging: tuple[Plan, Path, Path], tmp_path: Path) -> None:
    child, _, child_cache = diverging
    with pytest.raises(TrainingDiverged) as caught:
        train(child, config(tmp_path / "run", child_cache, train={"steps": 5}, checkpoint={"every": 1}))
    assert isinstance(caught.value, UserError)  # exit 2 from the CLI, no traceback
    message = str(caught.value)
    assert "at step 1" in message and "no checkpoint" in message and "inf" in message
    assert latest_checkpoint(tmp_path / "run") is None


def test_nonfinite_loss_names_the_last_good_checkpoint(
    plan: Plan, cache: Path, diverging: tuple[Plan, Path, Path], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    good = train(plan, config(run, cache, train={"steps": 10}), stop_after=3)  # 3 good steps, checkpointed
    assert good.checkpoint == run / "checkpoints" / "step-00000003"
    child, _, child_cache = diverging
    with pytest.raises(TrainingDiverged) as caught:
        # resumes at 3, step 4 is inf
        train(child, config(run, child_cache, train={"steps": 10}, checkpoint={"every": 1}))
    message = str(caught.value)
    assert "at step 4" in message and str(good.checkpoint) in message
    assert latest_checkpoint(run) == good.checkpoint
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-00000003"]
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in records)

    # resumed from an explicit checkpoint into a new run directory: that checkpoint is the last good one
    elsewhere = tmp_path / "elsewhere"
    with pytest.raises(TrainingDiverged) as caught:
        train(child, config(elsewhere, child_cache, train={"steps": 10}, checkpoint={"resume": str(good.checkpoint)}))
    assert "at step 4" in str(caught.value) and str(good.checkpoint) in str(caught.value)


def test_nonfinite_loss_via_cli_exits_2_with_one_line(
    diverging: tuple[Plan, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, plan_json, child_cache = diverging
    out = tmp_path / "run"
    sets = [f"data.cache={child_cache}", f"run.output={out}", "train.steps=3", "log.progress=false"]
    # the CLI in-process (an exception other than the user error would escape main() and fail the test)
    code, stdout, stderr = run_cli(capsys, "run", "train", "--plan", str(plan_json), *(f"--set={s}" for s in sets))
    assert code == 2, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert "at step 1" in last and "no checkpoint" in last
    assert stdout == ""  # no summary for a run that failed


# -- frozen parts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_only_the_transformer_is_built(
    plan: Plan, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    built: list[str] = []
    original = ComponentRecipe.build

    def spy(self: ComponentRecipe) -> Any:
        built.append(self.role)
        return original(self)

    monkeypatch.setattr(ComponentRecipe, "build", spy)
    exports = {"lora_diffusers": True, "lora_comfyui": True, "full": True}
    result = train(plan, config(tmp_path / "run", cache, train={"mode": mode, "steps": 2}, export=exports))
    assert result.exports  # the exports ran too, and needed nothing else either
    assert built == [plan.spec.transformer.component]


# -- exports ------------------------------------------------------------------------------------------


def test_lora_export_loads_into_a_fresh_pipeline_like_the_trained_model(
    plan: Plan, cache: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    exports = {"lora_diffusers": True, "lora_comfyui": True}
    result = train(plan, config(run, cache, train={"steps": 20}, export=exports))
    assert set(result.exports) == {"lora_diffusers", "lora_comfyui"}
    assert Path(result.exports["lora_diffusers"]) == run / "export" / "lora" / "pytorch_lora_weights.safetensors"
    xt, sigma, embeds, mask, fps = sample_inputs(cache)
    adapter = Adapter(plan)

    @torch.no_grad()
    def output(transformer: torch.nn.Module) -> torch.Tensor:
        return adapter.predict(transformer, xt, sigma, {"embeds": embeds, "mask": mask}, fps)

    # the trained model, rebuilt from the final checkpoint without the export code
    trained = plan.components()[plan.spec.transformer.component]
    add_lora(trained, lora_config(plan.spec.lora.targets, RANK, ALPHA, exclude=plan.spec.parallel.frozen))
    state = read_checkpoint(result.checkpoint, tmp_path)["model"]
    assert state and all(".lora_" in key for key in state)  # a LoRA checkpoint holds only the LoRA
    missing, unexpected = trained.load_state_dict(state, strict=False)
    assert unexpected == [] and not [key for key in missing if ".lora_" in key]
    assert any(key.endswith("lora_B.default.weight") and value.abs().max() > 0 for key, value in state.items())

    components = plan.components()
    pipe = LTXPipeline(**{role: components[role] for role in components})
    pipe.load_lora_weights(run / "export" / "lora")
    base = plan.components()[plan.spec.transformer.component]

    want, got, untrained = output(trained), output(pipe.transformer), output(base)
    assert (got - want).abs().max().item() <= 1e-6
    assert (want - untrained).abs().max().item() > 1e-3  # the LoRA changes the output


def test_full_export_loads_with_from_pretrained(plan: Plan, cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = train(plan, config(run, cache, train={"mode": "full", "steps": 5}, export={"full": True}))
    assert Path(result.exports["transformer"]) == run / "export" / "transformer"
    loaded = LTXVideoTransformer3DModel.from_pretrained(run / "export" / "transformer")
    exported = loaded.state_dict()
    initial = plan.components()[plan.spec.transformer.component].state_dict()
    checkpoint = read_checkpoint(result.checkpoint, tmp_path)["model"]
    assert set(exported) == set(initial) == set(checkpoint)
    changed = [key for key in exported if not torch.equal(exported[key], initial[key])]
    assert len(changed) > len(exported) // 2  # a full fine-tune moves (nearly) every weight
    for key, value in exported.items():
        assert value.dtype == torch.float32 and torch.equal(value, checkpoint[key]), key


# -- learning -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "steps"), [("full", 100), ("lora", 200)])
def test_training_lowers_the_loss(plan: Plan, cache: Path, tmp_path: Path, mode: str, steps: int) -> None:
    # σ is drawn per step, so single losses are noisy; means of 10 measured 0.71-0.78 (full, 100 steps) and
    # 0.75-0.79 (LoRA, 200 steps) over seeds 0-5: 0.85 leaves a margin, and a model that doesn't learn is ~1.
    result = train(plan, config(tmp_path / "run", cache, train={"mode": mode, "steps": steps}))
    losses = result.losses
    assert len(losses) == steps and all(math.isfinite(x) for x in losses)
    first, last = statistics.mean(losses[:10]), statistics.mean(losses[-10:])
    assert last / first < 0.85, f"{mode}: loss {first:.4f} -> {last:.4f} (ratio {last / first:.3f})"


# -- observability ------------------------------------------------------------------------------------


def test_metrics_tensorboard_and_loss_curve(plan: Plan, cache: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    result = train(plan, config(run, cache, train={"steps": 6}, log={"tensorboard": True}))
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert tuple(r["loss"] for r in records) == result.losses
    for record in records:
        assert {"loss", "grad_norm", "lr", "samples_per_s", "data_wait_fraction", "peak_memory_mb"} <= set(record)
        assert record["lr"] == pytest.approx(1e-3)
        assert record["grad_norm"] > 0 and record["samples_per_s"] > 0 and record["peak_memory_mb"] > 0
        assert 0 <= record["data_wait_fraction"] <= 1
        buckets = [key for key in record if key.startswith("loss/sigma_")]
        assert len(buckets) == 1  # batch size 1: one σ, one bucket, and its loss is the step's loss
        assert record[buckets[0]] == pytest.approx(record["loss"], rel=1e-6)

    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    accumulator = EventAccumulator(str(run / "tensorboard"))
    accumulator.Reload()
    assert {"loss", "grad_norm", "lr"} <= set(accumulator.Tags()["scalars"])
    scalars = accumulator.Scalars("loss")
    assert [e.step for e in scalars] == [1, 2, 3, 4, 5, 6]
    assert [e.value for e in scalars] == pytest.approx(list(result.losses), rel=1e-6)

    assert result.loss_curve == run / "loss.png"
    assert (run / "loss.png").read_bytes()[:8] == PNG_SIGNATURE


def test_samples_per_second_over_a_partial_logging_interval(
    plan: Plan, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each step takes ~0.1 s (a sleep dominates the tiny model's compute). With log.every = 4 over 6 steps the
    # records come at steps 4 and 6; the second covers 2 steps, and must not be counted as 4.
    original = Adapter.predict

    def slow(*args: Any, **kwargs: Any) -> torch.Tensor:
        time.sleep(0.1)
        return original(*args, **kwargs)

    monkeypatch.setattr(Adapter, "predict", slow)
    train(plan, config(tmp_path / "run", cache, train={"steps": 6}, log={"every": 4}))
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [4, 6]
    ratio = records[1]["samples_per_s"] / records[0]["samples_per_s"]
    assert 0.6 < ratio < 1.5, f"samples/s {records[0]['samples_per_s']:.2f} then {records[1]['samples_per_s']:.2f}"


@pytest.mark.slow
def test_cli_embedded_default_prints_where_things_are(embedded_default_run: CommandRun) -> None:
    # `ltxc run train` with no config: synthetic media, preprocessing, training (400 steps), exports; the README's
    # first command, run once per session (shared with test_cli_embedded_default_learns and test_demo.py)
    tmp_path, done = embedded_default_run.cwd, embedded_default_run.done
    assert done.returncode == 0, done.stderr
    summary = done.stdout.splitlines()
    run = Path("runs") / "default"

    def named(prefix: str) -> list[str]:
        return [line.removeprefix(prefix).strip() for line in summary if line.startswith(prefix)]

    assert named("checkpoint") == [str(run / "checkpoints" / "step-00000400")]
    assert (tmp_path / run / "checkpoints" / "step-00000400" / "meta.json").is_file()
    exports = dict(item.split(": ", 1) for item in named("export"))
    assert exports == {"transformer": str(run / "export" / "transformer")}  # the default is a full fine-tune
    assert (tmp_path / exports["transformer"] / "config.json").is_file()
    assert named("loss curve") == [str(run / "loss.png")]
    assert (tmp_path / run / "loss.png").read_bytes()[:8] == PNG_SIGNATURE
    assert named("steps")[0].startswith("400 this run") and "->" in named("loss  ")[0]
    assert (tmp_path / run / "run.json").is_file() and (tmp_path / run / "cache" / "manifest.jsonl").is_file()


@pytest.mark.slow
def test_cli_embedded_default_learns(embedded_default_run: CommandRun) -> None:
    """`ltxc run train` exactly as the README's first command: the tiny model visibly learns (the run is shared with
    test_demo.py, which generates from it)."""
    tmp_path, done, seconds = embedded_default_run.cwd, embedded_default_run.done, embedded_default_run.seconds
    assert done.returncode == 0, done.stderr
    losses = [r["loss"] for r in read_metrics(tmp_path / "runs" / "default" / "metrics.jsonl")]
    assert len(losses) == 400
    first, last = statistics.mean(losses[:40]), statistics.mean(losses[-40:])
    assert last / first < 0.85, f"loss {first:.4f} -> {last:.4f}"
    assert seconds < 180  # "a few minutes on a 2-core CPU" at most; ~20 s here


# -- schedule -----------------------------------------------------------------------------------------


def test_lr_factor_hand_values() -> None:
    constant = ScheduleSection(kind="constant", warmup=4)
    assert [lr_factor(s, 10, constant) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert [lr_factor(s, 10, ScheduleSection()) for s in (0, 5, 9)] == [1.0, 1.0, 1.0]

    cosine = ScheduleSection(kind="cosine", warmup=2)  # 8 steps of decay after 2 of warmup
    got = [lr_factor(s, 10, cosine) for s in range(11)]
    want = [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(9)]
    assert got == pytest.approx(want, abs=1e-12)
    assert got[6] == pytest.approx(0.5) and got[10] == pytest.approx(0.0)

    linear = ScheduleSection(kind="linear", warmup=2, min_lr_ratio=0.1)
    got = [lr_factor(s, 10, linear) for s in range(11)]
    want = [0.5, 1.0, 1.0, 0.8875, 0.775, 0.6625, 0.55, 0.4375, 0.325, 0.2125, 0.1]
    assert got == pytest.approx(want, abs=1e-12)
    assert lr_factor(50, 10, linear) == pytest.approx(0.1)  # never below the floor

    floor = ScheduleSection(kind="cosine", min_lr_ratio=0.2)
    assert [lr_factor(s, 4, floor) for s in (0, 2, 4)] == pytest.approx([1.0, 0.6, 0.2])


def test_lr_schedule_follows_lr_factor() -> None:
    schedule = ScheduleSection(kind="cosine", warmup=3)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=2e-3)
    lr_schedule = make_lr_schedule(optimizer, 12, schedule)
    for step in range(12):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(2e-3 * lr_factor(step, 12, schedule), abs=1e-15)
        optimizer.step()
        lr_schedule.step()


def test_each_step_uses_and_logs_its_scheduled_lr(plan: Plan, cache: Path, tmp_path: Path) -> None:
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    schedule = ScheduleSection(kind="linear", warmup=3, min_lr_ratio=0.1)
    used: list[float] = []
    handle = register_optimizer_step_pre_hook(lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
    try:
        run_config = config(tmp_path / "run", cache, train={"steps": 8}, schedule=attrs.asdict(schedule))
        result: TrainResult = train(plan, run_config)
    finally:
        handle.remove()
    assert len(result.losses) == 8
    assert used == pytest.approx([1e-3 * lr_factor(s, 8, schedule) for s in range(8)], abs=1e-15)
    logged = [r["lr"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert logged == pytest.approx(used, abs=1e-15), "the lr logged at step k is the one step k used"


def test_resuming_a_checkpoint_of_the_other_mode_is_refused(plan: Plan, cache: Path, tmp_path: Path) -> None:
    """A full run's checkpoint is not continued as LoRA (nor the reverse): one clear line, nothing lost."""
    run = tmp_path / "run"
    first = train(plan, config(run, cache, train={"steps": 2, "mode": "full"}))
    with pytest.raises(UserError) as caught:
        train(plan, config(run, cache, train={"steps": 2, "mode": "lora"}))
    message = str(caught.value)
    assert "full checkpoint" in message and "trains lora" in message and "--resume never" in message
    assert first.checkpoint is not None and first.checkpoint.exists()  # the earlier run's state is untouched
    assert json.loads((first.checkpoint / "meta.json").read_text())["spec_hash"] == plan.hash


@pytest.fixture(scope="module")
def stopped(plan: Plan, cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint of a 4-step LoRA run (seed 0, global batch 1) stopped after 2 steps."""
    run = tmp_path_factory.mktemp("stopped") / "run"
    return train(plan, config(run, cache), stop_after=2).checkpoint


@pytest.mark.parametrize(
    ("sections", "words"),
    [
        ({"train": {"steps": 8}}, ["LR schedule of 4 steps", "train.steps = 8", "--set train.steps=4"]),
        ({"train": {"steps": None, "epochs": 3}}, ["LR schedule of 4 steps", "train.epochs = 3, 12 steps"]),
        ({"run": {"seed": 3}}, ["run.seed 0", "this run has 3", "--set run.seed=0"]),
        ({"data": {"batch_size": 2}}, ["global batch of 1", "this run has 2", "--set data.batch_size=1"]),
    ],
    ids=["steps", "epochs", "seed", "global-batch"],
)
def test_a_resume_that_would_not_continue_the_run_is_refused(
    plan: Plan, cache: Path, stopped: Path, tmp_path: Path, sections: dict[str, dict[str, Any]], words: list[str]
) -> None:
    """Another LR schedule length, seed or global batch would not continue the recorded run: one line that says
    which --set continues it, or --resume never; nothing is written."""
    with pytest.raises(UserError) as caught:
        train(plan, config(tmp_path / "run", cache, checkpoint={"resume": str(stopped)}, **sections))
    message = str(caught.value)
    assert message.startswith(str(stopped)) and "\n" not in message and "--resume never" in message
    assert [word for word in words if word not in message] == [], message
    assert not (tmp_path / "run").exists()
