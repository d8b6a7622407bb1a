"""Which plan a `ltxc run` command uses: `--plan`, else `.ltxc/plan.json`, else the embedded tiny default."""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from ltxc.plan import Plan

DEFAULT_PLAN = Path(".ltxc") / "plan.json"
# The embedded default: a tiny random-weight spec with real geometry, so every command runs on a laptop.
EMBEDDED_SPEC = Path("tiny") / "ltx.toml"


def specs_dir() -> Path:
    """The shipped specs (inside the installed package, or the checkout's `specs/`)."""
    packaged = resources.files("ltxc") / "specs"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "specs"


def resolve_plan(plan: str | Path | None) -> Plan:
    """Load `plan` if given, else `.ltxc/plan.json` if present, else compile the embedded default (and say so)."""
    from ltxc.compiler import compile_spec, load_plan
    from ltxc.spec import load_spec

    if plan is not None:
        return load_plan(plan)
    if DEFAULT_PLAN.exists():
        return load_plan(DEFAULT_PLAN)
    spec = specs_dir() / EMBEDDED_SPEC
    print(f"no plan at {DEFAULT_PLAN}: using the embedded tiny default ({spec})", file=sys.stderr)
    return compile_spec(load_spec(spec))
