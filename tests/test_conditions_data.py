"""IC-LoRA data and exports on the tiny LTX-2.3 spec: (target, reference) pairs through preprocessing, the cache,
the loader, the `[tasks.ic_lora]` call mapping, and LoRA exports with the task's metadata, checked against diffusers.

- a pair is cached: the reference's latents beside the target's (`reference_latents`), encoded as the condition
  says and normalised like the target's (`[latent]`, here with a scaling of 0.7, so the condition's normaliser,
  which has none, would fail), equal to diffusers' `_normalize_latents` of the VAE's mode of the same frames, and
  converted to the condition's normaliser (as training does) equal to the pipeline's reference latents up to
  rounding; they load back through `CacheDataset` and the loader as [B, C, F, H', W'];
- a downscaled reference (factor 2): a 192x128 target and a 96x64 reference (both on the 32-pixel rule), its
  bucket, shapes and oracle; a resolution whose half breaks the rule is refused before any work;
- bad pairs (missing, unreadable, too short, not media, another aspect, none named) each land in rejected.jsonl
  with their reason while the good pairs are cached; a rerun after a reference disappears loses nothing cached;
- the ic_lora call mapping: video_coords equal the pipeline's construction (target coords, then the reference's
  with rows and columns x downscale), timestep 0 on the reference tokens, and the tiny transformer runs on it;
- exports: a run training ic_lora writes reference_downscale_factor (and the trainer's other keys) = the
  condition's downscale into both LoRA files; the LoRA loads into LTX2InContextPipeline and, exported from an i2v
  run (no such keys), into LTX2ImageToVideoPipeline and (tiny LTX-Video) LTXImageToVideoPipeline, each
  reproducing the trained transformer.

Run: pytest -q tests/test_conditions_data.py (CPU, tiny random weights, nothing downloaded).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import attrs
import numpy as np
import pytest
import torch
from conftest import TINY_LTX, TINY_LTX2
from diffusers import LTX2ImageToVideoPipeline, LTX2InContextPipeline, LTXImageToVideoPipeline
from safetensors import safe_open

from ltxc.adapter import Adapter
from ltxc.compiler import compile_spec
from ltxc.conditions import TokenConditions
from ltxc.data.cache import Cache
from ltxc.data.dataset import CacheDataset
from ltxc.data.loader import make_loader
from ltxc.errors import UserError
from ltxc.media.decode import read_frames
from ltxc.media.probe import probe
from ltxc.media.synthetic import pattern, write_corrupt, write_video
from ltxc.plan import Plan
from ltxc.preprocess.run import Report, preprocess
from ltxc.preprocess.settings import build_settings
from ltxc.runner.config import ExportSection
from ltxc.runner.export import export_trained, trained_tasks
from ltxc.runner.lora import add_lora, lora_config, lora_state_dict
from ltxc.runner.run_dir import DIFFUSERS_LORA, LORA
from ltxc.spec import load_spec

CHANNELS = 128
SCALING = 0.7  # [latent] normalise's scaling factor (the cache's); the reference's condition normalises without one
FPS = 24  # the tiny spec's sampler fps: preprocessing's default
TARGET = (192, 128)  # (width, height): the bucket of every target
REFERENCE_DRAW = functools.partial(pattern, direction="top to bottom", color=(40, 200, 90))
KEYS = ("reference_downscale_factor", "reference_spatial_scale_factor", "reference_temporal_scale_factor")


# -- helpers ------------------------------------------------------------------------------------------


def stats(seed: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and (positive) std with 4 decimals, so they round-trip through TOML exactly."""
    rng = np.random.default_rng(seed)
    mean = [round(float(v), 4) for v in rng.uniform(-1.5, 1.5, CHANNELS)]
    std = [round(float(v), 4) for v in rng.uniform(0.3, 2.5, CHANNELS)]
    return mean, std


def child_plan(directory: Path, downscale: int) -> Plan:
    """The tiny LTX-2.3 spec with a non-trivial normaliser: [latent] scales by 0.7, the reference condition by 1."""
    mean, std = stats(downscale)
    norm = f'kind = "mean_std", mean = {json.dumps(mean)}, std = {json.dumps(std)}'
    path = directory / f"ic-{downscale}.toml"
    path.write_text(
        f'[model]\nname = "ltx-2.3-tiny-ic{downscale}"\nextends = {json.dumps(TINY_LTX2.resolve().as_posix())}\n\n'
        f"[latent]\nnormalise = {{ {norm}, scaling_factor = {SCALING} }}\n\n"
        f'[tasks.ic_lora]\nreference_args = {{ reference_downscale_factor = "{downscale}" }}\n\n'
        f"[tasks.ic_lora.conditions.reference]\ndownscale = {downscale}\n"
        f"normalise = {{ {norm}, scaling_factor = 1.0 }}\n",
        encoding="utf-8",
    )
    return compile_spec(load_spec(path))


def write_pairs(data: Path, rows: list[dict[str, Any]]) -> None:
    (data / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def target(data: Path, name: str, frames: int = 12) -> str:
    (data / "clips").mkdir(parents=True, exist_ok=True)
    write_video(data / "clips" / name, frames=frames, fps=FPS, size=TARGET)
    return f"clips/{name}"


def reference(data: Path, name: str, *, frames: int = 12, size: tuple[int, int] = TARGET) -> str:
    (data / "refs").mkdir(parents=True, exist_ok=True)
    write_video(data / "refs" / name, frames=frames, fps=FPS, size=size, draw=REFERENCE_DRAW)
    return f"refs/{name}"


def run_preprocess(plan: Plan, data: Path, cache: Path, resolution: str = "192x128") -> Report:
    return preprocess(plan, data, cache, build_settings(plan, resolution=resolution), progress=False)


def manifest(cache: Path) -> dict[str, dict[str, Any]]:
    return {record["source"]: record for record in Cache(cache).manifest()}


@torch.no_grad()
def oracle(plan: Plan, media: Path, indices: list[int], size: tuple[int, int], scaling: float) -> torch.Tensor:
    """diffusers' way: the VAE's mode of the frames, `LTX2InContextPipeline._normalize_latents` (ic:1433-1434)."""
    components = plan.components()
    vae = components["vae"]
    frames = read_frames(probe(media), indices, size)
    pixels = torch.from_numpy(frames).permute(3, 0, 1, 2).unsqueeze(0).to(torch.float32) / 127.5 - 1.0
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as the preprocessor encodes: results then match bit for bit
    try:
        latents = vae.encode(pixels).latent_dist.mode()
    finally:
        torch.set_num_threads(previous)
    norm = plan.spec.latent.normalise
    mean, std = torch.tensor(norm.mean), torch.tensor(norm.std)
    return LTX2InContextPipeline._normalize_latents(latents, mean, std, scaling)[0]


# -- pairs in the cache -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    directory = tmp_path_factory.mktemp("specs")
    return SimpleNamespace(full=child_plan(directory, 1), half=child_plan(directory, 2))


@pytest.fixture(scope="module")
def full_size(specs: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Two good pairs and one bad pair of each kind, at downscale 1."""
    data = tmp_path_factory.mktemp("pairs")
    (data / "refs").mkdir()
    (data / "refs" / "notes.txt").write_text("not a video\n")
    write_corrupt(data / "refs" / "corrupt.mp4", seed=3)
    rows = [
        {"path": target(data, "a.mp4"), "caption": "a red square", "reference": reference(data, "a.mp4")},
        {"path": target(data, "b.mp4", 20), "caption": "another one", "reference": reference(data, "b.mp4", frames=9)},
        {"path": target(data, "missing.mp4"), "caption": "x", "reference": "refs/nope.mp4"},
        {"path": target(data, "corrupt.mp4"), "caption": "x", "reference": "refs/corrupt.mp4"},
        {"path": target(data, "short.mp4"), "caption": "x", "reference": reference(data, "short.mp4", frames=5)},
        {"path": target(data, "text.mp4"), "caption": "x", "reference": "refs/notes.txt"},
        {"path": target(data, "tall.mp4"), "caption": "x", "reference": reference(data, "tall.mp4", size=(128, 192))},
        {"path": target(data, "alone.mp4"), "caption": "x"},
    ]
    write_pairs(data, rows)
    cache = data.parent / f"{data.name}-cache"
    report = run_preprocess(specs.full, data, cache)
    return SimpleNamespace(data=data, cache=cache, report=report, plan=specs.full)


def test_a_pair_is_cached_beside_its_target_and_equals_the_pipelines_encoding(full_size: SimpleNamespace) -> None:
    records = manifest(full_size.cache)
    assert sorted(records) == ["clips/a.mp4", "clips/b.mp4"]
    assert full_size.report.pairs.startswith("column 'reference' -> [tasks.ic_lora] condition 'reference'")
    header = json.loads((full_size.cache / "cache.json").read_text())
    assert header["reference"] == {"column": "reference", "task": "ic_lora", "condition": "reference", "downscale": 1}
    for source, ref in (("clips/a.mp4", "refs/a.mp4"), ("clips/b.mp4", "refs/b.mp4")):
        record = records[source]
        assert record["reference"] == ref
        assert record["bucket"] == "192x128x9+ref192x128"
        assert record["reference_pixel_shape"] == [9, 128, 192] and record["pixel_shape"] == [9, 128, 192]
        assert record["reference_shape"] == record["latent_shape"] == [CHANNELS, 2, 4, 6]
        assert record["reference_source_frames"] == record["source_frames"] == list(range(9))
        tensors = Cache(full_size.cache).load_sample(record["id"])
        cached_reference, cached_target = tensors["reference_latents"], tensors["latents"]
        # normalised like the target ([latent], scaling 0.7) ...
        assert torch.equal(
            cached_reference, oracle(full_size.plan, full_size.data / ref, list(range(9)), TARGET, SCALING)
        )
        # ... and, converted to the condition's normaliser as training converts it, the pipeline's reference latents
        in_context = oracle(full_size.plan, full_size.data / ref, list(range(9)), TARGET, 1.0)
        assert torch.allclose(cached_reference / SCALING, in_context, rtol=0, atol=1e-5)
        assert not torch.allclose(cached_reference, in_context, atol=1e-2)
        assert torch.equal(
            cached_target, oracle(full_size.plan, full_size.data / source, list(range(9)), TARGET, SCALING)
        )
        assert not torch.allclose(cached_reference, cached_target, atol=1e-2)


def test_pairs_load_back_as_batches(full_size: SimpleNamespace) -> None:
    dataset = CacheDataset(full_size.cache)
    assert dataset.reference is not None and dataset.reference["downscale"] == 1
    item = dataset[0]
    assert item["reference_latents"].shape == (CHANNELS, 2, 4, 6) and item["reference_latents"].dtype == torch.float32
    batch = next(iter(make_loader(dataset, 2, rank=0, world_size=1, seed=0)))
    assert batch["reference_latents"].shape == (2, CHANNELS, 2, 4, 6)
    assert batch["latents"].shape == (2, CHANNELS, 2, 4, 6)
    for row, index in enumerate(batch["index"]):
        assert torch.equal(batch["reference_latents"][row], dataset[index]["reference_latents"])


def test_each_bad_pair_is_rejected_with_its_reason(full_size: SimpleNamespace) -> None:
    rejected = {r["source"]: r["reason"] for r in Cache(full_size.cache).rejected()}
    assert sorted(rejected) == sorted(
        f"clips/{n}.mp4" for n in ("missing", "corrupt", "short", "text", "tall", "alone")
    ), rejected
    assert rejected["clips/missing.mp4"].startswith("reference not found: refs/nope.mp4 (metadata.jsonl line 3)")
    assert rejected["clips/corrupt.mp4"].startswith("reference unreadable: refs/corrupt.mp4")
    assert rejected["clips/short.mp4"].startswith("reference too short: refs/short.mp4 gives 5 frame(s) at 24 fps")
    assert rejected["clips/short.mp4"].endswith("the target takes 9")
    assert rejected["clips/text.mp4"].startswith("reference not a supported media file: refs/notes.txt (.txt")
    assert rejected["clips/tall.mp4"].startswith("reference aspect differs: refs/tall.mp4 is 128x192")
    assert rejected["clips/alone.mp4"] == "no reference video (its 'reference' is empty or missing)"
    assert not list((full_size.cache / "samples").glob("missing-*"))


def test_a_rerun_after_a_reference_disappears_loses_nothing(specs: SimpleNamespace, tmp_path: Path) -> None:
    data = tmp_path / "data"
    rows = [
        {"path": target(data, "a.mp4"), "caption": "one", "reference": reference(data, "a.mp4")},
        {"path": target(data, "b.mp4"), "caption": "two", "reference": reference(data, "b.mp4")},
    ]
    write_pairs(data, rows)
    cache = tmp_path / "cache"
    assert run_preprocess(specs.full, data, cache).total_cached == 2
    before = {p.name: p.read_bytes() for p in (cache / "samples").iterdir()}
    (data / "refs" / "a.mp4").unlink()
    rows.append({"path": target(data, "c.mp4"), "caption": "three", "reference": "refs/a.mp4"})
    write_pairs(data, rows)
    report = run_preprocess(specs.full, data, cache)
    assert (report.already_cached, report.cached_now, report.total_cached) == (2, 0, 2)
    # both rows now name a missing reference; the pair cached before stays cached (and is reported), as a sample
    # whose caption file went missing does
    reasons = {r["source"]: r["reason"].split(":")[0] for r in report.rejected}
    assert reasons == {"clips/a.mp4": "reference not found", "clips/c.mp4": "reference not found"}
    assert sorted(manifest(cache)) == ["clips/a.mp4", "clips/b.mp4"]
    assert {p.name: p.read_bytes() for p in (cache / "samples").iterdir()} == before
    assert len(CacheDataset(cache)) == 2


# -- a downscaled reference ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def half_size(specs: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    data = tmp_path_factory.mktemp("half")
    rows = [
        # references at the target's size and at twice it: both are resized to cover 96x64
        {"path": target(data, "a.mp4"), "caption": "one", "reference": reference(data, "a.mp4")},
        {"path": target(data, "b.mp4"), "caption": "two", "reference": reference(data, "b.mp4", size=(384, 256))},
    ]
    write_pairs(data, rows)
    cache = data.parent / f"{data.name}-cache"
    return SimpleNamespace(data=data, cache=cache, report=run_preprocess(specs.half, data, cache), plan=specs.half)


def test_a_downscaled_reference_is_cached_at_its_own_grid(half_size: SimpleNamespace) -> None:
    records = manifest(half_size.cache)
    assert sorted(records) == ["clips/a.mp4", "clips/b.mp4"] and not half_size.report.rejected
    assert "at 1/2 of the target's size" in half_size.report.pairs
    for source, record in records.items():
        assert record["bucket"] == "192x128x9+ref96x64"
        assert record["pixel_shape"] == [9, 128, 192] and record["reference_pixel_shape"] == [9, 64, 96]
        assert record["latent_shape"] == [CHANNELS, 2, 4, 6] and record["reference_shape"] == [CHANNELS, 2, 2, 3]
        media = half_size.data / record["reference"]
        cached = Cache(half_size.cache).load_sample(record["id"])["reference_latents"]
        assert torch.equal(cached, oracle(half_size.plan, media, list(range(9)), (96, 64), SCALING)), source
    batch = next(iter(make_loader(CacheDataset(half_size.cache), 2, rank=0, world_size=1, seed=0)))
    assert batch["reference_latents"].shape == (2, CHANNELS, 2, 2, 3)


def test_a_resolution_whose_reference_breaks_the_rule_is_refused(specs: SimpleNamespace, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_video(data / "a.mp4", frames=12, fps=FPS, size=(160, 96))
    write_pairs(data, [{"path": "a.mp4", "caption": "x", "reference": "a.mp4"}])
    with pytest.raises(UserError, match=r"160x96 with the reference at 1/2 .* gives 80x48.* multiples of 64"):
        run_preprocess(specs.half, data, tmp_path / "cache", resolution="160x96")
    assert not (tmp_path / "cache").exists()  # refused before any work


def test_pairs_batch_only_with_the_same_reference_shape(tmp_path: Path) -> None:
    """The loader's buckets: one reference shape per batch, whatever the order."""
    cache = Cache(tmp_path)
    cache.open({"format": 1, "spec": {"name": "m", "hash": "h"}, "reference": {"downscale": 2}})
    cache.write_null({"embeds": torch.zeros(3, 4), "mask": torch.ones(3, dtype=torch.bool)})
    order = []
    for i in range(6):
        ref = [2, 1, 2, 3] if i % 2 else [2, 1, 1, 1]
        tensors = {"latents": torch.zeros(2, 1, 2, 2), "reference_latents": torch.full(ref, float(i)),
                   "text_embeds": torch.zeros(3, 4), "text_mask": torch.ones(3, dtype=torch.bool)}  # fmt: skip
        file = cache.write_sample(f"s{i}", tensors, {"id": f"s{i}"})
        bucket = "64x64x1+ref" + ("96x64" if i % 2 else "32x32")
        cache.append("w", {"id": f"s{i}", "bucket": bucket, "file": file, "reference_shape": ref})
        order.append(f"s{i}")
    cache.finalise(order, [])
    loader = iter(make_loader(CacheDataset(tmp_path), 3, rank=0, world_size=1, seed=0))
    for _ in range(4):
        batch = next(loader)
        assert len({tuple(b.shape) for b in batch["reference_latents"]}) == 1
        assert len({int(v) % 2 for v in batch["reference_latents"].flatten(1)[:, 0]}) == 1


# -- the task's call mapping --------------------------------------------------------------------------


def test_the_ic_lora_call_places_the_reference_as_the_pipeline_does(specs: SimpleNamespace) -> None:
    plan = specs.half
    task = plan.task("ic_lora")
    assert task.reference == "diffusers:LTX2InContextPipeline"
    (condition,) = task.conditions.values()
    assert (condition.input, condition.place, condition.keep, condition.loss) == ("video", "append", "blend", False)
    assert (condition.encode, condition.downscale) == ("mode", 2)
    components = plan.components()
    transformer = components["transformer"].eval()
    grid, ref_grid, batch = (2, 2, 4), (2, 1, 2), 2
    target_tokens, ref_tokens = 2 * 2 * 4, 2 * 1 * 2
    generator = torch.Generator().manual_seed(0)
    packed = torch.randn(batch, target_tokens + ref_tokens, CHANNELS, generator=generator)
    mask = torch.cat([torch.zeros(batch, target_tokens), torch.ones(batch, ref_tokens)], dim=1)
    conditions = TokenConditions(mask=mask, appended=ref_tokens, reference_grid=ref_grid, downscale=2)
    text = {"embeds": torch.randn(batch, 8, 32, generator=generator),
            "audio_embeds": torch.randn(batch, 8, 16, generator=generator),
            "mask": torch.ones(batch, 8, dtype=torch.bool)}  # fmt: skip
    adapter = Adapter(plan)
    env = adapter.environment(packed, torch.tensor([0.25, 0.75]), text, 24.0, grid=grid, conditions=conditions)
    kwargs = adapter.model_kwargs(env, call=task.call)
    # the pipeline's construction (pipeline_ltx2_ic_lora.py:1449-1460, 2208-2217)
    rope = transformer.rope
    theirs_ref = rope.prepare_video_coords(1, *ref_grid, torch.device("cpu"), fps=24.0)
    theirs_ref[:, 1, :, :] = theirs_ref[:, 1, :, :] * 2
    theirs_ref[:, 2, :, :] = theirs_ref[:, 2, :, :] * 2
    theirs = torch.cat(
        [rope.prepare_video_coords(batch, *grid, torch.device("cpu"), fps=24.0), theirs_ref.expand(batch, -1, -1, -1)],
        dim=2,
    )
    assert torch.equal(kwargs["video_coords"], theirs)
    t = torch.tensor([250.0, 750.0])
    assert torch.equal(kwargs["timestep"], t.unsqueeze(-1) * (1 - mask))  # ic:2245
    assert torch.equal(kwargs["sigma"], t) and torch.equal(kwargs["audio_timestep"], t)
    assert torch.equal(kwargs["audio_sigma"], t)
    with torch.no_grad():
        video, _ = adapter.run(transformer, kwargs)
    assert video.shape == (batch, target_tokens + ref_tokens, CHANNELS) and torch.isfinite(video).all()


# -- exports ------------------------------------------------------------------------------------------


def trained_lora(plan: Plan, out: Path, tasks: tuple[str, ...]) -> SimpleNamespace:
    """The plan's tiny transformer with a random non-zero LoRA, exported as a run training `tasks` would."""
    transformer = plan.components()["transformer"]
    config = lora_config(("to_q", "to_k", "to_v", "to_out.0"), 4, 8.0)
    add_lora(transformer, config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if ".lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    export = ExportSection(lora_diffusers=True, lora_comfyui=True)
    paths = export_trained(plan, transformer, config, export, out, is_main=True, tasks=tasks)
    return SimpleNamespace(transformer=transformer, state=lora_state_dict(transformer), paths=paths, out=out / LORA)


def metadata(path: str | Path) -> dict[str, str]:
    with safe_open(path, framework="pt") as handle:
        return dict(handle.metadata() or {})


@pytest.fixture(scope="module")
def ic_lora(specs: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    return trained_lora(specs.half, tmp_path_factory.mktemp("ic-export"), ("ic_lora",))


def test_an_ic_lora_export_carries_the_tasks_metadata(ic_lora: SimpleNamespace, specs: SimpleNamespace) -> None:
    assert Path(ic_lora.paths["lora_diffusers"]) == ic_lora.out / DIFFUSERS_LORA
    for kind in ("lora_diffusers", "lora_comfyui"):
        found = metadata(ic_lora.paths[kind])
        assert {key: found.get(key) for key in KEYS} == dict(zip(KEYS, ("2", "2", "1"), strict=True)), kind
    assert "lora_adapter_metadata" in metadata(ic_lora.paths["lora_diffusers"])  # diffusers' own is kept
    assert metadata(ic_lora.paths["lora_comfyui"])["ss_network_dim"] == "4"
    # the same state as an export without the task: only the metadata differs
    plain = trained_lora(specs.half, ic_lora.out.parent / "plain", ())
    for kind in ("lora_diffusers", "lora_comfyui"):
        assert not set(KEYS) & set(metadata(plain.paths[kind]))
        with safe_open(plain.paths[kind], framework="pt") as a, safe_open(ic_lora.paths[kind], framework="pt") as b:
            assert set(a.keys()) == set(b.keys())
            assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())  # noqa: SIM118


def test_trained_tasks_reads_the_run_configs_tasks() -> None:
    config = SimpleNamespace(
        tasks={"ic_lora": SimpleNamespace(probability=0.5), "i2v": SimpleNamespace(probability=0.0)}
    )
    assert trained_tasks(config) == ("ic_lora",)
    assert trained_tasks(SimpleNamespace(tasks={"i2v": {"probability": 0.2}, "ic_lora": {}})) == ("i2v",)
    assert trained_tasks(SimpleNamespace()) == ()  # a run config without a tasks section


@torch.no_grad()
def ltx2_forward(plan: Plan, transformer: torch.nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, CHANNELS, 2, 2, 3, generator=generator)
    text = {"embeds": torch.randn(1, 8, 32, generator=generator),
            "audio_embeds": torch.randn(1, 8, 16, generator=generator),
            "mask": torch.ones(1, 8, dtype=torch.bool)}  # fmt: skip
    adapter = Adapter(plan)
    return adapter.outputs(transformer.eval(), adapter.environment(latents, torch.tensor([0.5]), text, 24.0))[0]


def assert_loads(pipeline: Any, lora_dir: Path, expected: torch.Tensor, forward: Any) -> None:
    base = forward(pipeline.transformer)
    assert (expected - base).abs().max() > 1e-3  # the LoRA changes the output noticeably
    pipeline.load_lora_weights(lora_dir)
    (adapter,) = pipeline.transformer.peft_config.values()
    assert (adapter.r, adapter.lora_alpha) == (4, 8.0)
    assert (forward(pipeline.transformer) - expected).abs().max() <= 1e-5


def test_the_ic_lora_loads_into_ltx2_in_context_pipeline(ic_lora: SimpleNamespace, specs: SimpleNamespace) -> None:
    components = specs.half.components()
    pipeline = LTX2InContextPipeline(**{role: components[role] for role in components})
    forward = functools.partial(ltx2_forward, specs.half)
    assert_loads(pipeline, ic_lora.out, forward(ic_lora.transformer), forward)


@pytest.mark.parametrize("family", ["ltx-2.3", "ltx"])
def test_an_i2v_lora_loads_into_the_image_to_video_pipeline(family: str, tmp_path: Path) -> None:
    plan = compile_spec(load_spec(TINY_LTX2 if family == "ltx-2.3" else TINY_LTX))
    lora = trained_lora(plan, tmp_path, ("i2v",))
    for kind in ("lora_diffusers", "lora_comfyui"):
        assert not set(KEYS) & set(metadata(lora.paths[kind]))  # i2v writes no task metadata
    components = plan.components()
    cls = LTX2ImageToVideoPipeline if family == "ltx-2.3" else LTXImageToVideoPipeline
    pipeline = cls(**{role: components[role] for role in components})
    if family == "ltx-2.3":
        forward = functools.partial(ltx2_forward, plan)
    else:

        @torch.no_grad()
        def forward(transformer: torch.nn.Module) -> torch.Tensor:
            generator = torch.Generator().manual_seed(0)
            inputs = {"hidden_states": torch.randn(1, 6, CHANNELS, generator=generator),
                      "encoder_hidden_states": torch.randn(1, 5, 32, generator=generator),
                      "encoder_attention_mask": torch.ones(1, 5), "timestep": torch.tensor([500.0]),
                      "num_frames": 1, "height": 2, "width": 3}  # fmt: skip
            return transformer.eval()(**inputs, return_dict=False)[0]

    assert_loads(pipeline, lora.out, forward(lora.transformer), forward)


def test_the_task_metadata_uses_the_conditions_downscale(specs: SimpleNamespace) -> None:
    from ltxc.runner.export import task_metadata

    assert task_metadata(specs.full, ["ic_lora"]) == dict(zip(KEYS, ("1", "1", "1"), strict=True))
    assert task_metadata(specs.half, ["ic_lora", "i2v", "no-such-task"]) == dict(
        zip(KEYS, ("2", "2", "1"), strict=True)
    )
    assert task_metadata(specs.half, []) == {}
    # two trained tasks that disagree on a key are an error, not a silent pick
    other = attrs.evolve(specs.half.tasks["ic_lora"], name="other")
    cond = attrs.evolve(other.conditions["reference"], downscale=4)
    tasks = {**specs.half.tasks, "other": attrs.evolve(other, conditions={"reference": cond})}
    with pytest.raises(ValueError, match="reference_downscale_factor"):
        task_metadata(attrs.evolve(specs.half, tasks=tasks), ["ic_lora", "other"])


def test_discovery_reads_the_reference_column_of_jsonl_and_csv(tmp_path: Path) -> None:
    from ltxc.data.discover import discover

    for name in ("a.mp4", "b.mp4", "c.mp4", "ref.mp4"):
        (tmp_path / name).write_bytes(b"")  # discovery never opens the media
    (tmp_path / "metadata.csv").write_text(
        "path,caption,reference\na.mp4,one,ref.mp4\nb.mp4,two,\nc.mp4,three,gone.mp4\n", encoding="utf-8"
    )
    samples, rejected = discover(tmp_path)
    assert [(s.relpath, s.reference_relpath) for s in samples] == [("a.mp4", "ref.mp4"), ("b.mp4", "")]
    assert samples[0].reference == str(tmp_path / "ref.mp4") and samples[1].reference == ""
    assert [(r.source, r.reason) for r in rejected] == [
        ("c.mp4", "reference not found: gone.mp4 (metadata.csv line 4)")
    ]
    (tmp_path / "metadata.csv").unlink()
    write_pairs(tmp_path, [{"path": "a.mp4", "caption": "x", "reference": 7}, {"path": "b.mp4", "caption": "y"}])
    samples, rejected = discover(tmp_path)
    assert [s.relpath for s in samples] == ["b.mp4"] and samples[0].reference == ""
    assert [(r.source, r.reason) for r in rejected] == [("a.mp4", "reference is not a path (metadata.jsonl line 1)")]
    # another column (preprocess(reference_key=...)); the default one is then absent
    write_pairs(tmp_path, [{"path": "a.mp4", "caption": "x", "control": "ref.mp4"}])
    assert discover(tmp_path, reference_key="control")[0][0].reference_relpath == "ref.mp4"
    assert discover(tmp_path)[0][0].reference == ""
