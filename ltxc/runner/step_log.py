"""What the loop reports after each step: the progress bar, and every `log.every` steps (and at the last) one
metrics record: loss, grad norm, LR, samples/s since the last record, data-wait fraction, peak memory, the
σ-bucketed losses and, with `train.audio`, each term of the loss (loss_video, loss_audio)."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from ltxc.runner.config import RunConfig
from ltxc.runner.distributed import Distributed
from ltxc.runner.metrics import MetricsLogger, peak_memory_mb, sigma_bucket_losses
from ltxc.runner.step import StepResult


class StepLog:
    """The progress bar and the metrics records of one invocation, steps `start` to `end` of `total`."""

    def __init__(
        self, metrics: MetricsLogger, config: RunConfig, info: Distributed, *, start: int, end: int, total: int
    ) -> None:
        """Start the bar at `start` (a resumed run shows its place in the whole run)."""
        self.metrics = metrics
        self.info = info
        self.every = config.log.every
        self.global_batch = config.global_batch(info.world_size)
        self.end = end
        self.bar = tqdm(total=total, initial=start, desc="train", unit="step", file=sys.stderr,
                        disable=not (config.log.progress and info.is_main) or None)  # fmt: skip
        self.data_seconds = self.compute_seconds = 0.0
        self.since = time.monotonic()
        self.logged = start  # the step of the last record: samples/s covers the steps since

    def step(self, done: int, result: StepResult) -> None:
        """Report step `done` (1-based)."""
        self.data_seconds += result.data_seconds
        self.compute_seconds += result.compute_seconds
        if self.info.is_main and (done % self.every == 0 or done == self.end):
            self._record(done, result)
        self.bar.update(1)

    def _record(self, done: int, result: StepResult) -> None:
        elapsed = time.monotonic() - self.since
        values = {
            "loss": result.loss,
            "grad_norm": result.grad_norm,
            "lr": result.lr,
            "samples_per_s": self.global_batch * (done - self.logged) / max(elapsed, 1e-9),
            "data_wait_fraction": self.data_seconds / max(self.data_seconds + self.compute_seconds, 1e-9),
            "peak_memory_mb": peak_memory_mb(self.info.device),
            **sigma_bucket_losses(result.sigmas.cpu(), result.sample_losses.cpu()),
            **{f"loss_{name}": value for name, value in result.stream_losses.items()},  # `train.audio`: each term
        }
        self.metrics.log(done, values)
        self.bar.set_postfix(loss=f"{result.loss:.4f}", lr=f"{result.lr:.2e}",
                             samples_s=f"{values['samples_per_s']:.1f}", refresh=False)  # fmt: skip
        self.data_seconds = self.compute_seconds = 0.0
        self.since = time.monotonic()
        self.logged = done

    def close(self) -> None:
        """Close the bar and the metrics sinks (and TensorBoard's thread)."""
        self.bar.close()
        self.metrics.close()
