"""Shared fixtures: paths to the checkout's specs, a way to run the CLI in-process, and the README's first command
(`ltxc run train`, the embedded default) run once per session for every test that reads its result."""

from __future__ import annotations

import os
import runpy
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
from distributed_worker import GroupRun, run_groups

from ltxc.cli import main

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"
TINY_LTX = SPECS / "tiny" / "ltx.toml"
TINY_LTX2 = SPECS / "tiny" / "ltx-2.3.toml"
TINY_WAN = SPECS / "tiny" / "wan-2.1.toml"
TINY_FLUX = SPECS / "tiny" / "flux-1.toml"
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


@pytest.fixture(scope="module")
def module_process_group() -> Iterator[None]:
    """For a module of in-process runs (`pytestmark = pytest.mark.usefixtures("module_process_group")`): they make
    and reuse one 1-rank group and set RANK/MASTER_*; both are undone after the module."""
    with isolated_process_group():
        yield


@pytest.fixture(scope="module")
def plan() -> Any:
    """The tiny LTX-Video spec's plan (a module may define its own `plan` for another spec)."""
    from ltxc.compiler import compile_spec
    from ltxc.spec import load_spec

    return compile_spec(load_spec(TINY_LTX))


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


def generated_reference(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """What `python tools/spec_reference.py ARGV` prints (the generator of docs/*-reference.md), run in-process."""
    capsys.readouterr()
    runpy.run_path(str(ROOT / "tools" / "spec_reference.py"))["main"](list(argv))
    return capsys.readouterr().out


@pytest.fixture(autouse=True)
def no_stray_plan(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process `ltxc run …` ignores a `.ltxc/plan.json` that happens to sit in the working directory
    (a developer's compiled real spec must not turn a test into a weight download); tests pass --plan."""
    import ltxc.commands.plans

    monkeypatch.setattr(ltxc.commands.plans, "DEFAULT_PLAN", tmp_path_factory.getbasetemp() / "no-such-plan.json")


@attrs.frozen
class CommandRun:
    """A finished `python -m ltxc ...` subprocess: where it ran, how it ended, how long it took."""

    cwd: Path
    done: subprocess.CompletedProcess[str]
    seconds: float


def ltxc_subprocess(*args: str, cwd: Path, timeout: float = 600) -> CommandRun:
    """`python -m ltxc ARGS` in a fresh interpreter, as a user runs it (without a test process group's env)."""
    env = {key: value for key, value in os.environ.items() if key not in DIST_ENV}
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "ltxc", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    return CommandRun(cwd, done, time.monotonic() - began)


@pytest.fixture(scope="session")
def embedded_default_run(tmp_path_factory: pytest.TempPathFactory) -> CommandRun:
    """`ltxc run train --set log.progress=false` in an empty directory, exactly as the README's first command (a fresh
    interpreter; synthetic media, preprocessing, 400 steps, exports under runs/default/): ~30 s on 2 cores, so it
    runs once per session. Read-only for its users: a test that writes (e.g. a generated video) writes new files."""
    return ltxc_subprocess("run", "train", "--set", "log.progress=false", cwd=tmp_path_factory.mktemp("embedded"))


@attrs.frozen
class SharedTorchrun:
    """The session's one shared 2-rank torchrun launch (tests/distributed_worker.py): each group's results."""

    groups: dict[str, GroupRun]

    def group(self, name: str) -> GroupRun:
        assert name in self.groups, f"group {name!r} was not launched: mark its tests @pytest.mark.shared_torchrun"
        return self.groups[name]


@pytest.fixture(scope="session")
def shared_torchrun(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> SharedTorchrun:
    """Every 2-rank scenario that the selected tests need (`@pytest.mark.shared_torchrun("group")`), prepared and
    run in one torchrun launch when the first of those tests starts (see tests/distributed_worker.py)."""
    names = {mark.args[0] for item in request.session.items for mark in item.iter_markers("shared_torchrun")}
    return SharedTorchrun(run_groups(sorted(names), tmp_path_factory.mktemp("shared-torchrun")))
