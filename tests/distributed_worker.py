"""One torchrun launch for many 2-rank `ltxc` runs: the shared distributed run of the test suite.

A cold 2-rank launch costs two interpreters importing torch, diffusers and transformers (~10 s on 2 cores) before
any training. So the 2-rank runs that the tests compare are *scenarios*, all run by one launch of this module:

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/distributed_worker.py LISTING.json [NAME...]

Each scenario is one `ltxc ARGV` (`ltxc.cli.main(argv)`, the CLI's own code path from argument parsing on) run on
both ranks, in order, each in its own working directory with its own environment additions; each rank's stdout
and stderr go to files of the scenario (file-descriptor level, so library and C++ output land there too), and
each rank's exit code is recorded. Between two scenarios:

- the process group the CLI made is destroyed (`ltxc run train` does it itself, `run preprocess` leaves it to the
  process's exit), and the next scenario makes a new one;
- the next group rendezvouses on a fresh TCPStore that rank 0 hosts (torchrun's agent store, re-used, would hand
  the new group the old group's gloo addresses: re-initialising on it hangs), reached the way torchrun's ranks
  reach the agent's store (`TORCHELASTIC_USE_AGENT_STORE`, MASTER_ADDR/MASTER_PORT);
- both ranks meet on the agent store before and after each scenario; rank 0 first makes any copy the scenario
  needs (a resume into a copy of a stopped run's directory);
- a scenario that runs past its time limit has every thread's stack written to its stderr file, and the launch
  ends (faulthandler), so a hung collective fails its tests instead of the session.

The pytest side: a test module registers a *group* (`@shared_group("name")`: prepares its workspaces in-process and
returns its scenarios); the session fixture `shared_torchrun` (conftest.py) prepares and launches every group that
the selected tests need (`@pytest.mark.shared_torchrun("name")`) together, once, and hands out the results.
"""

from __future__ import annotations

import datetime
import faulthandler
import gc
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from attrs import field, frozen

SCENARIO_TIMEOUT = 300  # seconds per scenario: a hung collective ends the launch instead of the whole session
LAUNCH_SLACK = 120  # seconds for the launcher and the interpreters' start, on top of the scenarios' limits
WORLD = 2


# -- the pytest side ---------------------------------------------------------------------------------------------


@frozen
class Scenario:
    """One `ltxc ARGV` on every rank, run from `cwd` with `env` added; `copy` = (source, target): rank 0 copies a
    directory first (e.g. a finished run's, to resume into the copy)."""

    name: str
    argv: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str] = field(factory=dict)
    copy: tuple[Path, Path] | None = None


@frozen
class Result:
    """A scenario's outcome: the first non-zero rank exit code (else 0), and every rank's output, rank 0 first."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float


@frozen
class Prepared:
    """What a group's preparation made (paths its tests read) and the scenarios to run, in order."""

    workspace: Mapping[str, Any]
    scenarios: tuple[Scenario, ...]


@frozen
class GroupRun:
    """A group after the launch: its workspace and each scenario's result by name."""

    workspace: Mapping[str, Any]
    results: Mapping[str, Result]

    def __getitem__(self, name: str) -> Result:
        return self.results[name]


GROUPS: dict[str, Callable[[Path], Prepared]] = {}


def shared_group(name: str) -> Callable[[Callable[[Path], Prepared]], Callable[[Path], Prepared]]:
    """Register a group: `prepare(root) -> Prepared` makes its workspace under `root` (in the pytest process)."""

    def register(prepare: Callable[[Path], Prepared]) -> Callable[[Path], Prepared]:
        GROUPS[name] = prepare
        return prepare

    return register


def run_groups(names: Sequence[str], root: Path) -> dict[str, GroupRun]:
    """Prepare the named groups (each in its own folder under `root`), run all their scenarios in one launch, and
    split the results."""
    if not names:
        return {}
    prepared = {}
    for name in sorted(names):
        (root / name).mkdir(parents=True)
        prepared[name] = GROUPS[name](root / name)
    scenarios = [(f"{group}/{s.name}", s) for group, p in prepared.items() for s in p.scenarios]
    results = launch(scenarios, root / "launch")
    return {
        group: GroupRun(p.workspace, {s.name: results[f"{group}/{s.name}"] for s in p.scenarios})
        for group, p in prepared.items()
    }


def launch(scenarios: Sequence[tuple[str, Scenario]], root: Path) -> dict[str, Result]:
    """One `torchrun --nproc-per-node 2` of this module over `scenarios`; a scenario without a result (the launch
    ended before it) reads as exit code -1 with the launcher's output."""
    root.mkdir(parents=True)
    listing = []
    for index, (name, scenario) in enumerate(scenarios):
        out = root / f"{index:02d}-{name.replace('/', '-')}"
        out.mkdir()
        copy = [str(path) for path in scenario.copy] if scenario.copy else None
        listing.append({"name": name, "argv": list(scenario.argv), "cwd": str(scenario.cwd),
                        "env": dict(scenario.env), "copy": copy, "out": str(out)})  # fmt: skip
    (root / "scenarios.json").write_text(json.dumps(listing, indent=1), encoding="utf-8")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    done = subprocess.run([*launcher, __file__, str(root / "scenarios.json")], cwd=root, env=env,
                          capture_output=True, text=True, check=False,
                          timeout=LAUNCH_SLACK + SCENARIO_TIMEOUT * len(scenarios))  # fmt: skip
    return {item["name"]: collect(Path(item["out"]), done) for item in listing}


def collect(out: Path, done: subprocess.CompletedProcess[str]) -> Result:
    """A scenario's result from its ranks' files."""
    if not all((out / f"rank{rank}.json").is_file() for rank in range(WORLD)):
        partial = "".join(read(out / f"rank{rank}.stderr") for rank in range(WORLD))
        return Result(-1, done.stdout, f"{partial}\nthe shared launch ended (exit {done.returncode}) before this "
                      f"scenario finished on every rank; the launcher said:\n{done.stderr[-5000:]}", 0.0)  # fmt: skip
    ranks = [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(WORLD)]
    code = next((r["returncode"] for r in ranks if r["returncode"] != 0), 0)
    stdout = "".join(read(out / f"rank{rank}.stdout") for rank in range(WORLD))
    stderr = "".join(read(out / f"rank{rank}.stderr") for rank in range(WORLD))
    return Result(code, stdout, stderr, max(r["seconds"] for r in ranks))


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""


# -- the torchrun side -------------------------------------------------------------------------------------------


def serve(listing: Path, only: Sequence[str] = ()) -> int:
    """Run the scenarios of `listing` on this rank, in order (those named in `only`, when given)."""
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    timeout = datetime.timedelta(seconds=SCENARIO_TIMEOUT)
    agent = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, False, timeout)
    scenarios = json.loads(listing.read_text(encoding="utf-8"))
    unknown = set(only) - {scenario["name"] for scenario in scenarios}
    if unknown:
        raise SystemExit(f"no such scenario in {listing}: {', '.join(sorted(unknown))}")
    for index, scenario in enumerate(s for s in scenarios if not only or s["name"] in only):
        # a fresh store for this scenario's group, hosted by rank 0, its port passed on through the agent's store
        store = dist.TCPStore("127.0.0.1", 0, world, True, timeout, wait_for_workers=False) if rank == 0 else None
        if store is not None:
            agent.set(f"tests/{index}/port", str(store.port))
            if scenario["copy"]:
                shutil.copytree(*scenario["copy"])
        port = agent.get(f"tests/{index}/port").decode()
        meet(agent, f"tests/{index}/start", world)
        code, seconds = run_one(scenario, rank, {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
        out = Path(scenario["out"])
        (out / f"rank{rank}.json").write_text(json.dumps({"returncode": code, "seconds": seconds}), encoding="utf-8")
        meet(agent, f"tests/{index}/end", world)
        del store
    return 0


def meet(store: Any, key: str, world: int) -> None:
    """Wait until every rank has reached `key` (a counter on the agent's store)."""
    store.add(key, 1)
    deadline = time.monotonic() + SCENARIO_TIMEOUT
    while int(store.add(key, 0)) < world:
        if time.monotonic() > deadline:
            raise TimeoutError(f"not every rank reached {key} within {SCENARIO_TIMEOUT} s")
        time.sleep(0.01)


def run_one(scenario: Mapping[str, Any], rank: int, rendezvous: Mapping[str, str]) -> tuple[int, float]:
    """`ltxc.cli.main(argv)` with the scenario's cwd, env and output files; (exit code, seconds)."""
    import torch.distributed as dist

    from ltxc.cli import main

    out = Path(scenario["out"])
    began = time.monotonic()
    with redirected(out / f"rank{rank}.stdout", out / f"rank{rank}.stderr") as stderr, \
            environment({**scenario["env"], **rendezvous}), working_directory(Path(scenario["cwd"])):  # fmt: skip
        faulthandler.dump_traceback_later(SCENARIO_TIMEOUT, exit=True, file=stderr)
        try:
            code = main(scenario["argv"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except BaseException:  # recorded as the run's failure, with its traceback
            traceback.print_exc()
            code = 1
        finally:
            faulthandler.cancel_dump_traceback_later()
            if dist.is_initialized():
                dist.destroy_process_group()
    gc.collect()
    return code, time.monotonic() - began


@contextmanager
def redirected(stdout: Path, stderr: Path) -> Iterator[Any]:
    """File descriptors 1 and 2 (and so sys.stdout / sys.stderr, and C++ output) to these files; yields stderr's."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            yield err
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


@contextmanager
def environment(additions: Mapping[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in additions}
    os.environ.update(additions)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def working_directory(path: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


if __name__ == "__main__":  # LISTING.json [NAME...]
    raise SystemExit(serve(Path(sys.argv[1]), sys.argv[2:]))
