"""Observability: JSONL + TensorBoard scalars, σ-bucketed losses, peak memory, and the loss-curve PNG."""

from __future__ import annotations

import itertools
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ltxc.fileio import atomic_write, json_line
from ltxc.runner.run_dir import METRICS as METRICS_FILE
from ltxc.runner.run_dir import TENSORBOARD as TENSORBOARD_DIR
from ltxc.runner.run_dir import RunDir


class MetricsLogger:
    """Appends one JSON line per logged step and mirrors it to TensorBoard; a no-op when disabled."""

    def __init__(self, run_dir: Path, *, jsonl: bool = True, tensorboard: bool = True, enabled: bool = True) -> None:
        """Open the sinks under `run_dir` (nothing is created when `enabled` is False, e.g. on ranks > 0)."""
        self.run_dir = Path(run_dir)
        self._file = None
        self._writer: Any = None
        if not enabled:
            return
        run = RunDir(self.run_dir)
        run.root.mkdir(parents=True, exist_ok=True)
        if jsonl:
            # append: a resumed run continues the same file
            self._file = run.metrics.open("a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imported late: it pulls in tensorboard

            self._writer = SummaryWriter(log_dir=str(run.tensorboard))

    def log(self, step: int, values: Mapping[str, float]) -> None:
        """Record `values` at `step` in every open sink."""
        scalars = {key: float(value) for key, value in values.items()}
        if self._file is not None:
            self._file.write(json_line({"step": int(step), **scalars}))
            self._file.flush()  # a crash or a `tail -f` sees every finished step
        if self._writer is not None:
            for key, value in scalars.items():
                self._writer.add_scalar(key, value, global_step=int(step))

    def log_image(self, tag: str, image: Any, step: int) -> None:
        """An RGB image (uint8 [H, W, 3]) to TensorBoard, e.g. a validation contact sheet."""
        if self._writer is not None:
            self._writer.add_image(tag, image, global_step=int(step), dataformats="HWC")

    def close(self) -> None:
        """Flush and close the sinks."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sigma_bucket_losses(
    sigmas: torch.Tensor, per_sample_loss: torch.Tensor, edges: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0)
) -> dict[str, float]:
    """Mean loss per σ interval [a, b) (the last one closed), keyed "loss/sigma_a-b"; empty buckets are left out."""
    sigmas = sigmas.detach().reshape(-1).to(torch.float64)
    losses = per_sample_loss.detach().reshape(-1).to(torch.float64)
    if sigmas.numel() != losses.numel():
        raise ValueError(f"{sigmas.numel()} sigmas for {losses.numel()} per-sample losses")
    out: dict[str, float] = {}
    last = len(edges) - 2
    for i, (low, high) in enumerate(itertools.pairwise(edges)):
        inside = (sigmas >= low) & ((sigmas <= high) if i == last else (sigmas < high))
        if inside.any():
            out[f"loss/sigma_{low:.2f}-{high:.2f}"] = float(losses[inside].mean())
    return out


def read_metrics(metrics_jsonl: Path) -> list[dict[str, Any]]:
    """The logged records, skipping a torn last line (a run killed mid-write)."""
    records = []
    for line in Path(metrics_jsonl).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_loss_curve(metrics_jsonl: Path, png: Path, key: str = "loss") -> Path:
    """Plot `key` against step (raw, and an exponential moving average) from the JSONL; write a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global backend state, no display needed

    points = [(r["step"], r[key]) for r in read_metrics(metrics_jsonl) if key in r and "step" in r]
    points = [(s, v) for s, v in points if math.isfinite(v)]
    if not points:
        raise ValueError(f"{metrics_jsonl}: no finite {key!r} values to plot")
    steps, values = zip(*sorted(points), strict=True)
    figure = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(steps, values, color="tab:blue", alpha=0.35, linewidth=1, marker="o" if len(steps) < 20 else None,
              markersize=3, label=key)  # fmt: skip
    axes.plot(steps, _ema(values), color="tab:blue", linewidth=2, label=f"{key} (smoothed)")
    axes.set_xlabel("step")
    axes.set_ylabel(key)
    axes.set_title(f"{key} over {len(steps)} logged step{'s' if len(steps) != 1 else ''}")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    return atomic_write(Path(png), lambda tmp: figure.savefig(tmp, format="png"))


def _ema(values: Sequence[float], weight: float | None = None) -> list[float]:
    """TensorBoard-style debiased exponential moving average (its weight grows with the number of points)."""
    if weight is None:
        weight = min(0.98, 1.0 - 5.0 / max(len(values), 5))  # smooth over ~5% of the run, not a fixed window
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**i))
    return out


def peak_memory_mb(device: torch.device | str) -> float:
    """Peak memory in MiB: allocated CUDA memory on a GPU, else this process's maximum resident set size."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:  # Windows has no `resource`
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


__all__ = [
    "METRICS_FILE",
    "TENSORBOARD_DIR",
    "MetricsLogger",
    "peak_memory_mb",
    "plot_loss_curve",
    "read_metrics",
    "sigma_bucket_losses",
]
