"""The new families under real torchrun processes (gloo on CPU): FSDP2 over 2 ranks x batch 1 trains the tiny
LTX-2.3 (audio branch frozen, video-only), Wan 2.1 and FLUX.1-dev (an image model: the synthetic clips become their
first frames; the pooled text and the guidance input in every call) exactly as 1 process x batch 2 does — equal
per-step losses within fp32 tolerance — with each rank holding about half of the transformer.

The 2-rank runs are scenarios of the session's one shared torchrun launch (tests/distributed_worker.py; the
arguments of tests/test_train_distributed.py's harness); the 1-process reference runs in-process through the CLI
(the same `ltxc run train` with the same --set values, without a cold interpreter). About a minute on 2 cores:
    pytest -q -m slow tests/test_families_distributed.py
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import TINY_FLUX, TINY_LTX2, TINY_WAN, SharedTorchrun, isolated_process_group, run_cli
from distributed_worker import Prepared, Scenario, shared_group
from test_train_distributed import REL, STEPS, Run, assert_close, make_workspace, train_args

GROUP = "families-distributed"
pytestmark = [pytest.mark.slow, pytest.mark.shared_torchrun(GROUP)]
SPECS = {"ltx-2.3": TINY_LTX2, "wan-2.1": TINY_WAN, "flux-1": TINY_FLUX}


@shared_group(GROUP)
def prepare(root: Path) -> Prepared:
    """Per family: its plan and a cache of 4 synthetic clips; the 2 ranks x batch 1 LoRA run as a scenario."""
    workspaces, scenarios = {}, []
    for family, spec in SPECS.items():
        directory = root / family
        workspaces[family] = plan_path, cache = make_workspace(directory, spec)
        args = train_args(directory / "two-2x1", plan_path, cache, batch=1, mode="lora")
        scenarios.append(Scenario(family, tuple(args), cwd=directory))
    return Prepared(workspaces, tuple(scenarios))


@pytest.mark.parametrize("family", SPECS)
def test_two_ranks_match_one_process(
    family: str, shared_torchrun: SharedTorchrun, capsys: pytest.CaptureFixture[str]
) -> None:
    group = shared_torchrun.group(GROUP)
    plan_path, cache = group.workspace[family]
    root = plan_path.parent.parent
    with isolated_process_group():  # the harness's 1-rank `ltxc run train`, in this process
        code, out, err = run_cli(capsys, *train_args(root / "one-1x2", plan_path, cache, batch=2, mode="lora"))
    one = Run(root / "one-1x2", code, err, out)
    result = group[family]
    two = Run(root / "two-2x1", result.returncode, result.stderr, result.stdout)
    for run in (one, two):
        assert run.returncode == 0, f"{run.run_dir.name} exited {run.returncode}:\n{run.stderr[-5000:]}"
    assert sorted(two.losses()) == list(range(1, STEPS + 1))
    assert all(math.isfinite(v) for v in two.losses().values())
    assert_close(two.losses(), one.losses(), REL)
    held = two.holds()
    assert sorted(held) == [0, 1]
    for world, mib, total in held.values():
        assert world == 2 and abs(mib - total / 2) <= 0.1 * total / 2 + 0.01
