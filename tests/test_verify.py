"""`ltxc verify SPEC`: the tiny spec equals its reference pipeline; deliberately broken copies do not.

Run in-process through the CLI (tests/conftest.py run_cli). Each broken copy is a child spec that overrides one
`[transformer.call]` expression (or a schedule or decode number), the kind of mistake a new spec makes; the
report names the first stage that departs. Also: the per-stage rows of every tiny spec, `--dtype` (the root
spec's float32 roles stay float32) and the note on a shift the scheduler's config does not apply.

Run: `pytest -q tests/test_verify.py` (CPU, tiny models, no downloads).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import TINY_LTX, TINY_LTX2, TINY_WAN, run_cli

from ltxc.commands.verify import build_reference, helper_checks
from ltxc.commands.verify_settings import shift_notes, with_dtype
from ltxc.compiler import compile_spec
from ltxc.errors import UserError
from ltxc.spec import load_spec

HELPERS = ("pack", "unpack", "normalise", "denormalise")
# The stage rows of each tiny spec, in pipeline order (skipped rows included: Wan's call reads no text.mask).
TEXT = ("text.embeds", "text.mask", "negative.embeds", "negative.mask")
SCHEDULE = ("sigmas", "timesteps")
STAGES = {
    "ltx": (*TEXT, *SCHEDULE, "noise", "input.timestep", "pred.uncond", "pred.cond", "step1", "latents", "frames"),
    "ltx-2.3": (
        "text.embeds",
        "text.mask",
        "text.audio_embeds",
        "negative.embeds",
        "negative.mask",
        "negative.audio_embeds",
        *SCHEDULE,
        "noise",
        "noise.audio",
        "input.timestep",  # each keyword whose call expression reads the noise level, in call order
        "input.sigma",
        *(f"pred.{role}{stream}" for role in ("uncond", "cond", "stg", "modality") for stream in ("", ".audio")),
        "step1",
        "step1.audio",
        "latents",
        "latents.audio",
        "frames",
        "audio.latents",  # the decoded sound ([streams.audio.decode]): the VAE's input, then the waveform
        "audio.waveform",
    ),
    "wan-2.1": (*TEXT, *SCHEDULE, "noise", "input.timestep", "pred.uncond", "pred.cond", "step1", "latents", "frames"),
}
TINY = {"ltx": TINY_LTX, "ltx-2.3": TINY_LTX2, "wan-2.1": TINY_WAN}
ROW = re.compile(r"^  ([\w.]+)\s+(?:max \|Δ\| = (\S+)|skipped|-)\s+(ok|FAIL)\b", re.M)


def differences(out: str) -> dict[str, float]:
    """{row: max |Δ|} from verify's output (skipped rows have none)."""
    return {m[1]: float(m[2]) for m in ROW.finditer(out) if m[2] is not None}


def rows(out: str) -> list[str]:
    """Every row's name, in the order printed."""
    return [m[1] for m in ROW.finditer(out)]


def first_departure(out: str) -> str:
    """The stage the last line names."""
    last = out.strip().splitlines()[-1]
    assert last.startswith("first departing stage: "), out
    return last.removeprefix("first departing stage: ").split(",")[0]


def child_spec(directory: Path, name: str, call: str) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(f'[model]\nname = "{name}"\nextends = "{TINY_LTX.as_posix()}"\n\n[transformer.call]\n{call}\n')
    return path


def test_tiny_spec_verifies(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "verify", str(TINY_LTX))
    print(out)
    assert code == 0, out + err
    found = differences(out)
    assert rows(out) == [*HELPERS, *STAGES["ltx"]]
    assert all(value == 0 for value in found.values()), found
    assert "PASS" in out and "diffusers:LTXPipeline" in out and "first departing" not in out


def test_other_size_without_cfg_verifies(capsys: pytest.CaptureFixture[str]) -> None:
    args = ("--frames", "17", "--height", "96", "--width", "64", "--steps", "3", "--guidance", "1", "--seed", "4")
    code, out, err = run_cli(capsys, "verify", str(TINY_LTX), *args)
    assert code == 0, out + err
    assert "17x96x64" in out and "3 steps" in out and "guidance 1" in out


@pytest.mark.parametrize(
    ("name", "call", "departs"),
    [
        ("wrong-rope", 'rope_interpolation_scale = "[1.0, spatial_compression, spatial_compression]"', "pred.uncond"),
        # the noise level the transformer gets is a stage of its own, before the first prediction
        ("wrong-timestep", 'timestep = "float32(sigma * 999)"', "input.timestep"),
    ],
)
def test_a_broken_spec_fails_with_the_difference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, call: str, departs: str
) -> None:
    code, out, err = run_cli(capsys, "verify", str(child_spec(tmp_path, name, call)))
    print(out)
    assert code == 1, out + err
    found = differences(out)
    assert found["latents"] > 1e-4 and found["frames"] > 1e-4  # the difference is shown, and it is large
    assert found["pack"] == 0 and found["normalise"] == 0  # the geometry and normaliser are still right
    assert re.search(r"latents .* FAIL", out) and "FAIL: tolerance" in out
    # the text, the schedule and the noise still agree: the first transformer call is where it departs
    assert all(found[name] == 0 for name in (*TEXT, *SCHEDULE, "noise")), found
    assert found["pred.uncond"] > 0
    assert first_departure(out) == departs


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
    assert first_departure(out) == "frames"  # a late stage: every earlier one is equal


@pytest.mark.parametrize("family", TINY)
def test_every_stage_has_a_row(family: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Text tensors, schedule, noise, each role's first prediction, step 1, final latents, frames: in order."""
    code, out, err = run_cli(capsys, "verify", str(TINY[family]), "--steps", "2")
    print(out)
    assert code == 0, out + err
    assert rows(out) == [*HELPERS, *STAGES[family]]
    assert all(value == 0 for value in differences(out).values()), out


def test_a_wrong_schedule_number_departs_at_the_sigmas(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A resolution shift the scheduler's config does not have: the schedule differs from step 0, and a note
    says that the spec's shift and the scheduler's config disagree."""
    path = tmp_path / "wrong-shift.toml"
    path.write_text(
        f'[model]\nname = "wrong-shift"\nextends = "{TINY_LTX.as_posix()}"\n\n[sampler]\n'
        'shift = { kind = "resolution", base_seq_len = 1024, max_seq_len = 4096, base_shift = 0.5, max_shift = 2.05 }\n'
    )
    # three steps: with two, the terminal stretch (shift_terminal) maps any shift to [1, 0.1]
    code, out, _ = run_cli(capsys, "verify", str(path), "--steps", "3")
    print(out)
    assert code == 1
    found = differences(out)
    assert found["text.embeds"] == 0 and found["sigmas"] > 1e-4
    assert first_departure(out) == "sigmas"
    assert "note: [sampler] shift differs from the scheduler's config" in out and "base_shift 0.5 vs 0.95" in out


def test_a_shift_the_scheduler_ignores_is_noted(tmp_path: Path) -> None:
    """A resolution shift on a scheduler without dynamic shifting (e.g. a checkpoint's config) is one note."""
    path = tmp_path / "static.toml"
    path.write_text(
        f'[model]\nname = "static"\nextends = "{TINY_LTX.as_posix()}"\n\n[components.scheduler]\n'
        "config = { num_train_timesteps = 1000, shift = 1.0, use_dynamic_shifting = false }\n"
    )
    plan = compile_spec(load_spec(path))
    notes = shift_notes(plan, plan.components()["scheduler"])
    assert notes[0].startswith("[sampler] shift differs from the scheduler's config (FlowMatchEulerDiscreteScheduler)")
    assert "use_dynamic_shifting = false" in notes[0]
    tiny = compile_spec(load_spec(TINY_WAN))  # fixed [flow] shift 3 = the config's flow_shift 3
    assert shift_notes(tiny, tiny.components()["scheduler"]) == []


def test_dtype_keeps_the_roles_the_real_spec_keeps_in_float32() -> None:
    """The tiny specs set float32 everywhere; --dtype follows the real spec they extend (Wan's VAE is float32)."""
    plan, note = with_dtype(compile_spec(load_spec(TINY_WAN)), "bfloat16")
    assert {role: r.dtype for role, r in plan.recipes.items() if r.kind == "module"} == {
        "transformer": "bfloat16",
        "vae": "float32",
        "text_encoder": "bfloat16",
    }
    assert "vae kept in float32, as the root spec" in note and "wan-2.1.toml" in note
    plan, _ = with_dtype(compile_spec(load_spec(TINY_LTX2)), "bfloat16")
    assert all(r.dtype == "bfloat16" for r in plan.recipes.values() if r.kind == "module")
    plan, note = with_dtype(compile_spec(load_spec(TINY_WAN)), "float32")
    assert all(r.dtype == "float32" for r in plan.recipes.values()) and "kept" not in note


@pytest.mark.parametrize("family", TINY)
def test_verify_in_bfloat16(family: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every family at its real spec's precision, with one flag: bit-equal to the reference (issue 11)."""
    code, out, err = run_cli(capsys, "verify", str(TINY[family]), "--dtype", "bfloat16", "--steps", "3")
    print(out)
    assert out.splitlines()[0].endswith(", bfloat16")
    assert "(bfloat16)" in out  # the transformer's inputs and predictions are bf16
    assert code == 0, out + err
    assert all(value == 0 for value in differences(out).values()), out


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
