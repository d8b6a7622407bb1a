"""The new families under real torchrun processes (gloo on CPU): FSDP2 over 2 ranks x batch 1 trains the tiny
LTX-2.3 (audio branch frozen, video-only) and Wan 2.1 exactly as 1 process x batch 2 does — equal per-step
losses within fp32 tolerance — with each rank holding about half of the transformer.

Reuses the LTX-Video distributed harness (tests/test_train_distributed.py) for the torchrun run; the 1-process
reference runs in-process through the CLI (the same `ltxc run train` with the same --set values, without a
cold interpreter). About a minute on 2 cores:
    pytest -q -m slow tests/test_families_distributed.py
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import TINY_LTX2, TINY_WAN, isolated_process_group, run_cli
from test_train_distributed import COMMON, REL, STEPS, Run, assert_close, train

from ltxc.compiler import compile_spec
from ltxc.media.synthetic import make_sample_dataset
from ltxc.preprocess.run import preprocess
from ltxc.preprocess.settings import build_settings
from ltxc.spec import load_spec

pytestmark = pytest.mark.slow


def train_in_process(
    capsys: pytest.CaptureFixture[str], root: Path, name: str, plan_path: Path, cache: Path, *, batch: int, mode: str
) -> Run:
    """The harness's 1-rank `ltxc run train` (the same --set values), in this process: no interpreter to start."""
    run_dir = root / name
    items = (*COMMON, f"data.cache={cache}", f"run.output={run_dir}", f"data.batch_size={batch}", f"train.mode={mode}")
    with isolated_process_group():
        code, out, err = run_cli(capsys, "run", "train", "--plan", str(plan_path),
                                 *(arg for item in items for arg in ("--set", item)))  # fmt: skip
    return Run(run_dir, code, err, out)


@pytest.mark.parametrize("spec", [TINY_LTX2, TINY_WAN], ids=["ltx-2.3", "wan-2.1"])
def test_two_ranks_match_one_process(spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = compile_spec(load_spec(spec))
    plan_path = plan.save(tmp_path / "plan")
    make_sample_dataset(tmp_path / "media", clips=4, images=0, seed=0)
    report = preprocess(plan, tmp_path / "media", tmp_path / "cache", build_settings(plan), progress=False)
    assert report.total_cached == 4, report
    cache = tmp_path / "cache"
    one = train_in_process(capsys, tmp_path, "one-1x2", plan_path, cache, batch=2, mode="lora")
    two = train(tmp_path, "two-2x1", plan_path, cache, ranks=2, batch=1, mode="lora", sets=(), stop_after=None,
                resume=None)  # fmt: skip
    for run in (one, two):
        assert run.returncode == 0, f"{run.run_dir.name} exited {run.returncode}:\n{run.stderr[-5000:]}"
    assert sorted(two.losses()) == list(range(1, STEPS + 1))
    assert all(math.isfinite(v) for v in two.losses().values())
    assert_close(two.losses(), one.losses(), REL)
    held = two.holds()
    assert sorted(held) == [0, 1]
    for world, mib, total in held.values():
        assert world == 2 and abs(mib - total / 2) <= 0.1 * total / 2 + 0.01
