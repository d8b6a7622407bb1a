"""One sample through the frame policy, the decoder and the processor, into the cache (or a rejection)."""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from ltxc.data.buckets import nearest_bucket, pick_frames
from ltxc.data.cache import Cache
from ltxc.data.discover import Sample
from ltxc.media.decode import read_frames
from ltxc.media.errors import MediaError
from ltxc.media.frames import FrameSelection, pad_selection
from ltxc.media.probe import MediaInfo, probe
from ltxc.preprocess.audio import cache_audio
from ltxc.preprocess.outcome import Outcome, Rejection, round_time
from ltxc.preprocess.pairs import REFERENCE_TENSOR, Pairing, encode_reference, plan_reference
from ltxc.preprocess.settings import PreprocessSettings
from ltxc.processor import Processor


def sample_seed(sample_id: str, seed: int) -> int:
    """A per-sample seed independent of which worker or rank encodes it."""
    digest = hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def plan_frames(info: MediaInfo, settings: PreprocessSettings, frame_rule_minimum: int) -> FrameSelection:
    """Choose which source frames become the sample, by the settings' explicit, recorded policy."""
    if info.kind == "image":
        if frame_rule_minimum > 1:
            raise Rejection(f"an image is 1 frame but the model needs at least {frame_rule_minimum}")
        return info.select_frames(settings.fps, 1)
    available = info.available_frames(settings.fps, settings.start)
    count = pick_frames(min(available, settings.max_frames), settings.frame_buckets)
    shortest = settings.frame_buckets[0]
    if count is None:
        if settings.frames_policy != "pad" or available < 1:
            raise Rejection(
                f"too short: {available} frame(s) at {settings.fps:g} fps from t={settings.start:g}s, "
                f"need at least {shortest} (or pass --frames-policy pad)"
            )
        return pad_selection(info.select_frames(settings.fps, available, settings.start), shortest)
    selection = info.select_frames(settings.fps, count, settings.start)
    if selection.repeated and settings.low_fps == "skip":
        raise Rejection(
            f"source is {info.avg_fps:.3g} fps, below the target {settings.fps:g}: {selection.repeated} of {count} "
            "frames would repeat (pass --low-fps repeat to keep it, or a lower --fps)"
        )
    return selection


def process(
    sample: Sample,
    settings: PreprocessSettings,
    processor: Processor,
    cache: Cache,
    spec_hash: str,
    text: dict[str, torch.Tensor] | None = None,
    pairing: Pairing | None = None,
) -> Outcome:
    """Probe, choose frames and bucket, decode, encode and write one sample (`text`: its caption encoded ahead,
    as `Processor.cache_text` returns it; else the processor encodes it here; `pairing`: its reference video too)."""
    try:
        return Outcome(sample.id, record=_process(sample, settings, processor, cache, spec_hash, text, pairing))
    except (Rejection, MediaError) as exc:
        return Outcome(sample.id, rejected={"id": sample.id, "source": sample.relpath, "reason": str(exc)})


def _process(
    sample: Sample,
    settings: PreprocessSettings,
    processor: Processor,
    cache: Cache,
    spec_hash: str,
    text: dict[str, torch.Tensor] | None,
    pairing: Pairing | None,
) -> dict[str, Any]:
    info = probe(sample.path)
    geometry = processor.plan.geometry
    selection = plan_frames(info, settings, geometry.frame_rule.minimum)
    width, height = nearest_bucket(info.width, info.height, settings.resolutions)
    count = len(selection.indices)
    # a bad pair is rejected before anything is decoded
    reference = None if pairing is None else plan_reference(sample, info, count, (width, height), settings, pairing)
    frames = read_frames(info, selection.indices, (width, height))
    if settings.tiles(width, height):
        processor.enable_tiling()
    seed = sample_seed(sample.id, settings.seed)
    latents = processor.encode_video(frames, seed=seed)
    if text is None:
        text = processor.cache_text([sample.caption])
    sound, heard = cache_audio(
        sample, info, selection, settings, processor, sample_seed(f"{sample.id}/audio", settings.seed)
    )
    tensors = {"latents": latents, **sound, **{f"text_{name}": tensor[0] for name, tensor in text.items()}}
    bucket, paired = f"{width}x{height}x{count}", {}
    if reference is not None and pairing is not None:
        reference_seed = sample_seed(f"{sample.id}/reference", settings.seed)
        tensors[REFERENCE_TENSOR], paired = encode_reference(reference, processor, pairing, reference_seed)
        bucket += "+ref{}x{}".format(*reference.size)  # pairs batch only with pairs of the same reference shape
    file = cache.write_sample(sample.id, tensors, {"id": sample.id, "spec_hash": spec_hash})
    return {
        "id": sample.id,
        "source": sample.relpath,
        "kind": sample.kind,
        "caption": sample.caption,
        "caption_source": sample.caption_source,
        "source_fps": round_time(info.avg_fps),
        "source_size": [info.width, info.height],
        "rotation": info.rotation,
        "fps": settings.fps if info.kind == "video" else None,
        "frames": count,
        "frame_times": [round_time(t) for t in selection.times],
        "source_frames": list(selection.indices),
        "source_times": [round_time(t) for t in selection.source_times],
        "repeated": selection.repeated,
        "padded": selection.padded,
        "pixel_shape": [count, height, width],
        "latent_shape": list(latents.shape),
        **paired,
        **heard,
        "bucket": bucket,
        "file": file,
    }
