"""The one training loop: sample σ, noise the cached latents, call the adapter, MSE, backward, clip, step."""

from __future__ import annotations

import hashlib
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from attrs import field, frozen
from tqdm import tqdm

from ltxc.adapter import Adapter, cfg_dropout, dropout_decisions
from ltxc.data.dataset import CacheDataset, text_of
from ltxc.data.loader import make_loader, restore_sampler
from ltxc.errors import UserError
from ltxc.flow import flow_loss, flow_target, loss_weights, noisy_latents, sample_sigmas
from ltxc.plan import Plan
from ltxc.processor import Processor
from ltxc.runner.checkpoint import latest_checkpoint, load_checkpoint, read_meta, save_checkpoint
from ltxc.runner.distributed import Distributed, all_reduce_mean, device_mesh, init_distributed
from ltxc.runner.export import export_trained
from ltxc.runner.lora import add_lora, lora_config
from ltxc.runner.metrics import MetricsLogger, peak_memory_mb, plot_loss_curve, sigma_bucket_losses
from ltxc.runner.optim import OptimSettings, make_optimizer, make_scheduler
from ltxc.runner.parallelize import parallelize
from ltxc.runner.validation import ValidationSettings, Validator

BIG_MODEL_PARAMS = 100_000_000  # "auto" activation checkpointing turns on above this size


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


@frozen
class TrainSettings:
    """Everything the loop needs, and nothing about where it came from (TOML, flags)."""

    run_dir: Path
    cache: Path
    mode: Literal["lora", "full"] = "lora"
    steps: int | None = 200
    epochs: int | None = None
    batch_size: int = 1
    grad_accum: int = 1
    grad_clip: float = 1.0
    cfg_dropout: float = 0.1
    seed: int = 0
    activation_checkpointing: Literal["auto", "on", "off"] = "auto"
    optim: OptimSettings = field(factory=OptimSettings)
    lora_rank: int = 32
    lora_alpha: float = 32.0
    lora_targets: tuple[str, ...] = ()
    checkpoint_every: int = 100
    keep: int = 3
    resume: str = "auto"
    log_every: int = 1
    jsonl: bool = True
    tensorboard: bool = True
    progress: bool = True
    replicate: int = 1
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    export_lora_diffusers: bool = True
    export_lora_comfyui: bool = True
    export_full: bool = True
    loader_workers: int = 0
    pin_memory: bool = True
    device: str | None = None
    stop_after: int | None = None  # stop (with a checkpoint) after this many steps of this invocation
    validation: ValidationSettings | None = None


@frozen
class TrainResult:
    """What a run did and where it left things."""

    steps_done: int
    total_steps: int
    losses: tuple[float, ...]
    checkpoint: Path | None
    exports: dict[str, str]
    loss_curve: Path | None
    seconds: float
    peak_memory_mb: float


def _sample_seed(*parts: int) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def build_model(
    plan: Plan, settings: TrainSettings, info: Distributed
) -> tuple[torch.nn.Module, Any, torch.dtype | None]:
    """The trainable transformer (fp32 master weights, frozen parts frozen, LoRA added, sharded), its LoRA
    config, and the dtype it computes in under mixed precision (None: float32 throughout)."""
    spec = plan.spec
    components = plan.components()
    model = components[spec.transformer.component]
    if any(p.dtype != torch.float32 for p in model.parameters()):
        model = model.to(torch.float32)  # master weights in fp32; FSDP's policy computes in bf16 on GPU
    model.requires_grad_(settings.mode == "full")
    config = None
    if settings.mode == "lora":
        targets = settings.lora_targets or spec.lora.targets
        config = lora_config(targets, settings.lora_rank, settings.lora_alpha, exclude=spec.parallel.frozen)
        with torch.random.fork_rng(devices=[]):  # the LoRA's random init comes from the run's seed alone
            torch.manual_seed(_sample_seed(settings.seed, -1))
            add_lora(model, config)
    for name, param in model.named_parameters():
        if any(part in name for part in spec.parallel.frozen):
            param.requires_grad_(False)  # e.g. branches the video-only objective never reaches
    cuda = info.device.type == "cuda"
    param_dtype = torch.bfloat16 if settings.precision == "bf16" or (settings.precision == "auto" and cuda) else None
    big = sum(p.numel() for p in model.parameters()) >= BIG_MODEL_PARAMS
    ac = settings.activation_checkpointing == "on" or (settings.activation_checkpointing == "auto" and big)
    model.to(info.device)
    parallelize(
        model,
        spec.parallel.blocks,
        device_mesh(info, settings.replicate),
        param_dtype=param_dtype,
        activation_checkpointing=ac,
    )
    model.train()
    local, total = _parameter_bytes(model)
    print(f"rank {info.rank}/{info.world_size}: holds {local / 2**20:.2f} MiB of {total / 2**20:.2f} MiB of "
          f"transformer parameters", file=sys.stderr)  # fmt: skip
    return model, config, param_dtype


def _parameter_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """(bytes of parameters this rank holds, bytes of the whole model) — sharding at a glance."""
    local = total = 0
    for param in model.parameters():
        shard = param.to_local() if hasattr(param, "to_local") else param
        local += shard.numel() * shard.element_size()
        total += param.numel() * param.element_size()
    return local, total


def train(plan: Plan, settings: TrainSettings) -> TrainResult:
    """Train `plan` on the cache in `settings`; resumable; the same code for 1 CPU or N GPUs."""
    with warnings.catch_warnings():
        # FSDP2 warns that a root output is a view; the loop never modifies outputs in place.
        warnings.filterwarnings("ignore", message=".*returned a view tensor.*", category=UserWarning)
        return _train(plan, settings)


def _train(plan: Plan, settings: TrainSettings) -> TrainResult:
    began = time.monotonic()
    info = init_distributed(settings.device)
    dataset = CacheDataset(settings.cache)
    cached_hash = dataset.header.get("spec", {}).get("hash")
    if cached_hash != plan.hash:
        raise UserError(
            f"{settings.cache}: the cache was made with another spec (hash {str(cached_hash)[:12]}, this plan is "
            f"{plan.hash[:12]}); preprocess again with this plan, or train with the plan that made it"
        )
    fps = float(dataset.header["settings"]["fps"])
    null = text_of(dataset.null_conditioning())
    text_stage = (
        Processor(plan, plan.components(), info.device)
        if plan.spec.text.stage is not None and plan.spec.text.cache == "before_stage"
        else None
    )
    if text_stage is not None:  # "no text" is the final conditioning, as the sampler's negative branch sees it
        null = text_stage.apply_stage({name: tensor[None].to(info.device) for name, tensor in null.items()})
        null = {name: tensor[0] for name, tensor in null.items()}
        if plan.spec.text.null_conditioning == "zeros":
            null = {name: torch.zeros_like(tensor) for name, tensor in null.items()}
    null = {name: tensor.to(info.device) for name, tensor in null.items()}
    loader = make_loader(
        dataset,
        settings.batch_size,
        rank=info.rank,
        world_size=info.world_size,
        seed=settings.seed,
        workers=settings.loader_workers,
        pin_memory=settings.pin_memory,
    )
    sampler = loader.batch_sampler
    per_epoch = math.ceil(sampler.batches_per_epoch / settings.grad_accum)
    total = settings.steps if settings.steps is not None else (settings.epochs or 1) * per_epoch

    model, lora, compute_dtype = build_model(plan, settings, info)
    optimizer = make_optimizer(model.parameters(), settings.optim, info.device)
    scheduler = make_scheduler(optimizer, total, settings.optim)
    trainable_only = settings.mode == "lora"

    start = 0
    resume_from = _resume_path(settings)
    if resume_from is not None:
        _check_resumable(resume_from, settings, plan)  # before loading: a mismatch would fail as a missing key
        meta = load_checkpoint(resume_from, model, optimizer, scheduler, trainable_only=trainable_only)
        start = int(meta["step"])
        saved_batch = meta.get("global_batch")
        now_batch = settings.batch_size * settings.grad_accum * info.world_size
        saved_accum = int(meta.get("grad_accum", settings.grad_accum))  # the sampler cuts batch size x ranks
        if (saved_batch is not None and int(saved_batch) != now_batch) or saved_accum != settings.grad_accum:
            raise UserError(
                f"{resume_from} was trained with a global batch of {saved_batch} (batch size x grad_accum x ranks, "
                f"grad_accum {saved_accum}), this run has {now_batch} (grad_accum {settings.grad_accum}): the data "
                "order would not continue; keep batch size x ranks and train.grad_accum (e.g. 2 ranks x batch 1 = "
                "1 rank x batch 2) or start a new run with --resume never"
            )
        if info.is_main:
            print(f"resumed from {resume_from} at step {start}", file=sys.stderr)
    # The data position is a function of the step alone (global batches, identical on every layout), so a
    # run resumes at the exact next batch whatever the number of ranks.
    restore_sampler(loader, _position(start * settings.grad_accum, sampler.batches_per_epoch))

    validator = (
        Validator(plan, settings.validation, info, settings.run_dir, compute_dtype, fps)
        if (settings.validation is not None and settings.validation.prompts)
        else None
    )
    adapter = Adapter(plan)
    global_batch = settings.batch_size * settings.grad_accum * info.world_size
    logger = MetricsLogger(settings.run_dir, jsonl=settings.jsonl, tensorboard=settings.tensorboard,
                           enabled=info.is_main)  # fmt: skip
    losses: list[float] = []
    last_checkpoint = resume_from  # the last good state, also when it lies in another run directory
    end = total if settings.stop_after is None else min(total, start + settings.stop_after)
    bar = tqdm(total=total, initial=start, desc="train", unit="step", file=sys.stderr,
               disable=not (settings.progress and info.is_main) or None)  # fmt: skip
    batches = iter(loader)
    wait = compute = 0.0
    step_began = time.monotonic()
    logged = start  # the step of the last metrics record: samples/s covers the steps since
    for step in range(start, end):
        torch.manual_seed(_sample_seed(settings.seed, step, info.rank))  # any global-RNG use is reproducible too
        optimizer.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), device=info.device)
        sigmas, per_sample = [], []
        for micro in range(settings.grad_accum):
            t0 = time.monotonic()
            batch = next(batches)
            t1 = time.monotonic()
            x0 = batch["latents"].to(info.device, torch.float32, non_blocking=True)
            b = x0.shape[0]
            tokens = math.prod(x0.shape[2:])  # latent F*H*W: the sequence length the reference sampler shifts by
            # per-sample randomness keyed by (seed, step, micro, global position): identical however the
            # global batch is split across ranks, and across a resume
            first = info.rank * b
            gens = [torch.Generator().manual_seed(_sample_seed(settings.seed, step, micro, first + i))
                    for i in range(b)]  # fmt: skip
            sigma = torch.cat([sample_sigmas(plan.spec.flow, 1, tokens, g) for g in gens]).to(info.device)
            noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in gens]).to(info.device)
            drop = dropout_decisions(gens, settings.cfg_dropout)
            text = {name: tensor.to(info.device) for name, tensor in text_of(batch).items()}
            if text_stage is not None:  # the cache stops before the (frozen) text stage: run it here
                text = text_stage.apply_stage(text)
            text = cfg_dropout(text, null, drop)
            prediction = adapter.predict(
                model,
                noisy_latents(x0, noise, sigma),
                sigma,
                text,
                fps,
                compute_dtype=compute_dtype,  # the root does not cast its inputs (the timestep stays fp32)
            )
            weights = loss_weights(plan.loss_weight, sigma, plan.constants)
            loss, sample_losses = flow_loss(prediction, flow_target(x0, noise), weights)
            (loss / settings.grad_accum).backward()  # each backward() sums grads, so normalise here
            step_loss += loss.detach() / settings.grad_accum
            sigmas.append(sigma.detach())
            per_sample.append(sample_losses.detach())
            wait += t1 - t0
            compute += time.monotonic() - t1
        grad_norm = _clip(model, settings.grad_clip)
        global_loss = all_reduce_mean(step_loss).item()
        if not math.isfinite(global_loss):
            bar.close()
            logger.close()  # flush and close the sinks (and TensorBoard's thread) before the run stops
            where = f"last good checkpoint: {last_checkpoint}" if last_checkpoint else "no checkpoint was saved yet"
            raise TrainingDiverged(f"loss is {global_loss} at step {step + 1}; stopping ({where}); lower the LR?")
        lr = scheduler.get_last_lr()[0]  # the LR this step uses, read before the schedule moves on
        optimizer.step()
        scheduler.step()
        losses.append(global_loss)
        done = step + 1
        if info.is_main and (done % settings.log_every == 0 or done == end):
            elapsed = time.monotonic() - step_began
            values = {
                "loss": global_loss,
                "grad_norm": grad_norm,
                "lr": lr,
                "samples_per_s": global_batch * (done - logged) / max(elapsed, 1e-9),
                "data_wait_fraction": wait / max(wait + compute, 1e-9),
                "peak_memory_mb": peak_memory_mb(info.device),
                **sigma_bucket_losses(torch.cat(sigmas).cpu(), torch.cat(per_sample).cpu()),
            }
            logger.log(done, values)
            bar.set_postfix(loss=f"{global_loss:.4f}", lr=f"{values['lr']:.2e}",
                            samples_s=f"{values['samples_per_s']:.1f}", refresh=False)  # fmt: skip
            wait = compute = 0.0
            step_began = time.monotonic()
            logged = done
        bar.update(1)
        if validator is not None and validator.due(done, done == total):
            validator.run(model, done, logger)
        if settings.checkpoint_every and done % settings.checkpoint_every == 0 and done != end:
            last_checkpoint = _save(settings, done, model, optimizer, scheduler, trainable_only, info, total, plan.hash)
    bar.close()
    checkpoint = last_checkpoint
    if end > start:
        checkpoint = _save(settings, end, model, optimizer, scheduler, trainable_only, info, total, plan.hash)
    exports: dict[str, str] = {}
    if end == total and end > start:
        exports = export_trained(plan, model, lora, settings, info)
    logger.close()
    curve = None
    if info.is_main and (settings.run_dir / "metrics.jsonl").exists():
        curve = plot_loss_curve(settings.run_dir / "metrics.jsonl", settings.run_dir / "loss.png")
    return TrainResult(
        steps_done=end - start,
        total_steps=total,
        losses=tuple(losses),
        checkpoint=checkpoint,
        exports=exports,
        loss_curve=curve,
        seconds=time.monotonic() - began,
        peak_memory_mb=peak_memory_mb(info.device),
    )


def _position(consumed: int, per_epoch: int) -> dict[str, int]:
    epoch, position = divmod(consumed, per_epoch)
    return {"epoch": epoch, "position": position}


def _resume_path(settings: TrainSettings) -> Path | None:
    if settings.resume == "never":
        return None
    if settings.resume == "auto":
        return latest_checkpoint(settings.run_dir)
    path = Path(settings.resume)
    if (path / "checkpoints").is_dir():  # a run directory: its latest checkpoint
        found = latest_checkpoint(path)
        if found is None:
            raise UserError(f"--resume {path}: that run has no complete checkpoint")
        return found
    if not path.is_dir():
        raise UserError(f"--resume {path}: no such checkpoint directory")
    return path


def _clip(model: torch.nn.Module, max_norm: float) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # a DTensor under FSDP2
    return float(norm)


def _check_resumable(path: Path, settings: TrainSettings, plan: Plan) -> None:
    """Refuse a checkpoint of the other training mode; warn about one from another version of the spec."""
    meta = read_meta(path)
    fresh = "pass --resume never (or another run.name) to start a new run"
    if meta.get("mode", settings.mode) != settings.mode:
        raise UserError(
            f"{path} is a {meta['mode']} checkpoint and this run trains {settings.mode}: {fresh}, "
            f"or set train.mode={meta['mode']} to continue it"
        )
    if meta.get("spec_hash", plan.hash) != plan.hash:  # a spec edited mid-run (a loss weight, a default) is legal
        print(
            f"warning: {path} was trained from another version of the spec (plan hash "
            f"{str(meta['spec_hash'])[:12]}, this plan is {plan.hash[:12]}); continuing with this plan",
            file=sys.stderr,
        )


def _save(
    settings: TrainSettings, step: int, model: Any, optimizer: Any, scheduler: Any, trainable_only: bool,
    info: Distributed, total: int, spec_hash: str,
) -> Path:  # fmt: skip
    meta = {"total_steps": total, "mode": settings.mode, "seed": settings.seed, "spec_hash": spec_hash,
            "global_batch": settings.batch_size * settings.grad_accum * info.world_size,
            "grad_accum": settings.grad_accum}  # fmt: skip
    return save_checkpoint(settings.run_dir, step, model, optimizer, scheduler, meta, keep=settings.keep,
                           trainable_only=trainable_only, dist_info=info)  # fmt: skip
