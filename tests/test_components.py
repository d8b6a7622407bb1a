"""Components: pretrained round trip, lazy building, seeded inline builds, the class allowlist, config checks.

Covers `ltxc.components` through the compiler: tiny LTX-Video components saved with
`diffusers.LTXPipeline.save_pretrained` load back tensor-for-tensor through a spec that `extends` the real
`specs/ltx.toml` (absolute and `./relative` `pretrained`); nothing is built until a role is asked for (and
compiling the hub-id spec touches no network); inline-config builds are seeded, deterministic, leave the
caller's RNG alone and come back in eval mode and the spec's dtype; `resolve_component_class` refuses
anything outside diffusers/transformers/ltxc without importing it; typos in inline configs and ambiguous or
missing weight sources are compile errors that name the key.

Nothing is downloaded. Run: `cd /work/main && . .venv/bin/activate && pytest -q tests/test_components.py`
"""

from __future__ import annotations

import importlib
import json
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import diffusers
import pytest
import torch
import transformers
from conftest import SPECS, TINY_LTX, run_cli

from ltxc.compiler import compile_spec
from ltxc.components import ComponentError, ComponentRecipe, resolve_class, resolve_component_class
from ltxc.errors import ConfigError
from ltxc.plan import Plan
from ltxc.spec import load_spec

REAL_LTX = SPECS / "ltx.toml"
MODULES = ("transformer", "vae", "text_encoder")
ROLES = (*MODULES, "tokenizer", "scheduler")
CAPTION = "A red fox trots through fresh snow at dawn, steam rising from its breath."


def write_spec(path: Path, body: str) -> Path:
    """Write a spec file (TOML text) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    return path


def toml_str(value: object) -> str:
    """A TOML basic string (JSON string escaping is valid TOML for these paths)."""
    return json.dumps(str(value))


def compile_file(path: Path) -> Plan:
    return compile_spec(load_spec(path))


def tiny_plan() -> Plan:
    return compile_file(TINY_LTX)


def states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Same state_dict keys and every tensor bit-equal (and of the same dtype)."""
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        return False
    return all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


def public_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers config without the bookkeeping keys `save_pretrained` adds (`_class_name`, ...)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def pretrained_child(pretrained: str) -> str:
    """A spec that extends the real LTX-Video spec and points every role at one local directory."""
    head = f'[model]\nname = "ltx-video-local"\nextends = {toml_str(REAL_LTX)}\n'
    tables = []
    for role in ROLES:
        lines = [f"[components.{role}]", f"pretrained = {toml_str(pretrained)}"]
        if role in MODULES:
            lines.append('dtype = "float32"')
        if role == "tokenizer":
            lines.append('class = "transformers:ByT5Tokenizer"')  # the tiny model's tokenizer
        tables.append("\n".join(lines))
    return head + "\n" + "\n\n".join(tables) + "\n"


def seeded_tiny_child(path: Path, seed: int) -> Path:
    """A child of the tiny spec whose modules use `seed`."""
    body = f'[model]\nname = "ltx-video-tiny-seed{seed}"\nextends = {toml_str(TINY_LTX)}\n'
    body += "".join(f"\n[components.{role}]\nseed = {seed}\n" for role in MODULES)
    return write_spec(path, body)


# ---------------------------------------------------------------------------------------------------------
# Real-weight round trip: save tiny components as a diffusers pipeline, load them through the real spec.


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """Tiny components saved with `LTXPipeline.save_pretrained` to ROOT/ltx; returns (ROOT, components)."""
    root = tmp_path_factory.mktemp("roundtrip")
    comps = tiny_plan().components()
    built = {role: comps[role] for role in ROLES}
    # Make the VAE's statistics and scaling factor differ from the class defaults (zeros, ones, 1.0), so the
    # round trip proves they come from the saved files, not from a default construction.
    vae = built["vae"]
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        vae.latents_mean.copy_(torch.randn(vae.latents_mean.shape, generator=gen))
        vae.latents_std.copy_(torch.rand(vae.latents_std.shape, generator=gen) + 0.5)
    vae.register_to_config(scaling_factor=0.75)
    pipe = diffusers.LTXPipeline(**built)
    pipe.save_pretrained(root / "ltx")
    return root, built


@pytest.mark.parametrize("form", ["absolute", "relative"])
def test_pretrained_round_trip(
    saved: tuple[Path, dict[str, Any]], form: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, original = saved
    target = (root / "ltx").resolve()
    pretrained = str(target) if form == "absolute" else "./ltx"
    spec_file = write_spec(root / f"{form}.toml", pretrained_child(pretrained))
    monkeypatch.chdir(tmp_path)  # a relative path resolves against the spec's directory, not the cwd

    plan = compile_file(spec_file)
    real = compile_file(REAL_LTX)
    for role in ROLES:
        recipe = plan.recipes[role]
        assert recipe.source == "pretrained"
        assert Path(recipe.pretrained).resolve() == target
        assert recipe.subfolder == real.recipes[role].subfolder == role  # the real spec's subfolders are kept
        assert plan.data["components"][role]["pretrained"] == recipe.pretrained
        assert "config" not in plan.data["components"][role]

    comps = plan.components()
    for role in MODULES:
        loaded = comps[role]
        assert type(loaded) is type(original[role])
        assert states_equal(loaded, original[role]), f"{role}: loaded weights differ from the saved ones"
        assert not loaded.training
        assert all(p.dtype == torch.float32 for p in loaded.parameters())

    vae = comps["vae"]
    for key in ("latent_channels", "patch_size", "patch_size_t", "scaling_factor"):
        assert vae.config[key] == original["vae"].config[key], key
    assert (vae.config.latent_channels, vae.config.patch_size, vae.config.scaling_factor) == (128, 4, 0.75)

    scheduler = comps["scheduler"]
    assert type(scheduler) is type(original["scheduler"])
    assert public_config(scheduler.config) == public_config(original["scheduler"].config)
    assert scheduler.config.shift_terminal == 0.1 and scheduler.config.use_dynamic_shifting  # not the defaults

    tokenizer = comps["tokenizer"]
    assert type(tokenizer) is type(original["tokenizer"]) is transformers.ByT5Tokenizer
    ids = tokenizer(CAPTION, max_length=128, padding="max_length", truncation=True).input_ids
    assert ids == original["tokenizer"](CAPTION, max_length=128, padding="max_length", truncation=True).input_ids
    assert len(ids) == 128

    # The plan's normaliser reads the loaded VAE's statistics: the same numbers as the saved ones.
    z = torch.randn(1, 128, 2, 2, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(plan.normaliser(comps).normalise(z), plan.normaliser(original).normalise(z))


def test_round_trip_check_can_fail(saved: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """The equality check is not vacuous: differently seeded weights fail it, and a second directory holding
    them loads those, not the first directory's."""
    _, original = saved
    other = compile_file(seeded_tiny_child(tmp_path / "seed1.toml", 1)).components()
    for role in MODULES:
        assert not states_equal(other[role], original[role]), role

    diffusers.LTXPipeline(**{role: other[role] for role in ROLES}).save_pretrained(tmp_path / "ltx")
    loaded = compile_file(write_spec(tmp_path / "local.toml", pretrained_child("./ltx"))).components()
    for role in MODULES:
        assert states_equal(loaded[role], other[role]), role
        assert not states_equal(loaded[role], original[role]), role


# ---------------------------------------------------------------------------------------------------------
# Lazy building.


@pytest.fixture
def no_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything builds a component or opens a network connection."""

    def refuse_build(self: ComponentRecipe) -> Any:
        raise AssertionError(f"component {self.role!r} was built")

    def refuse_network(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"network access: {args!r}")

    monkeypatch.setattr(ComponentRecipe, "build", refuse_build)
    monkeypatch.setattr(socket.socket, "connect", refuse_network)
    monkeypatch.setattr(socket, "create_connection", refuse_network)
    monkeypatch.setattr(socket, "getaddrinfo", refuse_network)


@pytest.mark.parametrize("spec", [TINY_LTX, REAL_LTX], ids=["tiny", "hub-id"])
def test_compile_builds_nothing(spec: Path, no_builds: None) -> None:
    from ltxc.commands.compile import summarise

    plan = compile_file(spec)  # the real spec names Lightricks/LTX-Video, which cannot be downloaded here
    comps = plan.components()
    assert set(comps) == set(ROLES) and len(comps) == 5
    assert not any(comps.is_built(role) for role in ROLES)
    assert "ltx-video" in summarise(plan)  # printing the summary builds nothing either
    assert not any(comps.is_built(role) for role in ROLES)


def test_the_no_builds_guard_works(no_builds: None) -> None:
    comps = tiny_plan().components()
    with pytest.raises(AssertionError, match="'vae' was built"):
        comps["vae"]


def test_access_builds_only_that_role_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    build = ComponentRecipe.build

    def counting_build(self: ComponentRecipe) -> Any:
        calls.append(self.role)
        return build(self)

    monkeypatch.setattr(ComponentRecipe, "build", counting_build)
    plan = tiny_plan()
    comps = plan.components()
    assert calls == []

    text_encoder = comps["text_encoder"]
    assert isinstance(text_encoder, transformers.T5EncoderModel)
    assert [r for r in ROLES if comps.is_built(r)] == ["text_encoder"]
    assert comps["text_encoder"] is text_encoder
    assert calls == ["text_encoder"]

    plan.normaliser(comps)  # reads VAE statistics: builds the VAE and nothing else
    assert {r for r in ROLES if comps.is_built(r)} == {"text_encoder", "vae"}
    assert calls == ["text_encoder", "vae"]

    fresh = plan.components()  # a new set starts empty
    assert not any(fresh.is_built(r) for r in ROLES)
    with pytest.raises(KeyError, match="no component 'audio_vae'"):
        fresh["audio_vae"]
    assert calls == ["text_encoder", "vae"]


# ---------------------------------------------------------------------------------------------------------
# Inline-config builds: seeded, deterministic, RNG-neutral, eval mode, spec dtype.


@pytest.mark.parametrize("role", MODULES)
def test_inline_build_is_seeded(role: str) -> None:
    recipe = tiny_plan().recipes[role]
    assert recipe.source == "config" and recipe.seed == 0
    torch.manual_seed(1)
    first = recipe.build()
    torch.manual_seed(2)  # the caller's global seed does not matter
    second = recipe.build()
    assert first is not second
    assert states_equal(first, second)
    assert not states_equal(first, attrs.evolve(recipe, seed=1).build())


def test_seed_key_in_spec_changes_weights(tmp_path: Path) -> None:
    plan = compile_file(seeded_tiny_child(tmp_path / "seed3.toml", 3))
    assert plan.recipes["transformer"].seed == 3
    assert "seed 3" in plan.recipes["transformer"].describe()
    assert not states_equal(plan.recipes["transformer"].build(), tiny_plan().recipes["transformer"].build())


@pytest.mark.parametrize("role", MODULES)
def test_inline_build_leaves_global_rng_alone(role: str) -> None:
    recipe = tiny_plan().recipes[role]
    torch.manual_seed(1234)
    expected = torch.rand(16)

    torch.manual_seed(1234)
    recipe.build()
    assert torch.equal(torch.rand(16), expected)

    # Control: constructing the same class directly does consume the global RNG, so the check above can fail.
    torch.manual_seed(1234)
    config = dict(recipe.config or {})
    if issubclass(recipe.cls, transformers.PreTrainedModel):
        recipe.cls(recipe.cls.config_class(**config))
    else:
        recipe.cls(**config)
    assert not torch.equal(torch.rand(16), expected)


def test_modules_come_back_in_eval_mode_and_spec_dtype(tmp_path: Path) -> None:
    comps = tiny_plan().components()
    for role in MODULES:
        module = comps[role]
        assert not any(m.training for m in module.modules()), role
        assert {p.dtype for p in module.parameters()} == {torch.float32}, role

    body = f'[model]\nname = "ltx-video-tiny-bf16"\nextends = {toml_str(TINY_LTX)}\n'
    body += "".join(f'\n[components.{role}]\ndtype = "bfloat16"\n' for role in MODULES)
    plan = compile_file(write_spec(tmp_path / "bf16.toml", body))
    half = plan.components()
    for role in MODULES:
        assert plan.recipes[role].dtype == "bfloat16"
        assert plan.recipes[role].describe().endswith("bfloat16")
        module = half[role]
        assert {p.dtype for p in module.parameters()} == {torch.bfloat16}, role
        assert not any(m.training for m in module.modules()), role
        # Same seed, same weights: the bf16 build is the float32 build rounded.
        assert states_equal(module, comps[role].to(torch.bfloat16)), role


# ---------------------------------------------------------------------------------------------------------
# The class allowlist.


@pytest.fixture
def import_spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every module name passed to importlib.import_module during the test."""
    seen: list[str] = []
    real = importlib.import_module

    def spy(name: str, package: str | None = None) -> Any:
        seen.append(name)
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", spy)
    return seen


@pytest.mark.parametrize(
    "reference",
    [
        "os:system",
        "subprocess:run",
        "builtins:eval",
        "torch.nn:Linear",
        "webbrowser:open",
        "smtplib:SMTP",
        "diffusersx:Thing",
        "diffusers_evil.models:Thing",
        "os.path:join",
        "diffusers",
        "diffusers:",
    ],
)
def test_allowlist_refuses_outside_packages_without_importing(reference: str, import_spy: list[str]) -> None:
    loaded_before = {name for name in ("webbrowser", "smtplib") if name in sys.modules}
    with pytest.raises(ComponentError, match="allowlist"):
        resolve_component_class(reference, "module")
    assert import_spy == []  # refused before any import
    assert {name for name in ("webbrowser", "smtplib") if name in sys.modules} == loaded_before


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("diffusers:os", "diffusers"),  # a name inside diffusers that is no class
        ("transformers:logging", "not a class"),
        ("diffusers:__version__", "not a public class name"),
        ("diffusers:_private", "not a public class name"),
        ("diffusers:NoSuchClass", "no class 'NoSuchClass'"),
        ("diffusers.no_such_module:Thing", "cannot import"),
        ("ltxc.components:DTYPES", "not a class"),
    ],
)
def test_allowlisted_packages_still_need_a_real_public_class(reference: str, message: str) -> None:
    with pytest.raises(ComponentError, match=message):
        resolve_component_class(reference, "module")


@pytest.mark.parametrize(
    ("reference", "kind", "base"),
    [
        ("diffusers:FlowMatchEulerDiscreteScheduler", "module", "torch.nn.modules.module.Module"),
        ("diffusers:LTXPipeline", "module", "Module"),
        ("diffusers:AutoencoderKLLTXVideo", "tokenizer", "PreTrainedTokenizerBase"),
        ("transformers:T5EncoderModel", "scheduler", "SchedulerMixin"),
        ("transformers:T5TokenizerFast", "scheduler", "SchedulerMixin"),
        ("ltxc.components:ComponentRecipe", "module", "Module"),
    ],
)
def test_wrong_kind_is_refused(reference: str, kind: Any, base: str) -> None:
    with pytest.raises(ComponentError, match=f"is not a .*{base}"):
        resolve_component_class(reference, kind)


@pytest.mark.parametrize(
    ("reference", "kind", "expected"),
    [
        ("diffusers:LTXVideoTransformer3DModel", "module", diffusers.LTXVideoTransformer3DModel),
        ("diffusers.models:AutoencoderKLLTXVideo", "module", diffusers.AutoencoderKLLTXVideo),
        ("transformers:T5EncoderModel", "module", transformers.T5EncoderModel),
        ("transformers:ByT5Tokenizer", "tokenizer", transformers.ByT5Tokenizer),
        ("diffusers:FlowMatchEulerDiscreteScheduler", "scheduler", diffusers.FlowMatchEulerDiscreteScheduler),
    ],
)
def test_valid_classes_resolve(reference: str, kind: Any, expected: type) -> None:
    assert resolve_component_class(reference, kind) is expected


def test_resolve_class_without_base_and_reference_pipeline() -> None:
    assert resolve_class("diffusers:LTXPipeline", diffusers.DiffusionPipeline) is diffusers.LTXPipeline
    with pytest.raises(ComponentError, match="DiffusionPipeline"):
        resolve_class("diffusers:LTXVideoTransformer3DModel", diffusers.DiffusionPipeline)


def test_disallowed_class_in_spec_is_a_compile_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(
        tmp_path / "evil.toml",
        f'[model]\nname = "evil"\nextends = {toml_str(TINY_LTX)}\n\n[components.vae]\nclass = "os:system"\n',
    )
    with pytest.raises(ConfigError) as info:
        compile_file(spec)
    assert [p.path for p in info.value.problems] == ["components.vae.class"]
    code, _, err = run_cli(capsys, "compile", str(spec), "--out", str(tmp_path / "out"))
    assert code == 2
    assert err.startswith(f"{spec}:6: components.vae.class: ") and "allowlist" in err
    assert not (tmp_path / "out" / "plan.json").exists()


# ---------------------------------------------------------------------------------------------------------
# Inline config typos and the `source` rules.


def test_inline_config_typo_is_a_compile_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(
        tmp_path / "typo.toml",
        f'[model]\nname = "typo"\nextends = {toml_str(TINY_LTX)}\n\n'
        "[components.transformer]\nconfig = { num_layer = 1 }\n\n"
        "[components.text_encoder.config]\nd_modl = 32\n\n"
        "[components.scheduler.config]\nshif = 2.0\n",
    )
    with pytest.raises(ConfigError) as info:
        compile_file(spec)
    problems = {p.path: p for p in info.value.problems}
    assert set(problems) == {
        "components.transformer.config.num_layer",
        "components.text_encoder.config.d_modl",
        "components.scheduler.config.shif",
    }
    assert problems["components.transformer.config.num_layer"].file == str(spec)
    assert problems["components.transformer.config.num_layer"].line == 6
    assert "num_layer" in problems["components.transformer.config.num_layer"].message

    code, _, err = run_cli(capsys, "compile", str(spec), "--out", str(tmp_path / "out"))
    assert code == 2
    assert f"{spec}:6: components.transformer.config.num_layer: " in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_correct_inline_override_compiles(tmp_path: Path) -> None:
    """Control for the typo test: the correctly spelled key compiles and takes effect."""
    spec = write_spec(
        tmp_path / "one_layer.toml",
        f'[model]\nname = "one-layer"\nextends = {toml_str(TINY_LTX)}\n\n'
        "[components.transformer]\nconfig = { num_layers = 1 }\n",
    )
    transformer = compile_file(spec).components()["transformer"]
    assert len(transformer.transformer_blocks) == 1
    assert transformer.config.in_channels == 128  # the rest of the parent's config table is merged in


def _real_spec_without_transformer_pretrained() -> str:
    text = REAL_LTX.read_text()
    old = 'class = "diffusers:LTXVideoTransformer3DModel"\npretrained = "Lightricks/LTX-Video"\n'
    assert old in text
    return text.replace(old, 'class = "diffusers:LTXVideoTransformer3DModel"\n')


def test_both_pretrained_and_config_need_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parent = f'[model]\nname = "both"\nextends = {toml_str(REAL_LTX)}\n\n[components.vae]\n'
    config = "config = { latent_channels = 128 }\n"
    spec = write_spec(tmp_path / "both.toml", parent + config)
    with pytest.raises(ConfigError) as info:
        compile_file(spec)
    [problem] = info.value.problems
    assert problem.path == "components.vae"
    assert "both pretrained and config" in problem.message and "source" in problem.message
    code, _, err = run_cli(capsys, "compile", str(spec), "--out", str(tmp_path / "out"))
    assert code == 2 and "components.vae: both pretrained and config" in err

    # Saying which one resolves it, either way.
    chosen = compile_file(write_spec(tmp_path / "config.toml", parent + 'source = "config"\n' + config))
    assert chosen.recipes["vae"].source == "config"
    assert "pretrained" not in chosen.data["components"]["vae"]
    chosen = compile_file(write_spec(tmp_path / "pretrained.toml", parent + 'source = "pretrained"\n' + config))
    assert chosen.recipes["vae"].source == "pretrained"
    assert "config" not in chosen.data["components"]["vae"]


def test_neither_pretrained_nor_config_is_an_error(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "neither.toml", _real_spec_without_transformer_pretrained())
    with pytest.raises(ConfigError) as info:
        compile_file(spec)
    [problem] = info.value.problems
    assert problem.path == "components.transformer"
    assert "pretrained" in problem.message and "config" in problem.message


def test_source_config_without_config_is_an_error(tmp_path: Path) -> None:
    text = REAL_LTX.read_text().replace("[components.vae]\n", '[components.vae]\nsource = "config"\n', 1)
    with pytest.raises(ConfigError) as info:
        compile_file(write_spec(tmp_path / "source_config.toml", text))
    [problem] = info.value.problems
    assert problem.path == "components.vae.config"
    assert 'source = "config"' in problem.message


def test_source_pretrained_without_pretrained_is_an_error(tmp_path: Path) -> None:
    text = _real_spec_without_transformer_pretrained().replace(
        "[components.transformer]\n", '[components.transformer]\nsource = "pretrained"\n', 1
    )
    with pytest.raises(ConfigError) as info:
        compile_file(write_spec(tmp_path / "source_pretrained.toml", text))
    [problem] = info.value.problems
    assert problem.path == "components.transformer.pretrained"
    assert 'source = "pretrained"' in problem.message


# ---------------------------------------------------------------------------------------------------------
# Gaps found while writing these tests, now closed.


def test_missing_local_pretrained_dir_is_a_compile_error(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path / "missing.toml",
        f'[model]\nname = "missing"\nextends = {toml_str(REAL_LTX)}\n\n'
        '[components.vae]\npretrained = "./does-not-exist"\n',
    )
    with pytest.raises(ConfigError) as info:
        compile_file(spec)
    [problem] = info.value.problems
    assert problem.path == "components.vae.pretrained"
    assert "does-not-exist" in problem.message


def test_transformers_config_key_must_be_a_config_field(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path / "method.toml",
        f'[model]\nname = "method"\nextends = {toml_str(TINY_LTX)}\n\n[components.text_encoder.config]\nto_dict = 1\n',
    )
    with pytest.raises(ConfigError) as info:
        compile_file(spec)
    assert [p.path for p in info.value.problems] == ["components.text_encoder.config.to_dict"]
