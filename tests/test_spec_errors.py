"""User errors in specs: every one is `FILE:LINE: key.path: message`, exit code 2, and no traceback.

Covers unknown keys, wrong types, missing required keys, bad `[transformer.call]` / `[flow]` expressions,
component classes outside the allowlist or of the wrong kind, `extends` cycles and missing parents,
invalid TOML, several errors reported at once, the real `python -m ltxc` entry point, and `pretrained`
paths resolved relative to the spec that wrote them.

Each bad spec is written into `tmp_path` — a child that `extends` the tiny spec by absolute path and
changes one thing, or an edited copy of `specs/` (the `spec_dir` fixture) — and compiled in-process with
`ltxc compile SPEC --out DIR`. The expected line is found by searching the written text, never hard-coded.

Run: `pytest -q tests/test_spec_errors.py`
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY_LTX, run_cli

# `FILE:LINE: rest` — the file part is non-greedy so a `key.path: message` rest keeps its colons.
LINE_RE = re.compile(r"^(?P<file>.+?):(?P<line>\d+): (?P<rest>.*)$")


def child_spec(tmp_path: Path, body: str, name: str = "child.toml", parent: Path = TINY_LTX) -> Path:
    """A spec that extends `parent` (by absolute path) and adds `body`."""
    path = tmp_path / name
    path.write_text(f"[model]\nname = \"child\"\nextends = '{parent}'\n\n{body}")
    return path


def line_of(path: Path, needle: str) -> int:
    """The 1-based line of the one line in `path` that contains `needle`."""
    hits = [n for n, line in enumerate(path.read_text().splitlines(), start=1) if needle in line]
    assert len(hits) == 1, f"{needle!r} should occur on exactly one line of {path}, found lines {hits}"
    return hits[0]


def compile_cli(capsys: pytest.CaptureFixture[str], spec: Path, out: Path) -> tuple[int, str, str]:
    return run_cli(capsys, "compile", str(spec), "--out", str(out))


def parse(line: str) -> tuple[Path, int, str]:
    match = LINE_RE.match(line)
    assert match, f"not FILE:LINE: ...: {line!r}"
    return Path(match["file"]), int(match["line"]), match["rest"]


def assert_errors(
    capsys: pytest.CaptureFixture[str], spec: Path, out: Path, expected: list[tuple[Path, int, str]]
) -> list[str]:
    """Compile `spec`; check exit 2, no plan, no traceback, and one `FILE:LINE: key.path: ` line per expected
    (file, line, key path), in any order. Returns the messages (what follows `key.path: `)."""
    code, _stdout, err = compile_cli(capsys, spec, out)
    assert code == 2, err
    assert "Traceback" not in err
    assert not (out / "plan.json").exists()
    lines = err.splitlines()
    assert len(lines) == len(expected), f"expected {len(expected)} error line(s), got:\n{err}"
    got = {}
    for line in lines:
        file, number, rest = parse(line)
        key, sep, message = rest.partition(": ")
        assert sep, f"no key path in {line!r}"
        assert message.strip(), f"empty message in {line!r}"
        got[(file.resolve(), number, key)] = message
    want = {(file.resolve(), number, key) for file, number, key in expected}
    assert set(got) == want, f"got:\n{err}"
    return [got[(file.resolve(), number, key)] for file, number, key in expected]


def assert_one_error(capsys: pytest.CaptureFixture[str], spec: Path, out: Path, line: int, key: str) -> str:
    """Exactly one error line, at `spec:line`, naming `key`; returns its message."""
    (message,) = assert_errors(capsys, spec, out, [(spec, line, key)])
    return message


# --- schema errors ---------------------------------------------------------------------------------------


def test_unknown_key_suggests_the_right_one(tmp_path, capsys):
    spec = child_spec(tmp_path, "[geometry]\nlatent_chanels = 128\n")
    message = assert_one_error(
        capsys, spec, tmp_path / "out", line_of(spec, "latent_chanels"), "geometry.latent_chanels"
    )
    assert "unknown key" in message
    assert "'latent_channels'" in message


def test_unknown_top_level_table(tmp_path, capsys):
    spec = child_spec(tmp_path, "[geometri]\nlatent_channels = 128\n")
    message = assert_one_error(capsys, spec, tmp_path / "out", line_of(spec, "[geometri]"), "geometri")
    assert "'geometry'" in message


def test_wrong_type(tmp_path, capsys):
    spec = child_spec(tmp_path, '[geometry]\nlatent_channels = "128"\n')
    message = assert_one_error(
        capsys, spec, tmp_path / "out", line_of(spec, "latent_channels"), "geometry.latent_channels"
    )
    assert "integer" in message
    assert "string" in message


def test_wrong_type_inside_inline_table(tmp_path, capsys):
    spec = child_spec(tmp_path, '[geometry]\nframes = { multiple = "8", offset = 1 }\n')
    message = assert_one_error(capsys, spec, tmp_path / "out", line_of(spec, "frames = "), "geometry.frames.multiple")
    assert "integer" in message


def test_bad_enum_value(tmp_path, capsys):
    spec = child_spec(tmp_path, '[geometry]\nlayout = "grd"\n')
    message = assert_one_error(capsys, spec, tmp_path / "out", line_of(spec, "layout"), "geometry.layout")
    assert "'tokens'" in message and "'grid'" in message


def test_missing_required_key_points_at_table_header(spec_dir, tmp_path, capsys):
    spec = spec_dir / "ltx.toml"
    text = spec.read_text()
    assert "resolution_multiple = 32" in text
    spec.write_text("\n".join(line for line in text.splitlines() if not line.startswith("resolution_multiple")))
    message = assert_one_error(
        capsys, spec, tmp_path / "out", line_of(spec, "[geometry]"), "geometry.resolution_multiple"
    )
    assert "missing" in message


def test_missing_required_key_in_parent_points_at_parent(spec_dir, tmp_path, capsys):
    """The tiny spec has no [geometry]: the error is in the parent it extends, and says so."""
    parent = spec_dir / "ltx.toml"
    text = parent.read_text()
    parent.write_text("\n".join(line for line in text.splitlines() if not line.startswith("resolution_multiple")))
    child = spec_dir / "tiny" / "ltx.toml"
    assert_errors(
        capsys, child, tmp_path / "out", [(parent, line_of(parent, "[geometry]"), "geometry.resolution_multiple")]
    )


def test_line_numbers_survive_strings_with_escaped_quotes(tmp_path, capsys):
    """A basic string holding `\\"` followed by a bracket must not make the locator think an array is open."""
    spec = child_spec(tmp_path, '[sampler]\nnegative_prompt = "a 5\\" [tall figure"\nsteps = "x"\n')
    assert_one_error(capsys, spec, tmp_path / "out", line_of(spec, "steps"), "sampler.steps")


def test_line_numbers_after_multiline_array_and_string(tmp_path, capsys):
    spec = child_spec(
        tmp_path,
        '[sampler]\nnegative_prompt = """\nsteps = 3\n[geometry]\n"""\nguidance = [\n  1,\n  2,\n]\nsteps = 1.5\n',
    )
    # The decoy `steps = 3` sits inside the multi-line string; the real one follows the multi-line array.
    assert_errors(
        capsys,
        spec,
        tmp_path / "out",
        [
            (spec, line_of(spec, "guidance"), "sampler.guidance"),
            (spec, line_of(spec, "steps = 1.5"), "sampler.steps"),
        ],
    )


# --- expressions -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "hint"),
    [
        ("sigmaa * 1000", "did you mean 'sigma'"),
        ("__import__('os').system('x')", "call"),
        ("lambda: sigma", "lambda"),
        ("latents[0]", "subscript"),
        ("[s for s in sigma]", "comprehension"),
        ("open('x')", "unknown op"),
        ("sigma.__class__", "unknown name"),
        ("sigma *", "not a valid expression"),
    ],
)
def test_bad_call_expression(tmp_path, capsys, expression, hint):
    spec = child_spec(tmp_path, f'[transformer.call]\ntimestep = "{expression}"\n')
    message = assert_one_error(capsys, spec, tmp_path / "out", line_of(spec, "timestep"), "transformer.call.timestep")
    assert hint in message


def test_bad_loss_weight_expression(tmp_path, capsys):
    spec = child_spec(tmp_path, '[flow]\nloss_weight = "latents * 2"\n')
    message = assert_one_error(capsys, spec, tmp_path / "out", line_of(spec, "loss_weight"), "flow.loss_weight")
    assert "'latents'" in message


def test_absurdly_deep_expression_is_a_user_error(tmp_path, capsys):
    """A pathological expression must still be one `FILE:LINE` error, not a RecursionError traceback."""
    deep = " + ".join(["sigma"] * 1500)
    spec = child_spec(tmp_path, f'[transformer.call]\ntimestep = "{deep}"\n')
    assert_one_error(capsys, spec, tmp_path / "out", line_of(spec, "timestep"), "transformer.call.timestep")


# --- component classes -----------------------------------------------------------------------------------


@pytest.fixture
def no_os_system(monkeypatch):
    """Make `os.system` explode, and record every module imported through importlib.import_module."""
    calls: list[object] = []
    imported: list[str] = []

    def system(*args, **kwargs):
        calls.append(args)
        raise AssertionError("os.system was called")

    real_import = importlib.import_module

    def recording_import(name, package=None):
        imported.append(name)
        return real_import(name, package)

    monkeypatch.setattr(os, "system", system)
    monkeypatch.setattr(importlib, "import_module", recording_import)
    return calls, imported


@pytest.mark.parametrize(
    "reference",
    ["os:system", "subprocess:Popen", "builtins:eval", "diffusersx:AutoencoderKL", "ltxcx:Thing"],
)
def test_class_outside_allowlist(tmp_path, capsys, no_os_system, reference):
    calls, imported = no_os_system
    spec = child_spec(tmp_path, f'[components.transformer]\nclass = "{reference}"\n')
    message = assert_one_error(capsys, spec, tmp_path / "out", line_of(spec, "class ="), "components.transformer.class")
    assert "allowlist" in message
    assert calls == []
    module = reference.split(":")[0]
    assert module not in imported, f"{module!r} was imported through importlib while resolving {reference!r}"


@pytest.mark.parametrize(
    ("role", "reference", "wanted"),
    [
        ("tokenizer", "diffusers:AutoencoderKLLTXVideo", "Tokenizer"),
        ("scheduler", "diffusers:AutoencoderKLLTXVideo", "Scheduler"),
        ("transformer", "diffusers:FlowMatchEulerDiscreteScheduler", "Module"),
    ],
)
def test_class_of_the_wrong_kind(tmp_path, capsys, role, reference, wanted):
    spec = child_spec(tmp_path, f'[components.{role}]\nclass = "{reference}"\n')
    message = assert_one_error(capsys, spec, tmp_path / "out", line_of(spec, "class ="), f"components.{role}.class")
    assert "is not a" in message
    assert wanted in message


@pytest.mark.parametrize("reference", ["diffusers:NoSuchModel3D", "diffusers:_private", "diffusers.nosuchmod:Thing"])
def test_class_that_does_not_exist(tmp_path, capsys, reference):
    spec = child_spec(tmp_path, f'[components.transformer]\nclass = "{reference}"\n')
    assert_one_error(capsys, spec, tmp_path / "out", line_of(spec, "class ="), "components.transformer.class")


def test_unknown_inline_config_key(tmp_path, capsys):
    spec = child_spec(
        tmp_path,
        "[components.scheduler]\nconfig = { num_train_timesteps = 1000 }\n"
        "[components.transformer]\nconfig = { num_layerz = 1 }\n",
    )
    message = assert_one_error(
        capsys, spec, tmp_path / "out", line_of(spec, "num_layerz"), "components.transformer.config.num_layerz"
    )
    assert "num_layerz" in message


def test_component_role_that_is_missing(tmp_path, capsys):
    spec = child_spec(tmp_path, '[latent]\nvae = "vea"\n')
    message = assert_one_error(capsys, spec, tmp_path / "out", line_of(spec, "vae ="), "latent.vae")
    assert "vea" in message


# --- extends ---------------------------------------------------------------------------------------------


def test_extends_cycle(tmp_path, capsys):
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text('[model]\nname = "a"\nextends = "b.toml"\n')
    b.write_text('# b comes back to a\n[model]\nname = "b"\nextends = "a.toml"\n')
    code, _, err = compile_cli(capsys, a, tmp_path / "out")
    assert code == 2
    assert "Traceback" not in err
    (line,) = err.splitlines()
    file, number, rest = parse(line)
    assert file.resolve() in (a.resolve(), b.resolve())
    assert number == line_of(file, "extends")
    assert rest.startswith("model.extends: ")
    assert "cycle" in rest
    assert "a.toml" in rest and "b.toml" in rest


def test_extends_itself(tmp_path, capsys):
    a = tmp_path / "a.toml"
    a.write_text('[model]\nname = "a"\nextends = "./a.toml"\n')
    message = assert_one_error(capsys, a, tmp_path / "out", line_of(a, "extends"), "model.extends")
    assert "cycle" in message


def test_extends_missing_file(tmp_path, capsys):
    spec = tmp_path / "a.toml"
    spec.write_text('# a spec whose parent is gone\n[model]\nname = "a"\nextends = "gone/parent.toml"\n')
    message = assert_one_error(capsys, spec, tmp_path / "out", line_of(spec, "extends"), "model.extends")
    assert "gone/parent.toml" in message
    assert "does not exist" in message


def test_extends_not_a_string(tmp_path, capsys):
    spec = tmp_path / "a.toml"
    spec.write_text('[model]\nname = "a"\nextends = 3\n')
    assert_one_error(capsys, spec, tmp_path / "out", line_of(spec, "extends"), "model.extends")


def test_non_table_components_is_a_user_error(tmp_path, capsys):
    """`components = 3` must be a schema error, not a crash in path resolution."""
    spec = tmp_path / "a.toml"
    spec.write_text(f"components = 3\n\n[model]\nname = \"a\"\nextends = '{TINY_LTX}'\n")
    message = assert_one_error(capsys, spec, tmp_path / "out", line_of(spec, "components"), "components")
    assert "table" in message or "object" in message


# --- TOML syntax and unreadable files --------------------------------------------------------------------


def test_invalid_toml(tmp_path, capsys):
    spec = tmp_path / "bad.toml"
    spec.write_text('[model]\nname = "x"\n\n[geometry\nlatent_channels = 1\n')
    code, _, err = compile_cli(capsys, spec, tmp_path / "out")
    assert code == 2
    assert "Traceback" not in err
    (line,) = err.splitlines()
    file, number, rest = parse(line)
    assert file == spec
    assert number == line_of(spec, "[geometry")
    assert "TOML" in rest


def test_invalid_toml_in_parent_names_the_parent(tmp_path, capsys):
    parent = tmp_path / "parent.toml"
    parent.write_text('[model]\nname = "p"\n\n\ndescription = "unterminated\n')
    child = child_spec(tmp_path, "", parent=parent)
    code, _, err = compile_cli(capsys, child, tmp_path / "out")
    assert code == 2
    assert "Traceback" not in err
    (line,) = err.splitlines()
    file, number, _ = parse(line)
    assert file.resolve() == parent.resolve()
    assert number == line_of(parent, "unterminated")


def test_missing_spec_file(tmp_path, capsys):
    spec = tmp_path / "nowhere.toml"
    code, _, err = compile_cli(capsys, spec, tmp_path / "out")
    assert code == 2
    assert "Traceback" not in err
    (line,) = err.splitlines()
    file, _, _ = parse(line)
    assert file == spec


# --- several errors at once ------------------------------------------------------------------------------


def test_several_schema_errors_in_different_tables(tmp_path, capsys):
    spec = child_spec(tmp_path, '[geometry]\nlatent_channels = "128"\n\n[text]\nmax_lenght = 3\n')
    assert_errors(
        capsys,
        spec,
        tmp_path / "out",
        [
            (spec, line_of(spec, "latent_channels"), "geometry.latent_channels"),
            (spec, line_of(spec, "max_lenght"), "text.max_lenght"),
        ],
    )


def test_two_unknown_keys_in_one_table_are_both_reported(tmp_path, capsys):
    spec = child_spec(tmp_path, "[geometry]\nlatent_chanels = 128\nspatial_compresion = 32\n")
    assert_errors(
        capsys,
        spec,
        tmp_path / "out",
        [
            (spec, line_of(spec, "latent_chanels"), "geometry.latent_chanels"),
            (spec, line_of(spec, "spatial_compresion"), "geometry.spatial_compresion"),
        ],
    )


def test_several_compile_errors(tmp_path, capsys):
    spec = child_spec(
        tmp_path,
        '[components.vae]\nclass = "os:system"\n\n[transformer.call]\ntimestep = "sigmaa"\n'
        '\n[flow]\nloss_weight = "open(1)"\n',
    )
    assert_errors(
        capsys,
        spec,
        tmp_path / "out",
        [
            (spec, line_of(spec, "class ="), "components.vae.class"),
            (spec, line_of(spec, "timestep"), "transformer.call.timestep"),
            (spec, line_of(spec, "loss_weight"), "flow.loss_weight"),
        ],
    )


# --- the real entry point --------------------------------------------------------------------------------


def test_console_entry_as_subprocess(tmp_path):
    spec = child_spec(tmp_path, "[geometry]\nlatent_chanels = 128\n")
    result = subprocess.run(
        [sys.executable, "-m", "ltxc", "compile", str(spec)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{spec}:{line_of(spec, 'latent_chanels')}: geometry.latent_chanels: ")
    assert not (tmp_path / ".ltxc" / "plan.json").exists()


# --- pretrained paths ------------------------------------------------------------------------------------


def compile_ok(capsys: pytest.CaptureFixture[str], spec: Path, out: Path) -> dict:
    code, _, err = compile_cli(capsys, spec, out)
    assert code == 0, err
    return json.loads((out / "plan.json").read_text())


def test_pretrained_path_is_relative_to_the_spec(tmp_path, capsys, monkeypatch):
    where = tmp_path / "models"
    where.mkdir()
    spec = child_spec(
        where,
        '[components.transformer]\nsource = "pretrained"\npretrained = "./weights"\n'
        '[components.vae]\nsource = "pretrained"\npretrained = "../vae-weights"\n'
        '[components.text_encoder]\nsource = "pretrained"\npretrained = "org/text-encoder"\n',
    )
    (where / "weights").mkdir()  # compile checks that local directories exist
    (tmp_path / "vae-weights").mkdir()
    monkeypatch.chdir(tmp_path)  # neither the cwd nor the checkout: only the spec's directory counts
    components = compile_ok(capsys, spec, tmp_path / "out")["spec"]["components"]
    transformer = components["transformer"]
    assert Path(transformer["pretrained"]).is_absolute()
    assert transformer["pretrained"] == str((where / "weights").resolve())
    assert transformer["source"] == "pretrained"
    assert "config" not in transformer
    assert components["vae"]["pretrained"] == str((tmp_path / "vae-weights").resolve())
    assert components["text_encoder"]["pretrained"] == "org/text-encoder"  # a hub id stays as written


def test_pretrained_path_in_parent_is_relative_to_the_parent(spec_dir, tmp_path, capsys):
    parent = spec_dir / "ltx.toml"
    text = parent.read_text()
    assert 'pretrained = "Lightricks/LTX-Video"\nsubfolder = "vae"' in text
    parent.write_text(
        text.replace(
            'pretrained = "Lightricks/LTX-Video"\nsubfolder = "vae"', 'pretrained = "./local"\nsubfolder = "vae"'
        )
    )
    child = spec_dir / "tiny" / "ltx.toml"
    child.write_text(
        child.read_text().replace('[components.vae]\nsource = "config"', '[components.vae]\nsource = "pretrained"')
    )
    (spec_dir / "local").mkdir()
    vae = compile_ok(capsys, child, tmp_path / "out")["spec"]["components"]["vae"]
    assert vae["pretrained"] == str((spec_dir / "local").resolve())  # not specs/tiny/local
    assert vae["subfolder"] == "vae"


# --- normaliser statistics -------------------------------------------------------------------------------


def test_literal_statistics_must_have_one_value_per_latent_channel(tmp_path, capsys):
    spec = child_spec(
        tmp_path, '[latent]\nnormalise = { kind = "mean_std", mean = [0.0, 0.1], std = "vae.latents_std" }\n'
    )
    message = assert_one_error(capsys, spec, tmp_path / "out", line_of(spec, "normalise ="), "latent.normalise.mean")
    assert "2 values" in message and "128" in message


def test_missing_local_pretrained_directory_is_a_compile_error(tmp_path, capsys):
    spec = child_spec(tmp_path, '[components.vae]\nsource = "pretrained"\npretrained = "./nowhere"\n')
    message = assert_one_error(
        capsys, spec, tmp_path / "out", line_of(spec, "pretrained ="), "components.vae.pretrained"
    )
    assert "nowhere" in message and "not a directory" in message


# --- tasks ------------------------------------------------------------------------------------------------

IMAGE_CONDITION = 'input = "image"\nplace = "frames"\n'


def test_task_condition_with_an_empty_frame_range(tmp_path, capsys):
    """A frames condition must occupy at least one latent frame."""
    body = f"[tasks.first.conditions.image]\n{IMAGE_CONDITION}frames = [1, 1]\n"
    spec = child_spec(tmp_path, body)
    message = assert_one_error(
        capsys, spec, tmp_path / "out", line_of(spec, "frames = [1, 1]"), "tasks.first.conditions.image.frames"
    )
    assert "empty" in message


def test_two_conditions_of_one_task_cannot_take_the_same_input(tmp_path, capsys):
    """`--image` must know which condition it feeds."""
    body = f"[tasks.two.conditions.a]\n{IMAGE_CONDITION}\n[tasks.two.conditions.b]\n{IMAGE_CONDITION}"
    spec = child_spec(tmp_path, body)
    line = [n for n, text in enumerate(spec.read_text().splitlines(), 1) if text.startswith('input = "image"')][-1]
    message = assert_one_error(capsys, spec, tmp_path / "out", line, "tasks.two.conditions.b.input")
    assert "'a' already takes" in message


def test_task_call_reads_only_call_names(tmp_path, capsys):
    """A task's call overrides are checked against the same vocabulary as [transformer.call]."""
    body = f'[tasks.t.call]\ntimestep = "sigma * condition.masc"\n\n[tasks.t.conditions.image]\n{IMAGE_CONDITION}'
    spec = child_spec(tmp_path, body)
    message = assert_one_error(capsys, spec, tmp_path / "out", line_of(spec, "condition.masc"), "tasks.t.call.timestep")
    assert "condition.mask" in message


def test_downscale_is_for_appended_conditions(tmp_path, capsys):
    """Only an appended reference can be smaller than the target."""
    body = f"[tasks.t.conditions.image]\n{IMAGE_CONDITION}downscale = 2\n"
    spec = child_spec(tmp_path, body)
    line = line_of(spec, "downscale = 2")
    assert_one_error(capsys, spec, tmp_path / "out", line, "tasks.t.conditions.image.downscale")


def test_task_reference_must_be_a_pipeline(tmp_path, capsys):
    """A task's reference names a diffusers pipeline class, checked at compile time."""
    body = f'[tasks.t]\nreference = "diffusers:NoSuchPipeline"\n\n[tasks.t.conditions.image]\n{IMAGE_CONDITION}'
    spec = child_spec(tmp_path, body)
    assert_one_error(capsys, spec, tmp_path / "out", line_of(spec, "NoSuchPipeline"), "tasks.t.reference")
