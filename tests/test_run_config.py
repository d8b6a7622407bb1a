"""Run configs (schemas/run.schema.json, ltxc/runner/config.py): examples, defaults, errors, `--set`, `extends`, guards.

- every example in specs/runs/ loads; default.toml is exactly the embedded default (what no file means);
  an empty file gives every default;
- each kind of mistake is one `FILE:LINE: key.path: message` line at the key that is wrong (unknown key
  with a suggestion, wrong type, bad enum, out of range, steps and epochs both set, ...), all reported at once;
- `--set key=value` reads TOML values (int, float, bool, list, string), is type-checked by the same schema
  with its place shown as `--set:N`; unknown keys and malformed items are errors;
- `extends` deep-merges over a parent relative to the file;
- guards as in test_architecture: schema keys <-> attrs fields both ways, every key described, schema
  defaults equal to the attrs defaults; docs/run-reference.md is generated from the schema; reading a run
  config imports neither torch nor the spec layer (checked in a fresh interpreter).

Run: `pytest -q tests/test_run_config.py`
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import attrs
import jsonschema
import pytest
from conftest import ROOT, SPECS, generated_reference
from test_architecture import _check_class, _described_keys

from ltxc.errors import ConfigError, UserError
from ltxc.runner.config import (
    SYNTHETIC_MEDIA,
    DataSection,
    ExportSection,
    RunConfig,
    RunSection,
    TrainSection,
    load_run_config,
    parse_overrides,
    run_config_from_dict,
    run_config_to_dict,
)

RUNS = SPECS / "runs"
SCHEMA_PATH = ROOT / "schemas" / "run.schema.json"
# `FILE:LINE: rest` — the file part is non-greedy so a `key.path: message` rest keeps its colons.
LINE_RE = re.compile(r"^(?P<file>.+?):(?P<line>\d+): (?P<rest>.*)$")
EXAMPLES = [
    "default.toml",
    "flux-1-lora-24gb.toml",
    "ltx-2.3-lora-1gpu.toml",
    "ltx-2.3-lora-24gb.toml",
    "ltx-full-1gpu.toml",
    "ltx-full-8gpu.toml",
    "ltx-lora-1gpu.toml",
    "ltx-lora-8gpu.toml",
    "wan-2.1-lora-1gpu.toml",
]


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def write(tmp_path: Path, text: str, name: str = "run.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def line_of(path: Path, needle: str) -> int:
    """The 1-based line of the one line in `path` that contains `needle`."""
    hits = [n for n, line in enumerate(path.read_text().splitlines(), start=1) if needle in line]
    assert len(hits) == 1, f"{needle!r} should occur on exactly one line of {path}, found lines {hits}"
    return hits[0]


def errors(path: Path | None, overrides: list[str] | tuple[str, ...] = ()) -> list[tuple[str, int, str, str]]:
    """Load expecting a ConfigError; its lines as (file, line, key path, message)."""
    with pytest.raises(ConfigError) as info:
        load_run_config(path, overrides)
    found = []
    for line in str(info.value).splitlines():
        match = LINE_RE.match(line)
        assert match, f"not FILE:LINE: ...: {line!r}"
        key, sep, message = match["rest"].partition(": ")
        assert sep and message.strip(), f"no key path or message in {line!r}"
        found.append((match["file"], int(match["line"]), key, message))
    return found


def one_error(path: Path | None, overrides: list[str] | tuple[str, ...] = ()) -> tuple[str, int, str, str]:
    (only,) = errors(path, overrides)
    return only


def resolved_defaults(name: str) -> RunConfig:
    """What an empty config named `name` must resolve to, spelled out independently of the loader."""
    return RunConfig(
        run=RunSection(name=name, output=f"runs/{name}"),
        data=DataSection(cache=f"runs/{name}/cache", media=SYNTHETIC_MEDIA),
        train=TrainSection(steps=200),
        export=ExportSection(full=False),
    )


# --- the examples ----------------------------------------------------------------------------------------


def test_the_examples_exist():
    assert sorted(p.name for p in RUNS.glob("*.toml")) == EXAMPLES


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_example_loads_and_is_commented(name):
    path = RUNS / name
    loaded = load_run_config(path)
    config = loaded.value
    assert isinstance(config, RunConfig)
    assert loaded.files == (str(path),)
    assert config.run.name == path.stem
    assert path.read_text().startswith("# ")  # each example says what it is and how to run it
    if name != "default.toml":
        *_, mode, gpus = name.removesuffix(".toml").split("-")
        assert config.train.mode == mode
        assert config.export.full is (mode == "full")
        assert config.run.plan  # never silently the tiny fallback plan
        assert config.data.media != SYNTHETIC_MEDIA
        assert config.train.activation_checkpointing == "on"
        assert config.parallel.precision == "bf16"
        assert config.train.steps and config.schedule.warmup < config.train.steps
        assert config.checkpoint.every > 0
        assert ("torchrun --nproc-per-node 8" in path.read_text()) is (gpus == "8gpu")
        if mode == "lora":
            assert config.lora.rank in (32, 64)
            assert config.optimizer.lr >= 1e-4
        else:
            assert config.optimizer.lr <= 2e-5


def test_default_toml_is_the_embedded_default():
    from_file = load_run_config(RUNS / "default.toml").value
    assert from_file == load_run_config(None).value
    # the schema defaults, but for the keys tuned for the tiny model's demo (a full fine-tune)
    expected = resolved_defaults("default")
    expected = attrs.evolve(
        expected,
        data=attrs.evolve(expected.data, batch_size=4),
        train=attrs.evolve(expected.train, mode="full", steps=400),
        optimizer=attrs.evolve(expected.optimizer, lr=4e-3),
        schedule=attrs.evolve(expected.schedule, kind="cosine"),
        export=attrs.evolve(expected.export, full=True),  # derived: full fine-tunes export the transformer
    )
    assert from_file == expected


def test_an_empty_file_gives_every_default(tmp_path):
    assert load_run_config(write(tmp_path, "", "empty.toml")).value == resolved_defaults("empty")
    config = load_run_config(write(tmp_path, "[run]\n[train]\n", "tables.toml")).value
    assert config == resolved_defaults("tables")


def test_derived_defaults_follow_what_was_set(tmp_path):
    config = load_run_config(write(tmp_path, '[run]\nname = "x"\noutput = "/out/x"\n[train]\nmode = "full"\n')).value
    assert (config.run.output, config.data.cache, config.export.full) == ("/out/x", "/out/x/cache", True)
    assert config.data.media == SYNTHETIC_MEDIA
    config = load_run_config(write(tmp_path, '[data]\ncache = "c"\n')).value
    assert config.data.media is None  # a cache the user named is never filled with the synthetic set
    assert config.run.name == "run"
    config = load_run_config(write(tmp_path, "[train]\nepochs = 3\n")).value
    assert (config.train.steps, config.train.epochs) == (None, 3)
    assert load_run_config(write(tmp_path, "", "my run!.toml")).value.run.name == "my-run-"


def test_to_dict_round_trips_and_validates(schema):
    for name in EXAMPLES:
        config = load_run_config(RUNS / name).value
        data = run_config_to_dict(config)
        jsonschema.validate(data, schema)
        assert run_config_from_dict(data) == config
        json.dumps(data)  # plain data


# --- errors: one line each, at the key -------------------------------------------------------------------


def test_unknown_key_suggests_the_right_one(tmp_path):
    path = write(tmp_path, "[train]\nstep = 5\n")
    file, line, key, message = one_error(path)
    assert (file, line, key) == (str(path), line_of(path, "step ="), "train.step")
    assert "unknown key" in message and "did you mean 'steps'" in message


def test_unknown_section(tmp_path):
    path = write(tmp_path, "[optimiser]\nlr = 1e-4\n")
    _, line, key, message = one_error(path)
    assert (line, key) == (line_of(path, "[optimiser]"), "optimiser")
    assert "'optimizer'" in message


def test_wrong_type(tmp_path):
    path = write(tmp_path, '[run]\nseed = 1\n[data]\nbatch_size = "4"\n')
    _, line, key, message = one_error(path)
    assert (line, key) == (line_of(path, "batch_size"), "data.batch_size")
    assert message == "expected integer, got string '4'"


def test_bad_enum(tmp_path):
    path = write(tmp_path, '[schedule]\nkind = "cosin"\n')
    _, line, key, message = one_error(path)
    assert (line, key) == (line_of(path, "kind"), "schedule.kind")
    assert "'cosine'" in message and "'constant'" in message


def test_bad_enum_spells_booleans_as_toml(tmp_path):
    path = write(tmp_path, '[optimizer]\nfused = "yes"\n')
    _, _, key, message = one_error(path)
    assert key == "optimizer.fused"
    assert message == "'yes' is not one of 'auto', true, false"
    assert one_error(None, ["train.mode=false"])[3] == "false is not one of 'lora', 'full'"


def test_out_of_range(tmp_path):
    path = write(tmp_path, "[parallel]\nreplicate = 0\n")
    _, line, key, message = one_error(path)
    assert (line, key) == (line_of(path, "replicate"), "parallel.replicate")
    assert "minimum of 1" in message


def test_wrong_type_inside_array(tmp_path):
    path = write(tmp_path, "[optimizer]\nbetas = [0.9]\n[lora]\ntargets = [1]\n")
    found = {(line, key) for _, line, key, _ in errors(path)}
    assert found == {(line_of(path, "betas"), "optimizer.betas"), (line_of(path, "targets"), "lora.targets[0]")}


def test_bad_run_name(tmp_path):
    path = write(tmp_path, '[run]\nname = "../escape"\n')
    _, line, key, message = one_error(path)
    assert (line, key) == (line_of(path, "name"), "run.name")
    assert "'../escape' is not valid" in message


def test_steps_and_epochs_both_set(tmp_path):
    path = write(tmp_path, "[train]\nsteps = 100\nepochs = 2\n")
    file, line, key, message = one_error(path)
    assert (file, line, key) == (str(path), line_of(path, "epochs"), "train.epochs")
    assert "not both" in message and f"{path}:{line_of(path, 'steps')}" in message


def test_steps_and_epochs_in_one_inline_table(tmp_path):
    path = write(tmp_path, "train = { epochs = 2, steps = 100 }\n")
    _, line, key, _ = one_error(path)
    assert (line, key) == (1, "train.epochs")


def test_warmup_must_end_before_the_run(tmp_path):
    path = write(tmp_path, "[train]\nsteps = 100\n[schedule]\nwarmup = 100\n")
    _, line, key, message = one_error(path)
    assert (line, key) == (line_of(path, "warmup"), "schedule.warmup")
    assert "train.steps is 100" in message
    assert load_run_config(write(tmp_path, "[train]\nsteps = 100\n[schedule]\nwarmup = 99\n")).value


def test_full_export_only_for_full_fine_tunes(tmp_path):
    path = write(tmp_path, "[export]\nfull = true\n")
    _, line, key, message = one_error(path)
    assert (line, key) == (line_of(path, "full"), "export.full")
    assert 'train.mode = "full"' in message


def test_every_error_is_reported_at_once(tmp_path):
    path = write(tmp_path, '[train]\nstep = 5\nmode = "ful"\n[log]\nevery = 0\n[optimizer]\nlr = "big"\n')
    found = {(line, key) for _, line, key, _ in errors(path)}
    assert found == {
        (line_of(path, "step ="), "train.step"),
        (line_of(path, "mode"), "train.mode"),
        (line_of(path, "every"), "log.every"),
        (line_of(path, "lr ="), "optimizer.lr"),
    }


def test_invalid_toml_and_missing_file(tmp_path):
    path = write(tmp_path, "[train]\nsteps = = 1\n")
    with pytest.raises(ConfigError) as info:
        load_run_config(path)
    assert str(info.value).startswith(f"{path}:2: not valid TOML")
    with pytest.raises(ConfigError) as info:
        load_run_config(tmp_path / "nope.toml")
    assert str(info.value) == f"{tmp_path / 'nope.toml'}:1: file not found"


# --- --set -----------------------------------------------------------------------------------------------


def test_parse_overrides_reads_toml_values():
    parsed = parse_overrides(
        [
            "train.steps=50",
            "optimizer.lr=3e-5",
            "run.name=foo",
            'lora.targets=["to_q"]',
            "log.jsonl=false",
            "optimizer.betas = [0.9, 0.95]",
            'run.output="a b"',
            "run.plan=p=q.json",
        ]
    )
    assert parsed == {
        ("train", "steps"): 50,
        ("optimizer", "lr"): 3e-5,
        ("run", "name"): "foo",
        ("lora", "targets"): ["to_q"],
        ("log", "jsonl"): False,
        ("optimizer", "betas"): [0.9, 0.95],
        ("run", "output"): "a b",
        ("run", "plan"): "p=q.json",
    }
    assert type(parsed[("train", "steps")]) is int
    assert type(parsed[("optimizer", "lr")]) is float
    assert parse_overrides(["run.name=1\nother = 2"]) == {("run", "name"): "1\nother = 2"}  # one value only


def test_overrides_apply_over_the_file():
    loaded = load_run_config(
        RUNS / "ltx-lora-1gpu.toml",
        [
            "train.steps=50",
            "optimizer.lr=3e-5",
            "run.name=foo",
            'lora.targets=["to_q"]',
            "log.tensorboard=false",
            "schedule.warmup=5",  # the file's 100 would not fit in 50 steps
        ],
    )
    config = loaded.value
    assert (config.train.steps, config.optimizer.lr, config.run.name) == (50, 3e-5, "foo")
    assert config.lora.targets == ("to_q",)
    assert config.lora.rank == 32  # from the file
    assert config.log.tensorboard is False
    assert config.run.output == "runs/foo"
    assert loaded.locator.where(("train", "steps")) == ("--set", 1)


@pytest.mark.parametrize(
    ("item", "key", "wanted"),
    [
        ("train.steps=abc", "train.steps", "expected integer, got string 'abc'"),
        ("train.steps=1.5", "train.steps", "expected integer, got number 1.5"),
        ("optimizer.lr=fast", "optimizer.lr", "expected number, got string 'fast'"),
        ("data.pin_memory=yes", "data.pin_memory", "expected boolean, got string 'yes'"),
        ("lora.targets=to_q", "lora.targets", "expected array, got string 'to_q'"),
        ("run.name=true", "run.name", "expected string, got boolean true"),
    ],
)
def test_overrides_are_type_checked(item, key, wanted):
    # Over a file that sets the same key, so the error must point at --set, not at the file's line.
    assert one_error(RUNS / "ltx-lora-1gpu.toml", ["log.every=5", item]) == ("--set", 2, key, wanted)
    assert one_error(None, [item]) == ("--set", 1, key, wanted)


def test_override_that_breaks_a_cross_field_rule():
    file, line, key, message = one_error(RUNS / "ltx-lora-1gpu.toml", ["train.steps=50"])
    # the warmup (100) is in the file; the rule is reported at the key that must change
    assert (file, key) == (str(RUNS / "ltx-lora-1gpu.toml"), "schedule.warmup")
    assert line == line_of(RUNS / "ltx-lora-1gpu.toml", "warmup =")
    assert "train.steps is 50" in message
    assert load_run_config(RUNS / "ltx-lora-1gpu.toml", ["train.steps=50", "schedule.warmup=5"]).value


def test_unknown_key_via_set():
    file, line, key, message = one_error(RUNS / "default.toml", ["train.lr=1e-3"])
    assert (file, line, key) == ("--set", 1, "train.lr")
    assert "unknown key" in message
    assert one_error(None, ["optimiser.lr=1e-3"])[:3] == ("--set", 1, "optimiser")


def test_set_inside_a_scalar_and_over_a_table():
    assert one_error(RUNS / "default.toml", ["train.steps.x=1"]) == (
        "--set",
        1,
        "train.steps",
        "expected integer, got table {'x': 1}",
    )
    # The file wrote train.grad_accum; a --set that replaces the whole table owns the error.
    assert one_error(RUNS / "default.toml", ['train={grad_accum="x"}'])[:3] == ("--set", 1, "train.grad_accum")


@pytest.mark.parametrize("item", ["train.steps", "=3", "train..steps=1", ".steps=1", "train steps=1", ""])
def test_malformed_set_items(item):
    with pytest.raises(UserError) as info:
        parse_overrides(["log.every=2", item])
    (line,) = str(info.value).splitlines()
    assert line.startswith("--set:2: ")
    assert repr(item) in line
    with pytest.raises(UserError, match=re.escape(repr(item))):
        load_run_config(None, [item])


def test_a_key_set_twice_is_an_error():
    with pytest.raises(UserError) as info:
        parse_overrides(["train.steps=1", "log.every=2", "train.steps=2", "train={steps=3}"])
    assert str(info.value).splitlines() == [
        "--set:3: train.steps: already set by --set item 1 ('train.steps=1')",
        "--set:4: train: already set by --set item 1 ('train.steps=1')",
    ]


def test_extends_cannot_be_set(tmp_path):
    assert one_error(None, ["run.extends=x.toml"])[:3] == ("--set", 1, "run.extends")


def test_steps_via_set_replaces_epochs_from_the_file(tmp_path):
    path = write(tmp_path, "[train]\nepochs = 3\n")
    assert load_run_config(path, ["train.steps=7"]).value.train.steps == 7
    assert load_run_config(path, ["train.steps=7"]).value.train.epochs is None
    assert one_error(None, ["train.steps=7", "train.epochs=2"])[:3] == ("--set", 2, "train.epochs")


# --- extends ---------------------------------------------------------------------------------------------


def test_extends_merges_over_the_parent(tmp_path):
    (tmp_path / "base").mkdir()
    write(
        tmp_path / "base",
        '[train]\nsteps = 300\ngrad_accum = 4\n[schedule]\nkind = "linear"\nwarmup = 30\n[lora]\nrank = 16\n',
        "parent.toml",
    )
    child = write(
        tmp_path, '[run]\nextends = "base/parent.toml"\n[train]\nepochs = 2\n[schedule]\nkind = "cosine"\n', "c.toml"
    )
    loaded = load_run_config(child)
    config = loaded.value
    assert loaded.files == (str(tmp_path / "base" / "parent.toml"), str(child))
    assert (config.train.epochs, config.train.steps, config.train.grad_accum) == (2, None, 4)  # child's epochs win
    assert (config.schedule.kind, config.schedule.warmup) == ("cosine", 30)  # a new kind keeps the warmup
    assert config.lora.rank == 16
    assert config.run.name == "c"  # named after the file given, not its parent


def test_error_in_the_parent_points_at_the_parent(tmp_path):
    parent = write(tmp_path, "[train]\n\ngrad_accum = 0\n", "parent.toml")
    child = write(tmp_path, '[run]\nextends = "parent.toml"\n', "child.toml")
    file, line, key, _ = one_error(child)
    assert (Path(file), line, key) == (parent, 3, "train.grad_accum")


def test_extends_problems(tmp_path):
    a = write(tmp_path, '[run]\nextends = "b.toml"\n', "a.toml")
    write(tmp_path, '[run]\nextends = "a.toml"\n', "b.toml")
    assert "extends cycle" in one_error(a)[3]
    missing = write(tmp_path, '[run]\nseed = 1\nextends = "nope.toml"\n', "m.toml")
    _, line, key, message = one_error(missing)
    assert (line, key) == (3, "run.extends")
    assert "does not exist" in message


# --- guards ----------------------------------------------------------------------------------------------


def test_schema_and_attrs_classes_correspond(schema):
    problems: list[str] = []
    _check_class(schema, RunConfig, schema, "run-config", problems)
    assert problems == []


def test_the_correspondence_check_is_not_vacuous(schema):
    broken = json.loads(json.dumps(schema))
    del broken["properties"]["train"]["properties"]["cfg_dropout"]
    broken["properties"]["optimizer"]["properties"]["fused"]["enum"] = ["auto", True]
    broken["properties"]["log"]["properties"]["every"]["type"] = "number"
    broken["properties"]["optimizer"]["properties"]["betas"]["maxItems"] = 3
    broken["properties"]["checkpoint"]["required"] = ["every"]
    problems: list[str] = []
    _check_class(broken, RunConfig, broken, "run-config", problems)
    text = "\n".join(problems)
    for where in ("train", "optimizer.fused", "log.every", "optimizer.betas", "checkpoint"):
        assert f"run-config.{where}" in text


def test_every_key_has_a_description(schema):
    keys = _described_keys(schema)
    assert len(keys) > 45  # every section and key was visited
    missing = [where for where, description in keys if not (isinstance(description, str) and description.strip())]
    assert missing == []


def _attrs_defaults(cls: type, prefix: str = "") -> dict[str, Any]:
    """{dotted key: default} for every leaf field (None for derived defaults); a table of tables (`tasks`) by its
    entries' keys, `tasks.<name>.probability`."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in attrs.fields(cls):
        hint = hints[f.name]
        if attrs.has(hint):
            out.update(_attrs_defaults(hint, f"{prefix}{f.name}."))
        elif typing.get_origin(hint) is dict and attrs.has(typing.get_args(hint)[1]):
            out.update(_attrs_defaults(typing.get_args(hint)[1], f"{prefix}{f.name}.<name>."))
        else:
            out[prefix + f.name] = f.default
    return out


def _sections(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each table's dotted prefix -> its keys: the sections, and a table of tables' entries as `<name>`."""
    out = {}
    for section, node in schema["properties"].items():
        if "properties" in node:
            out[section] = node["properties"]
        else:
            out[f"{section}.<name>"] = node["additionalProperties"]["properties"]
    return out


def test_schema_defaults_are_the_attrs_defaults(schema):
    """A key with a fixed default states it in the schema (the reference shows it); derived ones don't."""
    defaults = _attrs_defaults(RunConfig)
    assert len(defaults) > 35
    stated = {}
    for section, keys in _sections(schema).items():
        for key, sub in keys.items():
            stated[f"{section}.{key}"] = sub.get("default")
    assert set(stated) == set(defaults)
    wrong = {
        key: (stated[key], value)
        for key, value in defaults.items()
        if stated[key] != (list(value) if isinstance(value, tuple) else value)
        or type(stated[key]) is not type(list(value) if isinstance(value, tuple) else value)
    }
    assert wrong == {}
    assert {key for key, value in defaults.items() if value is None} == {
        "run.name",
        "run.plan",
        "run.output",
        "run.extends",
        "data.cache",
        "data.media",
        "train.steps",
        "train.epochs",
        "train.audio_cfg_dropout",
        "lora.rank",
        "lora.alpha",
        "lora.targets",
        "export.full",
        "parallel.device_memory_gib",
        "validation.negative_prompt",
        "validation.frames",
        "validation.height",
        "validation.width",
        "validation.steps",
        "validation.guidance",
    }


def test_schema_defaults_validate(schema):
    """The documented defaults, written out as a file, are a valid run config."""
    document = {
        section: {key: sub["default"] for key, sub in node["properties"].items() if "default" in sub}
        for section, node in schema["properties"].items()
        if "properties" in node  # a table of tables (`tasks`) has no entries by default
    }
    jsonschema.validate(document, schema)
    assert run_config_from_dict(document) == RunConfig()


def test_run_reference_matches_schema(capsys):
    generated = generated_reference(capsys, "run.schema.json")
    committed = (ROOT / "docs" / "run-reference.md").read_text()
    assert generated == committed, "regenerate: python tools/spec_reference.py run.schema.json > docs/run-reference.md"
    assert "| `train.steps` |" in committed and "| `optimizer.betas` |" in committed
    assert "Default: `[0.9, 0.999]`." in committed


def test_reading_a_run_config_imports_no_torch_and_no_spec():
    code = (
        "import sys\n"
        "from ltxc.runner.config import load_run_config\n"
        "load_run_config(None, ['train.steps=5'])\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers', 'numpy') if m in sys.modules)\n"
        "leaves = ('ltxc.runner', 'ltxc.document', 'ltxc.errors')\n"
        "others = sorted(m for m in sys.modules if m.startswith('ltxc.') and not m.startswith(leaves))\n"
        "assert not heavy and not others, (heavy, others)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "ok"
