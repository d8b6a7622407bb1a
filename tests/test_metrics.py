"""Observability: JSONL and TensorBoard scalars read back, σ-bucketed losses on a hand example, the
loss-curve PNG, and peak memory.

Run: `pytest tests/test_metrics.py` (CPU, well under a few seconds).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
import torch

from ltxc.runner.metrics import (
    METRICS_FILE,
    TENSORBOARD_DIR,
    MetricsLogger,
    peak_memory_mb,
    plot_loss_curve,
    sigma_bucket_losses,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RECORDS = [(1, {"loss": 1.5, "lr": 1e-4}), (2, {"loss": 1.25, "lr": 2e-4}), (5, {"loss": 0.75, "lr": 3e-4})]


def log_all(run_dir: Path, records: list[tuple[int, dict[str, float]]], **kwargs: bool) -> None:
    with MetricsLogger(run_dir, **kwargs) as logger:
        for step, values in records:
            logger.log(step, values)


def test_jsonl_has_one_parsable_line_per_step_and_appends(tmp_path: Path) -> None:
    log_all(tmp_path, RECORDS[:2], tensorboard=False)
    log_all(tmp_path, RECORDS[2:], tensorboard=False)  # a resumed run continues the file
    lines = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"step": s, **v} for s, v in RECORDS]
    assert not (tmp_path / TENSORBOARD_DIR).exists()


def test_tensorboard_scalars_read_back(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_all(tmp_path, RECORDS, jsonl=False)
    assert not (tmp_path / METRICS_FILE).exists()
    events = list((tmp_path / TENSORBOARD_DIR).glob("events.out.tfevents.*"))
    assert len(events) == 1
    accumulator = EventAccumulator(str(tmp_path / TENSORBOARD_DIR))
    accumulator.Reload()
    assert set(accumulator.Tags()["scalars"]) == {"loss", "lr"}
    for key in ("loss", "lr"):
        scalars = accumulator.Scalars(key)
        assert [e.step for e in scalars] == [s for s, _ in RECORDS]
        assert [e.value for e in scalars] == pytest.approx([v[key] for _, v in RECORDS], rel=1e-6)


def test_disabled_logger_writes_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "rank1"
    log_all(run_dir, RECORDS, enabled=False)
    assert not run_dir.exists()


def test_sigma_bucket_losses_hand_example() -> None:
    sigmas = torch.tensor([0.1, 0.2, 0.25, 0.3, 0.8, 1.0, 0.0])
    losses = torch.tensor([1.0, 3.0, 4.0, 6.0, 7.0, 9.0, 2.0])
    got = sigma_bucket_losses(sigmas, losses)
    # [0, .25): 1, 3, 2 -> 2; [.25, .5): 4, 6 -> 5; [.5, .75): empty; [.75, 1]: 7, 9 -> 8 (1.0 included)
    assert got == {"loss/sigma_0.00-0.25": 2.0, "loss/sigma_0.25-0.50": 5.0, "loss/sigma_0.75-1.00": 8.0}
    assert sigma_bucket_losses(sigmas[:2], losses[:2], edges=(0.0, 0.5, 1.0)) == {"loss/sigma_0.00-0.50": 2.0}
    with pytest.raises(ValueError, match="sigmas"):
        sigma_bucket_losses(sigmas, losses[:3])


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("count", [1, 60])
def test_loss_curve_png(tmp_path: Path, count: int) -> None:
    metrics = tmp_path / METRICS_FILE
    log_all(tmp_path, [(s, {"loss": 2.0 * math.exp(-s / 20) + 0.1 * math.sin(s)}) for s in range(1, count + 1)],
            tensorboard=False)  # fmt: skip
    with metrics.open("a") as handle:
        handle.write('{"step": 99, "lo')  # a torn last line from a killed run is skipped
    png = plot_loss_curve(metrics, tmp_path / "loss.png")
    assert png == tmp_path / "loss.png"
    assert png_size(png) == (800, 450)
    assert png.stat().st_size > 10_000  # axes, labels and a curve, not an empty canvas


def test_loss_curve_without_values_is_an_error(tmp_path: Path) -> None:
    log_all(tmp_path, [(1, {"lr": 1.0})], tensorboard=False)
    with pytest.raises(ValueError, match="loss"):
        plot_loss_curve(tmp_path / METRICS_FILE, tmp_path / "loss.png")
    assert not (tmp_path / "loss.png").exists()


def test_peak_memory_on_cpu_is_the_process_rss() -> None:
    before = peak_memory_mb("cpu")
    assert 50 < before < 1_000_000  # torch alone is well over 50 MiB resident
    hog = torch.ones(64 * 2**20 // 4)  # 64 MiB touched
    after = peak_memory_mb(torch.device("cpu"))
    del hog
    assert after >= before
