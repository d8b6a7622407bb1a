"""The adapter owns the call vocabulary: the names its environment builds are exactly those the compiler
checks `[transformer.call]` expressions against, so a name added on one side only fails here, not at step 1.

Run: `pytest -q tests/test_adapter.py` (CPU, no components built).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY_LTX, TINY_LTX2, TINY_WAN

from ltxc.adapter import CALL_NAMES, Adapter
from ltxc.compiler import call_names, compile_spec
from ltxc.plan import Plan
from ltxc.spec import load_spec

BATCH = 2


def environment_keys(plan: Plan, joint: bool) -> set[str]:
    """The names the adapter builds for a small batch at the spec's default size (streams joint or dummy)."""
    s = plan.sampler
    assert s.frames and s.height and s.width, "the tiny specs set a default size"
    shape = plan.geometry.latent_shape(s.frames, s.height, s.width)
    latents = torch.zeros(BATCH, shape.channels, shape.frames, shape.height, shape.width)
    sigma = torch.full((BATCH,), 0.5)
    text = {name: torch.zeros(BATCH, 8, 4) for name in plan.text_names}
    adapter = Adapter(plan)
    env = adapter.environment(latents, sigma, text, s.fps)
    if joint and plan.streams:  # a stream given (as sampling passes it) must not change the vocabulary
        streams = {name: env[f"{name}.latents"] for name in plan.streams}
        env = adapter.environment(latents, sigma, text, s.fps, streams=streams, training=False)
    return set(env)


@pytest.mark.parametrize("path", [TINY_LTX, TINY_LTX2, TINY_WAN], ids=lambda p: p.stem)
@pytest.mark.parametrize("joint", [False, True], ids=["dummy", "joint"])
def test_environment_builds_exactly_the_compiler_call_names(path: Path, joint: bool) -> None:
    plan = compile_spec(load_spec(path))
    built = environment_keys(plan, joint)
    declared = call_names(plan.spec, plan.constants)
    assert built - declared == set(), "the adapter builds names the compiler does not accept"
    assert declared - built == set(), "the compiler accepts names the adapter does not build"


def test_the_vocabulary_comparison_is_not_vacuous() -> None:
    """Every fixed name, the geometry numbers, the text names and a stream's names take part."""
    plan = compile_spec(load_spec(TINY_LTX2))
    built = environment_keys(plan, joint=False)
    assert built >= CALL_NAMES and built >= plan.constants.keys()
    assert {"text.embeds", "text.mask", "audio.latents", "audio.joint"} <= built
