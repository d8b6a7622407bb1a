"""The run's data: the cache (made with this plan), this rank's loader, what the transformer trains on besides the
latents (the text, the tasks), and how long the run is in steps."""

from __future__ import annotations

import math
from pathlib import Path

from attrs import frozen
from torchdata.stateful_dataloader import StatefulDataLoader

from ltxc.data.dataset import CacheDataset
from ltxc.data.loader import make_loader, restore_sampler
from ltxc.errors import UserError
from ltxc.plan import Plan
from ltxc.runner.config import RunConfig, TrainSection
from ltxc.runner.distributed import Distributed
from ltxc.runner.streams import TrainingStreams, check_streams
from ltxc.runner.tasks import TrainingTasks, training_tasks
from ltxc.runner.text import TrainingText


@frozen
class TrainData:
    """This rank's batches, the cache's frame rate, the text conditioning built from the cache and the tasks
    (`[tasks]` of the run config) its samples train besides text-to-video, and the streams trained with the video."""

    loader: StatefulDataLoader
    fps: float
    text: TrainingText
    tasks: TrainingTasks
    streams: TrainingStreams | None = None  # `train.audio`: the streams trained jointly with the video

    @property
    def batches_per_epoch(self) -> int:
        """Global batches in one pass over the cache."""
        return self.loader.batch_sampler.batches_per_epoch

    def seek(self, step: int, grad_accum: int) -> None:
        """Continue at the first batch of `step` (call before iterating)."""
        # The data position is a function of the step alone (global batches, identical on every layout), so a
        # run resumes at the exact next batch whatever the number of ranks.
        epoch, position = divmod(step * grad_accum, self.batches_per_epoch)
        restore_sampler(self.loader, {"epoch": epoch, "position": position})


def load_data(plan: Plan, config: RunConfig, info: Distributed) -> TrainData:
    """Open the cache (refusing one made with another plan) and make this rank's loader."""
    cache = Path(str(config.data.cache))
    trained = [plan.tasks[n] for n, section in config.tasks.items() if section.probability > 0 and n in plan.tasks]
    check_streams(plan, config, trained)  # `train.audio` on a plan without streams, before the cache is opened
    dataset = CacheDataset(cache)
    cached_hash = dataset.header.get("spec", {}).get("hash")
    if cached_hash != plan.hash:
        raise UserError(
            f"{cache}: the cache was made with another spec (hash {str(cached_hash)[:12]}, this plan is "
            f"{plan.hash[:12]}); preprocess again with this plan, or train with the plan that made it"
        )
    tasks = training_tasks(plan, config)  # a task the plan lacks is refused before the model is built
    tasks.check_cache(dataset.header, cache)
    streams = TrainingStreams(plan, config)
    if streams.on:
        streams.require(dataset[0])  # a cache without the streams' latents is refused before the model is built
    loader = make_loader(
        dataset,
        config.data.batch_size,
        rank=info.rank,
        world_size=info.world_size,
        seed=config.run.seed,
        workers=config.data.workers,
        pin_memory=config.data.pin_memory,
    )
    fps = float(dataset.header["settings"]["fps"])
    return TrainData(loader, fps, TrainingText(plan, dataset, info.device), tasks, streams)


def total_steps(train: TrainSection, batches_per_epoch: int) -> int:
    """`train.steps`, or the optimiser steps in `train.epochs` passes over the cache."""
    if train.steps is not None:
        return train.steps
    if train.epochs is None:
        raise ValueError("neither train.steps nor train.epochs is set: load the run config with load_run_config")
    return train.epochs * math.ceil(batches_per_epoch / train.grad_accum)
