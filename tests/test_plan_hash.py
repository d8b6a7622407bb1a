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

# Issue 15 added the FLUX.1 specs (their new keys default to unset, so the other specs keep their hashes); the
# LTX-2.3 pins follow that issue's [lora] comfyui_names change (commit 2d86d88).
# Measured in issue 11: the hashes changed there on purpose: the sampler's arithmetic became spec data
# ([sampler] cfg, cfg_order, guidance_dtype and [latent] normalise.denormalise have defaults, so they join every
# resolved spec; the shipped specs also set input_dtype and decode). Caches and checkpoints made before issue 11
# must be rebuilt (`ltxc run preprocess --overwrite`). Spec path relative to specs/ -> plan hash.
PINNED = {
    "flux-1-schnell.toml": "e477cecfae23769cc9d90c199d50594022a315b476d6a68f711b7a6db3d789e4",
    "flux-1.toml": "4b213633b9b976b3c8be9484842cdf993a95f9475fd12f4b28d8a11eb3aeb184",
    "ltx-2.3.toml": "5812fda4adb70c8bd76e771de938b253deaaa512840ce253144f334fe6d27fbf",
    "ltx.toml": "dfc883c1f9aa2841906db70146fc5b12010131fb56ab1a6099d2dd4ec3178543",
    "tiny/flux-1-schnell.toml": "a6592dad8775cba2a95f961b88fa719a5f87953d988286242c6b3b9552f68be2",
    "tiny/flux-1.toml": "63aef2a4d4462c2ecb26ae74f6fcbd37acb2ccd07d0935813db35eae62c472c4",
    "tiny/ltx-2.3.toml": "16b15d346c23b442ec97da794d9f9fe5085db9dd472482c4df8dc356ae885505",
    "tiny/ltx.toml": "2fab3683c97888e32a918f87c942b834e1859243f592a513ad4d0e19f5f26a36",
    "tiny/wan-2.1.toml": "ff7f376fa87719d6e97f7b38be5f13866bf605597d6f1c088ee1c35dbc2cc8e5",
    "wan-2.1.toml": "fec381e876e32c3497400cded03804ca4dc52c8ca0611692e9a635865f95f794",
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
