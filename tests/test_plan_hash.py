"""The plan hash of every shipped spec is pinned.

Preprocessed caches and training checkpoints are keyed by the plan hash (`compile_spec(load_spec(path)).hash`):
a cache made with one hash is refused by a plan with another, and a run resumes only under the plan it started
with. A refactor that renames classes or moves code must therefore leave every shipped spec's hash as it was, or a
user's existing caches and checkpoints silently stop matching. Covers:
- each spec in specs/ (not specs/runs/, which are run configs) compiles to its pinned hash;
- every shipped spec has a pinned hash (a new spec without one fails, naming it), and every pin names a spec.

Run: `pytest -q tests/test_plan_hash.py`
"""

from __future__ import annotations

import pytest
from conftest import SPECS

# Measured before the structure refactor of issue 10 (spec path relative to specs/ -> plan hash).
PINNED = {
    "ltx-2.3.toml": "2cdb1e740518afb77ae7be6181ccc189be1290388728978de5c4dabda6093eda",
    "ltx.toml": "84e5cf64462a9252af2ee52ebeb9fb9788639b5d634588b1a18523d4c9894fac",
    "tiny/ltx-2.3.toml": "1de2b0161fc78823af6619ba4a6974bb3e6502853af71d1f42ccf6c9732c0d97",
    "tiny/ltx.toml": "0163f5f149587fa2a40c40b497e0c6c8a6deea595c5d76d918e3a5d9c92648d0",
    "tiny/wan-2.1.toml": "ac792e349066359e92c9528a46633ea080f6e8b8990bc331bb83cea4c906c9a6",
    "wan-2.1.toml": "605fac930d423e0908bcd92b5569318185de57c710bcdc68323d0f18ad33f2c7",
}

CHANGED = """\
the plan hash of specs/{name} changed:
  pinned   {pinned}
  computed {computed}
Preprocessed caches and training checkpoints are keyed by this hash: with a new hash, a user's existing cache no
longer matches (it is refused or rebuilt) and their runs no longer resume. A rename or a move of code must not
change what goes into the hash; find what did and keep its hashed form as it was.
If the change is intended (the compiled model really differs), update PINNED in tests/test_plan_hash.py and say in
the change's notes that caches and checkpoints made with this spec must be rebuilt."""


def shipped_specs() -> list[str]:
    """Every model spec shipped in specs/ (specs/runs/ holds run configs), relative to specs/."""
    runs = SPECS / "runs"
    return sorted(p.relative_to(SPECS).as_posix() for p in SPECS.rglob("*.toml") if runs not in p.parents)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_plan_hash_is_pinned(name: str) -> None:
    from ltxc.compiler import compile_spec
    from ltxc.spec import load_spec

    path = SPECS / name
    assert path.is_file(), f"specs/{name} has a pinned hash but no longer exists: remove it from PINNED"
    computed = compile_spec(load_spec(path)).hash
    assert computed == PINNED[name], CHANGED.format(name=name, pinned=PINNED[name], computed=computed)


def test_every_shipped_spec_has_a_pinned_hash() -> None:
    unpinned = [name for name in shipped_specs() if name not in PINNED]
    assert not unpinned, (
        f"no pinned plan hash for {', '.join(f'specs/{name}' for name in unpinned)}: add each to PINNED in "
        "tests/test_plan_hash.py with the hash `compile_spec(load_spec(path)).hash` gives "
        "(caches and checkpoints are keyed by it, so it must not change unnoticed)"
    )
    assert set(PINNED) <= set(shipped_specs()), "a pinned spec is not shipped any more: remove it from PINNED"
