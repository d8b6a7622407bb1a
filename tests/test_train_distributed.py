"""`ltxc run train` under real torchrun processes (gloo on CPU): the runner's distributed promises.

- Two processes vs one at the same global batch (2 ranks x 1 = 1 rank x 2), LoRA and full fine-tune:
  equal per-step losses within fp32 tolerance, and each rank holds about half the parameter bytes.
- torchrun trains and resumes: stop after k steps (checkpointed), resume (auto) to N; the losses after k
  equal the uninterrupted run's.
- A checkpoint saved by 2 ranks resumes on 1 rank at the same global batch (DCP reshards it); another
  global batch, or the same one split otherwise (grad_accum), is refused rather than continued wrongly.
- HSDP (`parallel.replicate = 2`) trains, checkpoints, and matches the plain 2-rank run.

The runs are the table RUNS, each made once and compared by several tests, all on one cache of the tiny spec:
- the 2-rank runs are scenarios of the session's one shared torchrun launch (tests/distributed_worker.py: two
  long-lived ranks run `ltxc run train ...` through the CLI, one scenario after another, each in a new process
  group), except `straight-2x1-lora`, launched on its own exactly as a user does
  (`python -m torch.distributed.run --standalone --nproc-per-node 2 -m ltxc run train ...`);
- a 1-process run is the same `ltxc run train ...` in-process (no cold interpreter; its 1-rank group and
  RANK/MASTER_* are undone afterwards).
About a minute on 2 cores:

    pytest -q -m slow tests/test_train_distributed.py
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from attrs import frozen
from conftest import TINY_LTX, SharedTorchrun, isolated_process_group
from distributed_worker import GroupRun, Prepared, Scenario, shared_group

from ltxc.cli import main
from ltxc.compiler import compile_spec
from ltxc.media.synthetic import make_sample_dataset
from ltxc.preprocess.run import preprocess
from ltxc.preprocess.settings import build_settings
from ltxc.spec import load_spec

GROUP = "train-distributed"
pytestmark = [pytest.mark.slow, pytest.mark.shared_torchrun(GROUP)]

STEPS = 12  # every run's length (so every run has the same LR schedule)
STOP_AT = 6  # where the interrupted runs stop and resume
REL = 1e-5  # fp32 tolerance where the arithmetic is regrouped (batched vs split, reduce-scatter vs all-reduce)
TIMEOUT = 300  # seconds per subprocess: a hung collective fails the test instead of the whole session
HOLDS = re.compile(r"rank (\d+)/(\d+): holds ([\d.]+) MiB of ([\d.]+) MiB of transformer parameters")
# Every run: the shared cache, the explicit plan, quiet, no TensorBoard or exports (not what these tests check).
COMMON = (
    "log.progress=false",
    "log.tensorboard=false",
    "export.lora_diffusers=false",
    "export.lora_comfyui=false",
    "export.full=false",
    f"train.steps={STEPS}",
    "run.seed=7",
)


@frozen
class Run:
    """A finished `ltxc run train`: its run directory and what it printed."""

    run_dir: Path
    returncode: int
    stderr: str
    stdout: str

    def losses(self) -> dict[int, float]:
        """step -> global loss, from the metrics rank 0 wrote."""
        lines = (self.run_dir / "metrics.jsonl").read_text().splitlines()
        return {record["step"]: record["loss"] for record in map(json.loads, lines)}

    def holds(self) -> dict[int, tuple[int, float, float]]:
        """rank -> (world size, MiB held, MiB of the whole transformer), from every rank's report."""
        found = {int(r): (int(w), float(x), float(y)) for r, w, x, y in HOLDS.findall(self.stderr)}
        assert found, f"no parameter report in the output:\n{self.stderr[-3000:]}"
        return found


@frozen
class RunArgs:
    """How a run of RUNS is made: ranks x batch per rank, mode, extra --set values, --stop-after; `resume_from`:
    --resume that run's checkpoint at STOP_AT; `copy_of`: start in a copy of that run's directory (resume = "auto"
    finds its checkpoint); `launched`: a 2-rank run launched on its own, not in the shared launch."""

    ranks: int
    batch: int
    mode: str
    sets: tuple[str, ...] = ()
    stop_after: int | None = None
    resume_from: str | None = None
    copy_of: str | None = None
    launched: bool = False


RUNS = {
    # 2 ranks x batch 1, in the shared launch (in this order: a copy or a resume comes after its source)
    "straight-2x1-full": RunArgs(2, 1, "full"),
    "stopped-2x1-full": RunArgs(2, 1, "full", stop_after=STOP_AT),
    "resumed-2x1-full": RunArgs(2, 1, "full", copy_of="stopped-2x1-full"),
    "stopped-2x1-lora": RunArgs(2, 1, "lora", stop_after=STOP_AT),
    "hsdp-2x1-full": RunArgs(2, 1, "full", sets=("parallel.replicate=2",)),
    # the launcher's own path: `torchrun -m ltxc run train`, as a user runs it
    "straight-2x1-lora": RunArgs(2, 1, "lora", launched=True),
    # 1 process, in this one
    "one-1x2-lora": RunArgs(1, 2, "lora"),
    "one-1x2-full": RunArgs(1, 2, "full"),
    "resharded-1x2-full": RunArgs(1, 2, "full", resume_from="stopped-2x1-full"),
    "resharded-1x2-lora": RunArgs(1, 2, "lora", resume_from="stopped-2x1-lora"),
    "resharded-1x1-full": RunArgs(1, 1, "full", resume_from="stopped-2x1-full"),
    "resharded-1x1x2-full": RunArgs(1, 1, "full", sets=("train.grad_accum=2",), resume_from="stopped-2x1-full"),
}


def make_workspace(root: Path, spec: Path) -> tuple[Path, Path]:
    """(plan.json of `spec`, a cache of 4 synthetic clips preprocessed with it), under `root`."""
    plan = compile_spec(load_spec(spec))
    plan_path = plan.save(root / "plan")
    make_sample_dataset(root / "media", clips=4, images=0, seed=0)
    report = preprocess(plan, root / "media", root / "cache", build_settings(plan), progress=False)
    assert report.total_cached == 4, report
    return plan_path, root / "cache"


def train_args(
    run_dir: Path,
    plan_path: Path,
    cache: Path,
    *,
    batch: int,
    mode: str,
    sets: Sequence[str] = (),
    stop_after: int | None = None,
    resume: Path | None = None,
) -> list[str]:
    """`run train ...` (the ltxc arguments) of one run: COMMON, the cache, the explicit plan, then `sets`."""
    items = (*COMMON, f"data.cache={cache}", f"run.output={run_dir}", f"data.batch_size={batch}", f"train.mode={mode}",
             *sets)  # fmt: skip
    args = ["run", "train", "--plan", str(plan_path)]
    for item in items:
        args += ["--set", item]
    if stop_after is not None:
        args += ["--stop-after", str(stop_after)]
    if resume is not None:
        args += ["--resume", str(resume)]
    return args


def checkpoint_at_stop(runs_root: Path, name: str) -> Path:
    return runs_root / name / "checkpoints" / f"step-{STOP_AT:08d}"


def run_args(runs_root: Path, workspace: tuple[Path, Path], name: str) -> list[str]:
    """The ltxc arguments of RUNS[name]."""
    spec = RUNS[name]
    resume = checkpoint_at_stop(runs_root, spec.resume_from) if spec.resume_from else None
    return train_args(runs_root / name, *workspace, batch=spec.batch, mode=spec.mode, sets=spec.sets,
                      stop_after=spec.stop_after, resume=resume)  # fmt: skip


@shared_group(GROUP)
def prepare(root: Path) -> Prepared:
    """The tiny spec's workspace, and every 2-rank run of RUNS that is not launched on its own, as scenarios."""
    workspace = make_workspace(root, TINY_LTX)
    runs_root = root / "runs"
    runs_root.mkdir()  # every run starts here, so no .ltxc/plan.json is picked up by accident
    scenarios = []
    for name, spec in RUNS.items():
        if spec.ranks == 2 and not spec.launched:
            copy = (runs_root / spec.copy_of, runs_root / name) if spec.copy_of else None
            scenarios.append(Scenario(name, tuple(run_args(runs_root, workspace, name)), cwd=runs_root, copy=copy))
    return Prepared({"workspace": workspace, "runs": runs_root}, tuple(scenarios))


@pytest.fixture(scope="module")
def runs(shared_torchrun: SharedTorchrun):  # type: ignore[no-untyped-def]
    """`runs(name)`: RUNS[name], made once in this module (read from the shared launch or made here)."""
    group = shared_torchrun.group(GROUP)
    done: dict[str, Run] = {}

    def get(name: str, *, check: bool = True) -> Run:
        if name not in done:
            done[name] = make(group, name)
        run = done[name]
        assert run.returncode == 0 or not check, f"{name} exited {run.returncode}:\n{run.stdout}\n{run.stderr[-5000:]}"
        return run

    return get


def make(group: GroupRun, name: str) -> Run:
    """One run of RUNS: its result in the shared launch, or made now (in-process, or its own torchrun launch)."""
    runs_root = group.workspace["runs"]
    spec = RUNS[name]
    if spec.ranks == 2 and not spec.launched:
        result = group[name]
        return Run(runs_root / name, result.returncode, result.stderr, result.stdout)
    return train(runs_root, name, run_args(runs_root, group.workspace["workspace"], name), ranks=spec.ranks)


def train(root: Path, name: str, args: Sequence[str], *, ranks: int) -> Run:
    """`ltxc ARGS` (a `run train`) from `root`: in this process (1 rank) or launched by torchrun (2 ranks)."""
    if ranks == 1:  # one process: the same command in this one
        out, err = io.StringIO(), io.StringIO()
        with isolated_process_group(), pytest.MonkeyPatch.context() as patch:
            patch.chdir(root)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(list(args))
        return Run(root / name, code, err.getvalue(), out.getvalue())
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks), "-m"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    done = subprocess.run([*launcher, "ltxc", *args], cwd=root, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)  # fmt: skip
    return Run(root / name, done.returncode, done.stderr, done.stdout)


def assert_close(got: dict[int, float], want: dict[int, float], rel: float) -> None:
    """The same steps, and each loss within `rel` of the other (0: bit-equal)."""
    assert sorted(got) == sorted(want)
    far = {s: (got[s], want[s]) for s in want if not math.isclose(got[s], want[s], rel_tol=rel, abs_tol=0.0)}
    assert not far, f"losses differ beyond rel {rel} at steps (got, want): {far}"


def straight(runs, mode: str) -> Run:  # type: ignore[no-untyped-def]
    """The uninterrupted 2-rank run (batch 1 per rank) that the other runs are compared with."""
    return runs(f"straight-2x1-{mode}")


def stopped(runs, mode: str) -> Run:  # type: ignore[no-untyped-def]
    """The same run on 2 ranks, stopped (and checkpointed) after STOP_AT steps."""
    return runs(f"stopped-2x1-{mode}")


# -- 1. two processes vs one at the same global batch ---------------------------------------------------


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_two_ranks_match_one_process_at_the_same_global_batch(runs, mode: str) -> None:  # type: ignore[no-untyped-def]
    one = runs(f"one-1x2-{mode}")
    two = straight(runs, mode)
    assert sorted(two.losses()) == list(range(1, STEPS + 1))
    assert_close(two.losses(), one.losses(), REL)
    assert all(math.isfinite(v) for v in two.losses().values())

    # Sharding: each of the 2 ranks holds about half of the parameter bytes; the one process holds them all.
    (world, alone, whole), = one.holds().values()  # fmt: skip
    assert world == 1 and alone == whole
    held = two.holds()
    assert sorted(held) == [0, 1]
    rounding = 0.01  # the report prints MiB with 2 decimals
    for rank, (world, mib, total) in held.items():
        assert world == 2
        assert math.isclose(total, whole, abs_tol=rounding)
        assert abs(mib - total / 2) <= 0.1 * total / 2 + rounding, f"rank {rank} holds {mib} of {total} MiB"
    assert math.isclose(sum(mib for _, mib, _ in held.values()), whole, rel_tol=0.05, abs_tol=2 * rounding)


# -- 2. torchrun trains and resumes ---------------------------------------------------------------------


def test_torchrun_resumes_exactly(runs) -> None:  # type: ignore[no-untyped-def]
    first = stopped(runs, "full")
    assert sorted(first.losses()) == list(range(1, STOP_AT + 1))
    checkpoints = first.run_dir / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == f"step-{STOP_AT:08d}"
    meta = json.loads((checkpoints / f"step-{STOP_AT:08d}" / "meta.json").read_text())
    assert (meta["step"], meta["world_size"], meta["global_batch"]) == (STOP_AT, 2, 2)

    # Resume into the same run directory (checkpoint.resume = "auto"), here with a copy of it (made when the
    # stopped run had finished) so the stopped run stays at step STOP_AT for the next test.
    assert RUNS["resumed-2x1-full"].copy_of == "stopped-2x1-full"
    resumed_dir = first.run_dir.parent / "resumed-2x1-full"
    resumed = runs("resumed-2x1-full")
    assert resumed.run_dir == resumed_dir
    own = resumed_dir / "checkpoints" / f"step-{STOP_AT:08d}"  # the copy's checkpoint, found by resume = "auto"
    assert f"resumed from {own} at step {STOP_AT}" in resumed.stderr
    want = straight(runs, "full").losses()
    # metrics.jsonl is appended to: steps 1..STOP_AT from the first invocation, the rest from the second
    assert_close(resumed.losses(), want, 0.0)  # same layout, same arithmetic: bit-equal
    assert (resumed_dir / "checkpoints" / "latest").read_text().strip() == f"step-{STEPS:08d}"


# -- 3. N ranks -> M ranks ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_a_two_rank_checkpoint_resumes_on_one_rank(runs, mode: str) -> None:  # type: ignore[no-untyped-def]
    checkpoint = stopped(runs, mode).run_dir / "checkpoints" / f"step-{STOP_AT:08d}"
    one = runs(f"resharded-1x2-{mode}")  # 1 rank x batch 2, --resume CHECKPOINT
    assert f"resumed from {checkpoint} at step {STOP_AT}" in one.stderr
    want = {s: v for s, v in straight(runs, mode).losses().items() if s > STOP_AT}
    assert_close(one.losses(), want, REL)
    meta = json.loads((one.run_dir / "checkpoints" / f"step-{STEPS:08d}" / "meta.json").read_text())
    assert (meta["world_size"], meta["global_batch"]) == (1, 2)


def test_a_different_global_batch_is_refused_on_resume(runs) -> None:  # type: ignore[no-untyped-def]
    checkpoint = stopped(runs, "full").run_dir / "checkpoints" / f"step-{STOP_AT:08d}"
    refused = runs("resharded-1x1-full", check=False)  # 1 rank x batch 1, --resume CHECKPOINT
    assert RUNS["resharded-1x1-full"].resume_from == "stopped-2x1-full" and checkpoint.is_dir()
    assert refused.returncode == 2, refused.stderr[-3000:]  # a user error, not a traceback
    assert "global batch" in refused.stderr and not (refused.run_dir / "checkpoints").exists()


def test_a_resume_with_the_same_global_batch_split_otherwise_continues_exactly_or_is_refused(runs) -> None:  # type: ignore[no-untyped-def]
    # 2 ranks x batch 1 -> 1 rank x batch 1 x grad_accum 2: the same samples per step, cut into batches otherwise
    checkpoint = stopped(runs, "full").run_dir / "checkpoints" / f"step-{STOP_AT:08d}"
    run = runs("resharded-1x1x2-full", check=False)  # 1 rank x batch 1 x grad_accum 2, --resume CHECKPOINT
    assert RUNS["resharded-1x1x2-full"].resume_from == "stopped-2x1-full" and checkpoint.is_dir()
    if run.returncode == 0:
        want = {s: v for s, v in straight(runs, "full").losses().items() if s > STOP_AT}
        assert_close(run.losses(), want, REL)
    else:
        assert run.returncode == 2 and "grad_accum" in run.stderr, run.stderr[-3000:]


# -- 4. HSDP --------------------------------------------------------------------------------------------


def test_hsdp_trains_and_matches_plain_sharding(runs) -> None:  # type: ignore[no-untyped-def]
    hsdp = runs("hsdp-2x1-full")  # 2 ranks x batch 1, parallel.replicate = 2
    losses = hsdp.losses()
    assert all(math.isfinite(v) for v in losses.values())
    assert_close(losses, straight(runs, "full").losses(), REL)
    assert (hsdp.run_dir / "checkpoints" / f"step-{STEPS:08d}" / "meta.json").exists()
    # a (replicate 2, shard 1) mesh: each rank is a whole replica
    for world, mib, total in hsdp.holds().values():
        assert world == 2 and mib == total
