"""`ltxc verify SPEC`: the tiny spec equals its reference pipeline; deliberately broken copies do not.

Run in-process through the CLI (tests/conftest.py run_cli). Each broken copy is a child spec that overrides one
`[transformer.call]` expression, the kind of mistake a new spec makes.

Run: `pytest -q tests/test_verify.py` (CPU, tiny models, no downloads).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import TINY_LTX, run_cli

from ltxc.commands.verify import build_reference, helper_checks
from ltxc.compiler import compile_spec
from ltxc.errors import UserError
from ltxc.spec import load_spec

CHECKS = ("pack", "unpack", "normalise", "denormalise", "latents", "frames")


def differences(out: str) -> dict[str, float]:
    """{check: max |Δ|} from verify's output."""
    return {m[1]: float(m[2]) for m in re.finditer(r"^\s+(\w+)\s+max \|Δ\| = (\S+)", out, re.M)}


def child_spec(directory: Path, name: str, call: str) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(f'[model]\nname = "{name}"\nextends = "{TINY_LTX.as_posix()}"\n\n[transformer.call]\n{call}\n')
    return path


def test_tiny_spec_verifies(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "verify", str(TINY_LTX))
    print(out)
    assert code == 0, out + err
    found = differences(out)
    assert set(found) == set(CHECKS)
    assert all(value <= 1e-4 for value in found.values()), found
    assert "PASS" in out and "diffusers:LTXPipeline" in out


def test_other_size_without_cfg_verifies(capsys: pytest.CaptureFixture[str]) -> None:
    args = ("--frames", "17", "--height", "96", "--width", "64", "--steps", "3", "--guidance", "1", "--seed", "4")
    code, out, err = run_cli(capsys, "verify", str(TINY_LTX), *args)
    assert code == 0, out + err
    assert "17x96x64" in out and "3 steps" in out and "guidance 1" in out


@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("wrong-rope", 'rope_interpolation_scale = "[1.0, spatial_compression, spatial_compression]"'),
        ("wrong-timestep", 'timestep = "float32(sigma * 999)"'),
    ],
)
def test_a_broken_spec_fails_with_the_difference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, call: str
) -> None:
    code, out, err = run_cli(capsys, "verify", str(child_spec(tmp_path, name, call)))
    print(out)
    assert code == 1, out + err
    found = differences(out)
    assert found["latents"] > 1e-4 and found["frames"] > 1e-4  # the difference is shown, and it is large
    assert found["pack"] == 0 and found["normalise"] == 0  # the geometry and normaliser are still right
    assert re.search(r"latents .* FAIL", out) and "FAIL: tolerance" in out


def test_a_loose_tolerance_accepts_a_broken_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = child_spec(tmp_path, "wrong-timestep", 'timestep = "float32(sigma * 999)"')
    code, out, _ = run_cli(capsys, "verify", str(spec), "--steps", "2", "--tolerance", "10")
    assert code == 0 and "PASS" in out


def test_a_wrong_scaling_factor_shows_in_the_frames(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The helpers check the normaliser's formula; its numbers show in the decode (latents agree, frames don't)."""
    path = tmp_path / "wrong-scale.toml"
    path.write_text(
        f'[model]\nname = "wrong-scale"\nextends = "{TINY_LTX.as_posix()}"\n\n[latent]\n'
        'normalise = { kind = "mean_std", mean = "vae.latents_mean", std = "vae.latents_std", '
        "scaling_factor = 0.5 }\n"
    )
    code, out, _ = run_cli(capsys, "verify", str(path), "--steps", "2")
    found = differences(out)
    assert code == 1
    assert found["normalise"] == 0 and found["latents"] == 0
    assert found["frames"] > 1e-4


def test_missing_helpers_are_skipped_with_a_note() -> None:
    plan = compile_spec(load_spec(TINY_LTX))
    from diffusers import DiffusionPipeline

    checks = helper_checks(DiffusionPipeline, plan, plan.components())
    assert all(c.ok and c.max_abs is None and "skipped" in c.note for c in checks)


def test_a_component_the_reference_needs_is_a_clear_error() -> None:
    from diffusers import LTXPipeline

    plan = compile_spec(load_spec(TINY_LTX))
    components = {role: plan.components()[role] for role in ("vae", "text_encoder", "tokenizer", "transformer")}
    with pytest.raises(UserError, match=r"needs a 'scheduler' component, which the spec lacks"):
        build_reference(LTXPipeline, components)


def test_a_bad_size_is_a_user_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "verify", str(TINY_LTX), "--frames", "16")
    assert code == 2
    assert "16 frames is not a valid count" in err
