"""Run preprocessing: discover, split the work (ranks, workers), encode, journal, finalise, summarise."""

from __future__ import annotations

import os
import re
import resource
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_all_start_methods, get_context
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

import torch
from attrs import frozen
from tqdm import tqdm

from ltxc.audio import audio_stream
from ltxc.data.cache import CACHE_FORMAT, Cache
from ltxc.data.discover import Sample, discover
from ltxc.plan import Plan
from ltxc.preprocess.audio import AUDIO_MASK, AUDIO_TENSOR
from ltxc.preprocess.job import Outcome, process
from ltxc.preprocess.pairs import REFERENCE_KEY, REFERENCE_TENSOR, Pairing, check_sizes, describe_pairs, pairing_for
from ltxc.preprocess.settings import PreprocessSettings
from ltxc.preprocess.staging import clear_staging, is_staged, stage_text, staged_text, unstage
from ltxc.processor import Processor


@frozen
class Report:
    """What a preprocessing run did."""

    cached_now: int
    already_cached: int
    total_cached: int
    rejected: tuple[dict[str, Any], ...]
    buckets: dict[str, int]
    repeated_clips: int
    padded_clips: int
    seconds: float
    peak: str = ""  # this process's (and its workers') peak memory, as the report prints it
    pairs: str = ""  # what became of the dataset's reference column ("" when it has none)


def cache_header(plan: Plan, settings: PreprocessSettings, pairing: Pairing | None = None) -> dict[str, Any]:
    """`cache.json`: what a reader needs to trust (or refuse) this cache. A cache of pairs says so in `reference`
    (absent otherwise, so a cache without pairs reads as it always has)."""
    header: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "spec": {"name": plan.name, "hash": plan.hash},
        "settings": settings.to_json(),
        "null_conditioning": "null.safetensors",
        "tensors": {
            "latents": "normalised latents [C, F, H, W], float32",
            **{f"text_{name}": f"text conditioning {name!r} {_text_shape(plan, name)}" for name in plan.text_names},
        },
    }
    audio = audio_stream(plan)
    if audio is not None:  # absent without an audio source, so such a cache reads as it always has
        header["audio"] = {"stream": audio[0], "missing_audio": settings.missing_audio or "mask"}
        header["tensors"][AUDIO_TENSOR] = "the sound's latents [L, C * M], packed, normalised, float32"
        header["tensors"][AUDIO_MASK] = "1: the clip's sound; 0: none (zeros, --missing-audio mask), float32 []"
    if pairing is not None:
        header["reference"] = pairing.to_json()
        header["tensors"][REFERENCE_TENSOR] = "reference video latents [C, F, H / d, W / d], normalised, float32"
    return header


def _text_shape(plan: Plan, name: str) -> str:
    """A text tensor's per-sample shape: a pooled encoder's output is one vector, the others a sequence."""
    encoder = (plan.spec.text.encoders or {}).get(name)
    return "[D]" if encoder is not None and encoder.output == "pooled" else "[L, ...]"


def _rank_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _barrier(world: int) -> None:
    """Wait for every torchrun rank (gloo, so it works without GPUs)."""
    if world <= 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():  # a training run may have joined the group already (NCCL on GPUs)
        dist.init_process_group("gloo")
    dist.barrier()


def preprocess(
    plan: Plan,
    data: Path,
    cache_dir: Path,
    settings: PreprocessSettings,
    *,
    metadata: Path | None = None,
    path_key: str = "path",
    caption_key: str = "caption",
    reference_key: str = REFERENCE_KEY,
    workers: int = 1,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
) -> Report:
    """Preprocess `data` into `cache_dir`; resumable; deterministic whatever the worker or rank count. With a
    reference column and a task that appends a video, each sample's reference is cached beside it (`pairs.py`)."""
    began = time.monotonic()
    rank, world = _rank_world()
    samples, discovery_rejects = discover(
        data,
        metadata=metadata,
        path_key=path_key,
        caption_key=caption_key,
        missing_caption=settings.missing_caption,
        reference_key=reference_key,
    )
    pairing = pairing_for(plan, samples, reference_key)
    if pairing is not None:
        check_sizes(pairing, settings, plan.geometry)
    cache = Cache(cache_dir)
    if rank == 0:
        cache.open(cache_header(plan, settings, pairing), overwrite=overwrite)
        cache.clear_rejected_journals()
    _barrier(world)
    done = cache.records()
    mine = [s for s in samples[rank::world] if s.id not in done]
    if rank == 0 and not (cache.root / "null.safetensors").exists():
        _write_null(plan, cache, device)
    _cache_samples(plan, mine, settings, pairing, cache, f"rank{rank}", (workers, device), progress)
    _barrier(world)
    rejected = [{"source": r.source, "reason": r.reason} for r in discovery_rejects]
    if rank == 0:
        manifest = cache.finalise([s.id for s in samples], rejected)
        clear_staging(cache)
    _barrier(world)
    if rank != 0:
        manifest = cache.manifest()
    all_rejected = tuple(cache.rejected())
    return Report(
        cached_now=len(manifest) - len(done),  # every rank's new samples, not just this rank's
        already_cached=len(done),
        total_cached=len(manifest),
        rejected=all_rejected,
        buckets=dict(sorted(Counter(r["bucket"] for r in manifest).items())),
        repeated_clips=sum(1 for r in manifest if r.get("repeated")),
        padded_clips=sum(1 for r in manifest if r.get("padded")),
        seconds=time.monotonic() - began,
        peak=peak_memory(device),
        pairs=describe_pairs(plan, samples, pairing, reference_key),
    )


def _write_null(plan: Plan, cache: Cache, device: str) -> None:
    """Encode and store the null conditioning (what "no text" is for CFG dropout)."""
    previous = torch.get_num_threads()
    _deterministic_kernels()  # as every caption is encoded: the null must not depend on the thread count
    try:
        processor = Processor(plan, plan.components(), device)
        cache.write_null({name: tensor[0] for name, tensor in processor.null_conditioning().items()})
    finally:
        torch.set_num_threads(previous)


def _cache_samples(
    plan: Plan,
    samples: Sequence[Sample],
    settings: PreprocessSettings,
    pairing: Pairing | None,
    cache: Cache,
    writer: str,
    workers_device: tuple[int, str],
    progress: bool,
) -> None:
    """Encode this rank's samples, appending each record (or rejection) to its journal as it comes."""
    bar = tqdm(total=len(samples), unit="clip", desc="preprocess", disable=not progress or None, file=sys.stderr)
    cached_now = 0
    for outcome in _outcomes(plan, samples, settings, pairing, cache, *workers_device):
        if outcome.record is not None:
            cache.append(writer, outcome.record)
            cached_now += 1
        else:
            assert outcome.rejected is not None
            cache.append_rejected(writer, outcome.rejected)
        bar.update(1)
        bar.set_postfix(cached=cached_now, rejected=bar.n - cached_now, refresh=False)
    bar.close()


def _outcomes(
    plan: Plan,
    samples: Sequence[Sample],
    settings: PreprocessSettings,
    pairing: Pairing | None,
    cache: Cache,
    workers: int,
    device: str,
) -> Iterator[Outcome]:
    """Two passes, one large component at a time: every caption through the text encoder (staged), which is
    then freed; then every video (and its reference) through the VAE, each record written with its staged caption."""
    if not samples:
        return
    if workers <= 1:
        previous = torch.get_num_threads()
        _deterministic_kernels()
        try:
            processor = Processor(plan, plan.components(), device)
            for sample in samples:
                _stage(processor, cache, sample)
            processor.free_text()
            for sample in samples:
                text = staged_text(cache, sample.id)
                yield _finish(process(sample, settings, processor, cache, plan.hash, text, pairing), cache)
            processor.free_vae()
        finally:
            torch.set_num_threads(previous)
        return
    # each worker holds its own model copy; one pool per pass, so the text encoders are gone (with their workers)
    # before any VAE is built
    context = _worker_context(plan, device)
    for text_pass in (True, False):
        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(plan.to_json(), str(cache.root), device),
        ) as pool:
            if text_pass:
                for future in as_completed([pool.submit(_work_text, sample) for sample in samples]):
                    _note_worker_peak(future.result())
                continue
            futures = [pool.submit(_work, sample, settings, pairing) for sample in samples]
            for future in as_completed(futures):
                outcome, peak = future.result()
                _note_worker_peak(peak)
                yield _finish(outcome, cache)


def _worker_context(plan: Plan, device: str) -> BaseContext:
    """Where workers come from; never fork (CUDA cannot be forked, and a forked parent's threads and locks come
    along). On a GPU: spawn, each worker a fresh interpreter. On CPU, where the platform has it: forkserver, one
    clean server process per process (it never touches a GPU) that imports this module and the plan's component
    classes once; each worker forks from it instead of paying those imports again (seconds per worker)."""
    if torch.device(device).type != "cpu" or "forkserver" not in get_all_start_methods():
        return get_context("spawn")
    context = get_context("forkserver")
    modules = sorted({recipe.cls.__module__ for recipe in plan.recipes.values()})
    context.set_forkserver_preload([__name__, *modules])  # no effect once this process's server runs
    return context


def _stage(processor: Processor, cache: Cache, sample: Sample) -> None:
    """Encode a sample's caption ahead of its video (unless a killed run already did)."""
    if not is_staged(cache, sample.id):
        stage_text(cache, sample.id, processor.cache_text([sample.caption]))


def _finish(outcome: Outcome, cache: Cache) -> Outcome:
    """Drop the staged caption of a sample that is written or rejected."""
    unstage(cache, outcome.sample_id)
    return outcome


def peak_memory(device: str) -> str:
    """This process's peak resident memory (libraries included), its finished workers', and the device's."""
    self_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children_mib = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, _WORKER_PEAK["kib"]) / 1024
    text = f"{self_mib:.0f} MiB RSS" + (f" (largest worker {children_mib:.0f} MiB)" if children_mib else "")
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        text += f", {torch.cuda.max_memory_allocated(torch.device(device)) / 2**30:.2f} GiB on {device}"
    return text


_WORKER: dict[str, Any] = {}
_WORKER_PEAK = {"kib": 0}  # the largest peak RSS a worker reported (forkserver workers are not our children)


def _note_worker_peak(kib: int) -> None:
    _WORKER_PEAK["kib"] = max(_WORKER_PEAK["kib"], kib)


def _own_peak() -> int:
    """This process's peak RSS in KiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _deterministic_kernels() -> None:
    """Make encoding independent of how the work is split: one intra-op CPU thread per process (a CPU
    reduction's result depends on its thread count) and deterministic cuDNN algorithms. Parallelism comes
    from --workers and torchrun ranks instead."""
    torch.set_num_threads(1)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def _init_worker(plan_json: dict[str, Any], cache_root: str, device: str) -> None:
    from ltxc.compiler import plan_from_json

    _deterministic_kernels()
    plan = plan_from_json(plan_json)
    _WORKER.update(plan=plan, cache=Cache(cache_root), processor=Processor(plan, plan.components(), device))


def _work_text(sample: Sample) -> int:
    """Stage a caption; returns the worker's peak RSS so far (KiB)."""
    _stage(_WORKER["processor"], _WORKER["cache"], sample)
    return _own_peak()


def _work(sample: Sample, settings: PreprocessSettings, pairing: Pairing | None) -> tuple[Outcome, int]:
    """(the sample's outcome, the worker's peak RSS so far in KiB)."""
    cache = _WORKER["cache"]
    text = staged_text(cache, sample.id)
    return process(sample, settings, _WORKER["processor"], cache, _WORKER["plan"].hash, text, pairing), _own_peak()


_LINE_REF = re.compile(r"\s*\([^)]*\bline\b[^)]*\)")


def format_report(report: Report, cache_dir: Path) -> str:
    """The end-of-run summary table."""
    lines = [
        f"cache      {cache_dir}",
        f"cached     {report.cached_now} now, {report.already_cached} earlier, {report.total_cached} in total",
    ]
    # group "too short: 5 frame(s) ..." and "file not found (metadata.jsonl line 4)" by their leading words
    reasons = Counter(_LINE_REF.sub("", r["reason"]).split(":")[0].strip() for r in report.rejected)
    lines.append(f"rejected   {len(report.rejected)}" + (" (see rejected.jsonl)" if report.rejected else ""))
    lines += [f"  {count:>5}  {reason}" for reason, count in reasons.most_common()]
    lines.append("buckets    (W x H x frames: samples)")
    lines += [f"  {bucket:<16} {count}" for bucket, count in report.buckets.items()]
    if report.repeated_clips:
        lines.append(
            f"note       {report.repeated_clips} clip(s) repeat some source frames (source fps below the target); "
            "see `repeated` in manifest.jsonl, or pass --low-fps skip"
        )
    if report.padded_clips:
        lines.append(
            f"note       {report.padded_clips} clip(s) padded by repeating the last frame (--frames-policy pad)"
        )
    if report.pairs:
        lines.append(f"pairs      {report.pairs}")
    lines.append(f"seconds    {report.seconds:.1f}")
    if report.peak:
        lines.append(f"peak       {report.peak} (text encoder and VAE loaded one at a time)")
    return "\n".join(lines)
