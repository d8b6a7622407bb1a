"""Joint training of the spec's other streams (run config `train.audio`; docs/audio-training.md).

Each `[streams.<name>]` gets its cached latents (batch key `<name>_latents`, [B, L, D] in the transformer's layout)
noised as the video is, x_t = (1 - σ)·x0 + σ·ε, with its own ε drawn from each sample's generator after every
other draw (σ, noise, dropout, task), so a video-only run draws exactly what it drew before. Its σ is the video's
("shared") or its own ("independent": drawn after its noise, from `[flow]` with the shift of the stream's own token
count). The transformer then gets the noisy latents (so `<stream>.joint` is true) and `<stream>.sigma`.

The loss is video + w·stream for each stream, each term Σ_b w(σ_b)·l_b / B with l_b the sample's mean squared error
(a stream's masked by `<name>_mask` [B]: a clip without sound adds only its video term, and its audio prediction
gets exactly zero gradient). With `train.video = false` the video term is left out (it is still logged).

What trains: a video-only run never adapts `[parallel] frozen`; a run with `train.audio` also trains the parts each
stream's `modules` names (its branch and the cross-modal modules), and with `train.video = false` only those.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from attrs import frozen
from torch import Tensor

from ltxc.errors import UserError
from ltxc.flow import flow_loss, flow_target, loss_weights, noisy_latents, sample_sigmas
from ltxc.plan import CompiledStream, CompiledTask, Plan
from ltxc.runner.config import RunConfig

LATENTS = "{}_latents"  # batch key of a stream's latents [B, L, D], normalised, in the transformer's layout
MASK = "{}_mask"  # batch key of a stream's loss mask [B] (0: the clip has no sound and the policy masks its loss)
SWITCH = "train.audio"


@frozen(eq=False)
class StreamInputs:
    """One micro-batch's streams: clean latents, noise, noisy latents, σ and loss mask, by stream name."""

    x0: dict[str, Tensor]  # [B, L, D] float32
    noise: dict[str, Tensor]
    noisy: dict[str, Tensor]
    sigma: dict[str, Tensor]  # [B] float32: the video's (shared) or the stream's own
    mask: dict[str, Tensor]  # [B] float32


class TrainingStreams:
    """The streams a run trains jointly with the video (none unless `train.audio`)."""

    def __init__(self, plan: Plan, config: RunConfig) -> None:
        self.streams: tuple[CompiledStream, ...] = tuple(plan.streams.values()) if config.train.audio else ()
        self.flow = plan.flow
        self.loss_weight, self.constants = plan.loss_weight, plan.constants
        self.weight = config.train.audio_loss_weight
        self.video = config.train.video

    @property
    def on(self) -> bool:
        """Whether any stream trains (else every draw, input and loss is video-only's)."""
        return bool(self.streams)

    def require(self, sample: Mapping[str, Any]) -> None:
        """A UserError naming the switch when a sample (or batch) lacks a trained stream's latents."""
        missing = [LATENTS.format(s.name) for s in self.streams if LATENTS.format(s.name) not in sample]
        if missing:
            raise UserError(
                f"{SWITCH} = true trains the spec's streams, but the cache's samples have no {', '.join(missing)}: "
                "preprocess the data with its sound, or set train.audio = false"
            )

    def shapes(self, batch: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        """Each stream's per-sample latent shape [L, D] in this batch."""
        self.require(batch)
        return {s.name: tuple(batch[LATENTS.format(s.name)].shape[1:]) for s in self.streams}

    def draw(
        self, generators: Sequence[torch.Generator], shapes: Mapping[str, tuple[int, ...]]
    ) -> dict[str, tuple[Tensor, Tensor | None]]:
        """Per stream (noise [B, L, D], its own σ [B] or None where it shares the video's), each sample's from its
        own generator: its noise, then (independent) its σ, shifted by the stream's token count L."""
        out: dict[str, tuple[Tensor, Tensor | None]] = {}
        for stream in self.streams:
            shape = shapes[stream.name]
            noise = torch.stack([torch.randn(shape, generator=g) for g in generators])
            sigma = None
            if stream.sigma == "independent":
                sigma = torch.cat([sample_sigmas(self.flow, 1, shape[0], g) for g in generators])
            out[stream.name] = (noise, sigma)
        return out

    def inputs(
        self, batch: Mapping[str, Any], drawn: Mapping[str, tuple[Tensor, Tensor | None]], sigma: Tensor
    ) -> StreamInputs | None:
        """The micro-batch's noisy streams (None: video only), on σ's device."""
        if not self.on:
            return None
        device = sigma.device
        x0, noise, noisy, sigmas, masks = {}, {}, {}, {}, {}
        for stream in self.streams:
            name = stream.name
            x0[name] = batch[LATENTS.format(name)].to(device, torch.float32)
            noise[name] = drawn[name][0].to(device)
            own = drawn[name][1]
            sigmas[name] = sigma if own is None else own.to(device)
            noisy[name] = noisy_latents(x0[name], noise[name], sigmas[name])
            mask = batch.get(MASK.format(name))
            masks[name] = torch.ones_like(sigma) if mask is None else mask.to(device, torch.float32).reshape(-1)
        return StreamInputs(x0, noise, noisy, sigmas, masks)

    def loss(
        self, video: Tensor, predictions: Mapping[str, Tensor], inputs: StreamInputs
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """(video + w·Σ stream terms, or the stream terms alone with train.video = false; each term detached)."""
        terms = {"video": video.detach()}
        total = video if self.video else torch.zeros_like(video)
        for stream in self.streams:
            name = stream.name
            weights = loss_weights(self.loss_weight, inputs.sigma[name], self.constants)
            keep = inputs.mask[name].view(-1, *([1] * (inputs.x0[name].ndim - 1)))
            target = flow_target(inputs.x0[name], inputs.noise[name])
            term, _ = flow_loss(predictions[name], target, weights, keep)
            terms[name] = term.detach()
            total = total + self.weight * term
        return total, terms


def check_streams(plan: Plan, config: RunConfig, tasks: Sequence[CompiledTask] = ()) -> None:
    """Refuse, before any model is built, a `train.audio` run the plan cannot train."""
    if not config.train.audio:
        return
    if not plan.streams:
        raise UserError(f"{SWITCH} = true, but spec {plan.name!r} has no [streams] to train besides the video")
    if config.train.audio_cfg_dropout is not None and not any(s.text for s in plan.streams.values()):
        raise UserError(
            f"train.audio_cfg_dropout is set, but no [streams] table of spec {plan.name!r} names the text only it "
            "reads (its `text`): there is nothing to drop on a coin of its own"
        )
    for stream in plan.streams.values():
        if not config.train.video and not stream.modules:
            raise UserError(
                f"train.video = false trains only the streams' modules, but [streams.{stream.name}] names none "
                "(its `modules`): nothing would train"
            )
        if stream.sigma != "independent":
            continue
        reads = {k for k, e in plan.call.items() if f"{stream.name}.sigma" in e.names}
        for task in tasks:
            lost = sorted(k for k in reads if f"{stream.name}.sigma" not in task.call[k].names)
            if lost:
                raise UserError(
                    f'{SWITCH} with [streams.{stream.name}] sigma = "independent": task {task.name!r} gives '
                    f"{', '.join(lost)} from the video's σ; its call must read {stream.name}.sigma, or train it "
                    "with shared σ"
                )


def trained_modules(plan: Plan, config: RunConfig) -> tuple[str, ...]:
    """The parameter-name parts of the streams the run trains (none in a video-only run)."""
    if not config.train.audio:
        return ()
    return tuple(dict.fromkeys(part for s in plan.streams.values() for part in s.modules))


def parameter_trains(name: str, plan: Plan, config: RunConfig) -> bool:
    """Whether the parameter `name` may train: not a `[parallel] frozen` part unless a trained stream's module,
    and with `train.video = false` only a trained stream's module."""
    own = any(part in name for part in trained_modules(plan, config))
    if not config.train.video:
        return own
    return own or not any(part in name for part in plan.frozen)
