"""Shared fixtures: paths to the checkout's specs, and a way to run the CLI in-process."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ltxc.cli import main

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"
TINY_LTX = SPECS / "tiny" / "ltx.toml"
TINY_LTX2 = SPECS / "tiny" / "ltx-2.3.toml"
TINY_WAN = SPECS / "tiny" / "wan-2.1.toml"
# What an in-process `train()` / `run train` sets up for its 1-rank process group.
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@contextmanager
def isolated_process_group() -> Iterator[None]:
    """Undo what in-process runs leave behind: the process group they made and the RANK/MASTER_* they set."""
    import torch.distributed as dist

    saved = {key: os.environ.get(key) for key in DIST_ENV}
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def spec_dir(tmp_path: Path) -> Path:
    """A temp copy of `specs/`, so a test can edit or add specs beside the real ones."""
    target = tmp_path / "specs"
    shutil.copytree(SPECS, target)
    return target


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `ltxc ARGS` in-process; return (exit code, stdout, stderr)."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def no_stray_plan(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process `ltxc run …` ignores a `.ltxc/plan.json` that happens to sit in the working directory
    (a developer's compiled real spec must not turn a test into a weight download); tests pass --plan."""
    import ltxc.commands.plans

    monkeypatch.setattr(ltxc.commands.plans, "DEFAULT_PLAN", tmp_path_factory.getbasetemp() / "no-such-plan.json")
