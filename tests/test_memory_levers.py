"""The one-GPU memory levers, on the tiny LTX-Video spec in one process on the CPU.

Covers:
- block swapping (`train.block_swap`): LoRA losses and final adapter weights bit-identical to no swapping over a
  few steps, without activation checkpointing on the as-loaded base and with it on an NF4 base; the hooks move
  each swapped block in once per forward and
  once per backward; afterwards the swapped frozen weights point at their CPU home copies again; the refusals
  (full fine-tune, more blocks than the model has, with CPU offload);
- the fused optimiser step (`train.fused_optimizer_step`): a full fine-tune's losses and final weights bit-equal to
  a normal run with grad_clip = 0 (AdamW per tensor on the CPU); no `.grad` held after the backward; its logged
  grad norm equal to the normal one within 1e-6 relative; the refusals (clipping, accumulation);
- FSDP2 CPU offload (`parallel.cpu_offload`): one gloo process trains and its parameters stay CPU DTensors;
- validation: the prompts are encoded at set-up and the text encoder is freed (not built, garbage-collected),
  and the sampled frames equal a fresh sampler's;
- `tools/gpu_bench.py --device cpu` on the tiny spec (meta device, `to_empty`, init, two steps) prints its table.

Run: `pytest -q tests/test_memory_levers.py` (CPU, tiny random weights; ~30 s on 2 cores).
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest
import torch
from conftest import ROOT, TINY_LTX

from ltxc.errors import UserError
from ltxc.media.synthetic import make_sample_dataset
from ltxc.plan import Plan
from ltxc.preprocess.run import preprocess
from ltxc.preprocess.settings import build_settings
from ltxc.runner import model as model_module
from ltxc.runner.block_swap import BlockSwap, block_swap_of
from ltxc.runner.config import (
    CheckpointSection,
    DataSection,
    ExportSection,
    LogSection,
    LoraSection,
    OptimizerSection,
    RunConfig,
    RunSection,
    TrainSection,
    ValidationSection,
)
from ltxc.runner.metrics import read_metrics
from ltxc.runner.train import train

pytestmark = pytest.mark.usefixtures("module_process_group")


@pytest.fixture(scope="module")
def cache(plan: Plan, tmp_path_factory: pytest.TempPathFactory) -> Path:
    media = tmp_path_factory.mktemp("media")
    make_sample_dataset(media, clips=2, images=0, seed=0)
    cache = tmp_path_factory.mktemp("cache") / "cache"
    assert preprocess(plan, media, cache, build_settings(plan), progress=False).total_cached == 2
    return cache


def config(run_dir: Path, cache: Path, **sections: dict[str, Any]) -> RunConfig:
    """3 quiet LoRA steps (rank 4) at lr 1e-3, no checkpoints in between, no exports."""
    base = RunConfig(
        run=RunSection(output=str(run_dir)),
        data=DataSection(cache=str(cache), pin_memory=False),
        train=TrainSection(mode="lora", steps=3),
        lora=LoraSection(rank=4, alpha=8.0),
        optimizer=OptimizerSection(lr=1e-3),
        checkpoint=CheckpointSection(every=0),
        log=LogSection(progress=False, tensorboard=False),
        export=ExportSection(lora_diffusers=False, lora_comfyui=False, full=False),
    )
    return attrs.evolve(base, **{name: attrs.evolve(getattr(base, name), **keys) for name, keys in sections.items()})


def trained(plan: Plan, cfg: RunConfig, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, torch.nn.Module]:
    """(the TrainResult, the live model at the end) of `cfg`."""
    built: list[torch.nn.Module] = []
    original = model_module.build_model

    def capture(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        built.append(result[0])
        return result

    with monkeypatch.context() as patch:
        patch.setattr("ltxc.runner.train.build_model", capture)
        result = train(plan, cfg)
    return result, built[0]


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


# -- block swapping ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("checkpointing", "base"), [("off", "as_loaded"), ("on", "nf4")])
def test_block_swap_is_exact_and_streams(plan: Plan, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         checkpointing: str, base: str) -> None:  # fmt: skip
    keys = {"steps": 3, "activation_checkpointing": checkpointing, "base": base}
    plain, plain_model = trained(plan, config(tmp_path / "a", cache, train=keys), monkeypatch)
    swapped, model = trained(plan, config(tmp_path / "b", cache, train={**keys, "block_swap": 2}), monkeypatch)
    assert swapped.losses == plain.losses  # bit for bit
    a, b = trainable_state(plain_model), trainable_state(model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    swap = block_swap_of(model)
    assert isinstance(swap, BlockSwap) and len(swap.swapped) == 2 and swap.swapped_bytes > 0
    assert swap.moves_in == 3 * 2 * 2  # 3 steps x 2 blocks x (forward + backward)
    for entries in swap.home.values():  # every swapped frozen tensor is its CPU home copy again
        for owner, name, home in entries:
            current = owner._parameters[name].data if name in owner._parameters else owner._buffers[name]
            assert current is home or current.data_ptr() == home.data_ptr()
    assert all(p.device.type == "cpu" for block in swap.swapped for p in block.parameters())


@pytest.mark.parametrize("checkpointing", [False, True])
def test_block_swap_backward_reads_the_weights_again(checkpointing: bool) -> None:
    """The backward does not keep the forward's device copies: it rebuilds what it saved from the weights as they
    are when it runs (changed here in their CPU home between forward and backward, which must show in the
    gradient), and without the change it equals no swapping bit for bit."""
    from ltxc.runner.parallelize import checkpoint_block

    def grad(swapped: int, perturb: bool) -> tuple[torch.Tensor, int]:
        torch.manual_seed(0)
        model = torch.nn.Module()
        model.blocks = torch.nn.ModuleList(
            [torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU(), torch.nn.LayerNorm(8), torch.nn.Linear(8, 8))
             for _ in range(3)]
        ).requires_grad_(False)  # fmt: skip
        model.head = torch.nn.Linear(8, 1)
        for block in model.blocks if checkpointing else ():
            checkpoint_block(block)
        swap = BlockSwap(list(model.blocks), swapped, torch.device("cpu"))
        swap.place(model)
        swap.install()
        x = torch.randn(4, 8, requires_grad=True)
        h = x
        for block in model.blocks:
            h = block(h)
        loss = model.head(h).sum()
        for entries in swap.home.values() if perturb else ():
            for _, _, home in entries:
                home.add_(1.0)
        loss.backward()
        swap.settle()
        return x.grad, swap.moves_in

    (swapped, moves), (plain, _) = grad(2, False), grad(0, False)
    assert torch.equal(swapped, plain) and moves == 4
    assert not torch.equal(grad(2, True)[0], swapped)


def test_block_swap_refusals(plan: Plan, cache: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"train\.mode = 'lora' only"):
        train(plan, config(tmp_path / "a", cache, train={"mode": "full", "block_swap": 1}))
    with pytest.raises(UserError, match="both move weights"):
        train(plan, config(tmp_path / "b", cache, train={"block_swap": 1}, parallel={"cpu_offload": True}))
    with pytest.raises(UserError, match="the model has 2 blocks"):
        train(plan, config(tmp_path / "c", cache, train={"block_swap": 3}))


# -- fused optimiser step ----------------------------------------------------------------------------------------


def test_fused_step_equals_normal_step(
    plan: Plan, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = {"mode": "full", "steps": 3, "grad_clip": 0.0}
    normal, normal_model = trained(plan, config(tmp_path / "a", cache, train=keys), monkeypatch)
    fused, model = trained(plan, config(tmp_path / "b", cache, train={**keys, "fused_optimizer_step": True}),
                           monkeypatch)  # fmt: skip
    assert fused.losses == normal.losses
    a, b = trainable_state(normal_model), trainable_state(model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-equal: AdamW per tensor on CPU
    assert all(p.grad is None for p in model.parameters())  # every gradient freed inside the backward
    assert any(p.grad is not None for p in normal_model.parameters())
    norms = [[r["grad_norm"] for r in read_metrics(d / "metrics.jsonl")] for d in (tmp_path / "a", tmp_path / "b")]
    assert len(norms[0]) == 3 and norms[1] == pytest.approx(norms[0], rel=1e-6)


def test_fused_step_refusals(plan: Plan, cache: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="grad_clip = 0"):
        train(plan, config(tmp_path / "a", cache, train={"fused_optimizer_step": True, "grad_clip": 1.0}))
    with pytest.raises(UserError, match="cannot go together"):
        train(plan, config(tmp_path / "c", cache, train={"fused_optimizer_step": True, "grad_clip": 0.0},
                           parallel={"cpu_offload": True}))  # fmt: skip
    with pytest.raises(UserError, match="grad_accum = 1"):
        train(plan, config(tmp_path / "b", cache, train={"fused_optimizer_step": True, "grad_clip": 0.0,
                                                         "grad_accum": 2}))  # fmt: skip


# -- FSDP2 CPU offload -------------------------------------------------------------------------------------------


def test_cpu_offload_trains_with_parameters_on_cpu(plan: Plan, cache: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule
    from torch.distributed.tensor import DTensor

    result, model = trained(plan, config(tmp_path, cache, train={"steps": 2}, parallel={"cpu_offload": True}),
                            monkeypatch)  # fmt: skip
    assert len(result.losses) == 2 and all(map(torch.isfinite, torch.tensor(result.losses)))
    assert isinstance(model, FSDPModule)
    assert isinstance(model._get_fsdp_state()._fsdp_param_group.offload_policy, CPUOffloadPolicy)
    params = list(model.parameters())
    assert params and all(isinstance(p, DTensor) and p.to_local().device.type == "cpu" for p in params)


# -- validation --------------------------------------------------------------------------------------------------


def test_validation_encodes_once_and_frees_the_text_encoder(plan: Plan, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from ltxc.processor import Processor
    from ltxc.runner.distributed import Distributed
    from ltxc.runner.run_dir import RunDir
    from ltxc.runner.validation import Validator
    from ltxc.sampler import Sampler

    validation = ValidationSection(prompts=("a red ball", "waves"), negative_prompt="blurry", steps=2, guidance=3.0)
    info = Distributed(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    cfg = attrs.evolve(config(tmp_path, tmp_path), validation=validation)
    freed: list[weakref.ref[Any]] = []
    original = Processor.free_text

    def free_text(self: Processor) -> None:
        freed.append(weakref.ref(self._text_modules()[1]))  # the encoder, just before it is freed
        original(self)

    monkeypatch.setattr(Processor, "free_text", free_text)
    validator = Validator(plan, cfg.validation, info, RunDir.of(cfg), None, 25.0)
    role = plan.text.encoder
    assert not validator.components.is_built(role) and validator.sampler.processor._text is None
    assert set(validator.sampler.encoded) == {("a red ball",), ("waves",), ("blurry",)}
    gc.collect()
    assert len(freed) == 1 and freed[0]() is None  # nothing holds the text encoder any more
    transformer = plan.components()[plan.transformer_role]
    validator.sampler._transformer = transformer
    kwargs = {"negative_prompt": "blurry", "steps": 2, "guidance": 3.0, "fps": 25.0, "seed": validation.seed}
    ours = validator.sampler(["waves"], **kwargs)
    assert not validator.components.is_built(role)  # sampling used the encoded text, not a rebuilt encoder
    today = Sampler(plan, plan.components(), transformer=transformer)(["waves"], **kwargs)
    assert torch.equal(ours.video, today.video)


class SheetRecorder:
    """Stands in for the metrics logger's TensorBoard sink: records each logged image by (tag, step)."""

    def __init__(self) -> None:
        self.images: dict[tuple[str, int], Any] = {}

    def log_image(self, tag: str, image: Any, step: int) -> None:
        self.images[(tag, step)] = image


def test_validation_decodes_in_the_background_what_it_decodes_in_line(plan: Plan, tmp_path: Path) -> None:
    """`validation.decode = "background"`: the VAE never reaches the training device (the sampler's processor never
    builds it), a validation returns before its decode is done (it gives back the previous one's files), the end of
    training waits for the last, and the frames, files and TensorBoard sheets equal the in-line decode's."""
    from ltxc.runner.distributed import Distributed
    from ltxc.runner.run_dir import RunDir
    from ltxc.runner.validation import Validator

    info = Distributed(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    transformer = plan.components()[plan.transformer_role]
    recorded, files = {}, {}
    for mode in ("device", "background"):
        validation = ValidationSection(prompts=("waves", "a red ball"), steps=2, guidance=3.0, decode=mode)
        cfg = attrs.evolve(config(tmp_path / mode, tmp_path), validation=validation)
        validator = Validator(plan, cfg.validation, info, RunDir.of(cfg), None, 25.0)
        recorder = SheetRecorder()
        returned = [validator.run(transformer, step, recorder) for step in (1, 2)]  # type: ignore[arg-type]
        returned.append(validator.finish(recorder))  # type: ignore[arg-type]
        recorded[mode], files[mode] = recorder.images, returned
        if mode == "background":
            assert validator.sampler.processor._vae is None  # decoded on the CPU copy, never the device's
    names = [
        [path.relative_to(tmp_path / mode).as_posix() for path in paths]
        for mode in ("device",)
        for paths in files[mode]
    ]
    background = [
        [path.relative_to(tmp_path / "background").as_posix() for path in paths] for paths in files["background"]
    ]
    assert background == [[], names[0], names[1]]  # each validation hands back the previous one's files
    assert names[2] == [] and len(names[0]) == 4
    assert (
        recorded["device"].keys()
        == recorded["background"].keys()
        == {(f"validation/prompt-{i}", step) for i in (0, 1) for step in (1, 2)}
    )
    for key, sheet in recorded["device"].items():
        assert np.array_equal(sheet, recorded["background"][key]), key


# -- preprocessing: one large component at a time ------------------------------------------------------------


def test_preprocess_frees_the_text_encoder_before_the_vae(plan: Plan, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from ltxc.components import ComponentRecipe
    from ltxc.preprocess.run import format_report

    encoders: list[weakref.ref[Any]] = []
    checked: list[bool] = []
    build = ComponentRecipe.build

    def recording(self: ComponentRecipe) -> Any:
        if self.role == plan.latent.vae:
            gc.collect()
            checked.append(bool(encoders) and all(ref() is None for ref in encoders))
        built = build(self)
        if self.role == plan.text.encoder:
            encoders.append(weakref.ref(built))
        return built

    monkeypatch.setattr(ComponentRecipe, "build", recording)
    media = tmp_path / "media"
    make_sample_dataset(media, clips=2, images=0, seed=1)
    report = preprocess(plan, media, tmp_path / "cache", build_settings(plan), progress=False)
    assert report.total_cached == 2
    assert checked == [True]  # the VAE was built once, after every text encoder was gone
    assert not (tmp_path / "cache" / "staging").exists()
    assert "MiB RSS" in report.peak and "peak" in format_report(report, tmp_path / "cache")


# -- tools/gpu_bench.py ------------------------------------------------------------------------------------------


def test_gpu_bench_runs_on_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    """The tool, in-process (a cold interpreter would cost seconds and check nothing more)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "tools" / "gpu_bench.py")
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tool.main(["--spec", str(TINY_LTX), "--device", "cpu", "--steps", "2", "--size", "64x32x9", "--mode", "lora",
               "--block-swap", "1"])  # fmt: skip
    result = capsys.readouterr()
    assert "s/step" in result.out and "peak GiB" in result.out
