"""Shared fixtures: paths to the checkout's specs, and a way to run the CLI in-process."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ltxc.cli import main

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"
TINY_LTX = SPECS / "tiny" / "ltx.toml"


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
    import ltxc.defaults

    monkeypatch.setattr(ltxc.defaults, "DEFAULT_PLAN", tmp_path_factory.getbasetemp() / "no-such-plan.json")
