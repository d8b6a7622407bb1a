"""`ltxc run export`: exports of any checkpoint of a run, on demand, equal to the end-of-run export.

Run: pytest tests/test_export_command.py
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file


def lora_file(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "lora" / "pytorch_lora_weights.safetensors")


def test_export_any_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "r"
    code, out, err = run_cli(
        capsys, "run", "train", "--set", "run.output=runs/r", "--set", "train.steps=4",
        "--set", "checkpoint.every=2", "--set", "checkpoint.keep=0", "--set", "log.progress=false",
        "--set", "train.mode=lora",  # the embedded default is a full fine-tune; this checks LoRA exports
    )  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-00000002", "step-00000004"]

    code, out, err = run_cli(capsys, "run", "export", "--run", str(run))
    assert code == 0, err
    latest = lora_file(run / "export-step-00000004")
    final = lora_file(run / "export")
    assert latest.keys() == final.keys() and all(torch.equal(latest[k], final[k]) for k in final)

    code, out, err = run_cli(capsys, "run", "export", "--run", str(run), "--checkpoint",
                             str(run / "checkpoints" / "step-00000002"), "--out", str(tmp_path / "early"))  # fmt: skip
    assert code == 0, err
    early = lora_file(tmp_path / "early")
    assert any(not torch.equal(early[k], final[k]) for k in final), "step 2 must differ from step 4"
    assert "comfyui" in out


def test_export_needs_a_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "run", "export", "--run", str(tmp_path))
    assert code == 2
    assert "run.json" in err and "Traceback" not in err
