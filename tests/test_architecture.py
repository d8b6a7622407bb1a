"""Architecture guards: the rules in DESIGN.md that no single feature test would notice breaking.

(a) `ltxc.spec` imports no torch (and nothing of ltxc but its leaves `ltxc.errors` and `ltxc.document`), checked
    in a fresh interpreter; `ltxc.runner` never imports the spec layer;
(b) every key in schemas/spec.schema.json has a non-empty description;
(c) the schema and the attrs classes in ltxc/spec/types.py describe the same keys, required keys,
    scalar types and enums, both ways (tagged unions variant by variant against their if/then branch);
(d) no model-family identifier (LTX, Wan, T5, ...) in ltxc/ source: model knowledge lives in specs/;
(e) every spec in specs/ (except specs/runs/) compiles;
(f) no module or package named utils in ltxc/;
(g) sizes: no function in ltxc/ over 80 lines, no module over 400 lines (each offender named).

Run: `pytest -q tests/test_architecture.py`
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

import attrs
import pytest
import tomllib
from conftest import ROOT, SPECS

from ltxc.spec import types as spec_types

SCHEMA_PATH = ROOT / "schemas" / "spec.schema.json"
LTXC = ROOT / "ltxc"


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


# --- (a) the spec package stays light --------------------------------------------------------------------


def test_spec_package_imports_no_torch():
    code = (
        "import sys\n"
        "import ltxc.spec, ltxc.spec.load, ltxc.spec.expr, ltxc.spec.types\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers', 'numpy') if m in sys.modules)\n"
        "allowed = ('ltxc.spec', 'ltxc.errors', 'ltxc.document')\n"
        "others = sorted(m for m in sys.modules if m.startswith('ltxc.') and not m.startswith(allowed))\n"
        "print(heavy, others)\n"
        "assert 'torch' not in sys.modules, heavy\n"
        "assert not heavy and not others, (heavy, others)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def _ltxc_imports(package: Path) -> list[tuple[str, str]]:
    """(where, module) for every import in a package's source, function-level imports included."""
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = []
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            elif isinstance(node, ast.ImportFrom) and node.level > 1:
                modules = [f"..{node.module or ''}"]
            found += [(f"{path.relative_to(ROOT)}:{node.lineno}", module) for module in modules]
    return found


def test_spec_package_imports_nothing_else_of_ltxc():
    """Static check, so a lazy (function-level) import of ltxc.compiler from spec/ is caught too."""
    allowed = ("ltxc.spec", "ltxc.errors", "ltxc.document")
    offenders = [
        f"{where}: {module}"
        for where, module in _ltxc_imports(LTXC / "spec") + _ltxc_imports(LTXC / "document")
        if module.startswith("..")
        or (module.startswith("ltxc") and not module.startswith(allowed))
        or module.split(".")[0] == "torch"
    ]
    assert offenders == []


def test_runner_never_imports_the_spec_layer():
    """The runner takes a Plan and its own run config; spec classes and spec loading are the compiler's."""
    offenders = [
        f"{where}: {module}" for where, module in _ltxc_imports(LTXC / "runner") if module.startswith("ltxc.spec")
    ]
    assert offenders == []
    # and it reads compiled settings, never the raw spec through the plan
    raw = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted((LTXC / "runner").rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if re.search(r"\bplan\.spec\b", line)
    ]
    assert raw == []


def test_the_import_guards_see_function_level_imports():
    found = dict((module, where) for where, module in _ltxc_imports(LTXC / "runner"))
    assert "ltxc.runner.config" in found or "ltxc.runner.distributed" in found


# --- (b) every key is described --------------------------------------------------------------------------


def _deref(root: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow `$ref` (local `#/...` only); sibling keywords win over the target's."""
    seen = 0
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), f"non-local $ref {ref!r}"
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        seen += 1
        assert seen < 20, f"$ref loop at {ref}"
    return node


def _described_keys(root: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(key path, description) for every key the schema defines: properties, $defs, allOf then-branches."""
    found: list[tuple[str, str | None]] = []

    def walk(node: dict[str, Any], path: str) -> None:
        for key, sub in (node.get("properties") or {}).items():
            where = f"{path}.{key}" if path else key
            found.append((where, _deref(root, sub).get("description")))
            walk(sub, where)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            walk(extra, f"{path}.<name>")
        for index, branch in enumerate(node.get("allOf") or []):
            for part in ("then", "else"):
                if part in branch:
                    walk(branch[part], f"{path}[allOf {index} {part}]")

    found.append(("<root>", root.get("description")))
    walk(root, "")
    for name, definition in (root.get("$defs") or {}).items():
        found.append((f"$defs.{name}", definition.get("description")))
        walk(definition, f"$defs.{name}")
    return found


def test_every_schema_key_has_a_description(schema):
    keys = _described_keys(schema)
    assert len(keys) > 80  # the walk really went everywhere (properties, $defs and branches)
    assert any("allOf" in where for where, _ in keys)
    missing = [where for where, description in keys if not (isinstance(description, str) and description.strip())]
    assert missing == []


# --- (c) schema <-> attrs, both ways ---------------------------------------------------------------------

_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _strip_none(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
        return typing.Union[tuple(args)]  # noqa: UP007 - rebuilding a union from its parts
    return hint


def _tagged_variants(hint: Any) -> dict[str, type] | None:
    """{kind: class} when `hint` is a union of attrs classes each with a one-value Literal `kind`."""
    if typing.get_origin(hint) not in (typing.Union, types.UnionType):
        return None
    variants: dict[str, type] = {}
    for arg in typing.get_args(hint):
        if not attrs.has(arg):
            return None
        kind = typing.get_type_hints(arg).get("kind")
        if kind is None or typing.get_origin(kind) is not Literal or len(typing.get_args(kind)) != 1:
            return None
        variants[typing.get_args(kind)[0]] = arg
    return variants


def _json_type(hint: Any) -> str | None:
    if hint in _JSON_TYPES:
        return _JSON_TYPES[hint]
    origin = typing.get_origin(hint)
    if origin in (tuple, list):
        return "array"
    if origin is dict:
        return "object"
    return None


def _schema_types(node: dict[str, Any]) -> set[str]:
    declared = node.get("type")
    if declared is None:
        return set()
    return set(declared) if isinstance(declared, list) else {declared}


def _check_class(root, cls: type, node: dict[str, Any], path: str, problems: list[str], extra_required=()) -> None:
    hints = typing.get_type_hints(cls)
    fields = {f.metadata.get("key", f.name): f for f in attrs.fields(cls)}
    properties = node.get("properties") or {}
    if set(fields) != set(properties):
        problems.append(
            f"{path}: attrs {cls.__name__} has {sorted(set(fields) - set(properties))} not in the schema; "
            f"schema has {sorted(set(properties) - set(fields))} not in {cls.__name__}"
        )
    required = set(node.get("required") or []) | set(extra_required)
    no_default = {key for key, f in fields.items() if f.default is attrs.NOTHING}
    if required != no_default:
        problems.append(
            f"{path}: schema requires {sorted(required)}, {cls.__name__} has no default for {sorted(no_default)}"
        )
    for key, f in fields.items():
        if key in properties:
            _check_type(root, hints[f.name], _deref(root, properties[key]), f"{path}.{key}", problems)


def _check_union(root, variants: dict[str, type], node: dict[str, Any], path: str, problems: list[str]) -> None:
    branches: dict[str, dict[str, Any]] = {}
    for branch in node.get("allOf") or []:
        const = branch.get("if", {}).get("properties", {}).get("kind", {}).get("const")
        if const is not None and "then" in branch:
            branches[const] = branch["then"]
    kinds = set((node.get("properties") or {}).get("kind", {}).get("enum") or [])
    if not (set(variants) == set(branches) == kinds):
        problems.append(
            f"{path}: attrs kinds {sorted(variants)}, if/then kinds {sorted(branches)}, enum {sorted(kinds)}"
        )
    for kind, cls in variants.items():
        if kind in branches:
            then = branches[kind]
            # `kind` itself is checked by the const above; compare the rest like any table.
            then_props = {k: v for k, v in (then.get("properties") or {}).items() if k != "kind"}
            fields = {f.metadata.get("key", f.name) for f in attrs.fields(cls)} - {"kind"}
            if fields != set(then_props) or "kind" not in (then.get("properties") or {}):
                problems.append(
                    f"{path}[kind={kind}]: {cls.__name__} fields {sorted(fields)} vs then {sorted(then_props)}"
                )
            required = set(node.get("required") or []) | set(then.get("required") or [])
            no_default = {f.metadata.get("key", f.name) for f in attrs.fields(cls) if f.default is attrs.NOTHING}
            if required != no_default:
                problems.append(
                    f"{path}[kind={kind}]: schema requires {sorted(required)}, no default {sorted(no_default)}"
                )
            hints = typing.get_type_hints(cls)
            for f in attrs.fields(cls):
                key = f.metadata.get("key", f.name)
                if key in then_props:
                    _check_type(root, hints[f.name], _deref(root, then_props[key]), f"{path}[{kind}].{key}", problems)


def _check_type(root, hint: Any, node: dict[str, Any], path: str, problems: list[str]) -> None:
    hint = _strip_none(hint)
    variants = _tagged_variants(hint)
    if variants is not None:
        _check_union(root, variants, node, path, problems)
        return
    if attrs.has(hint):
        if "object" not in _schema_types(node):
            problems.append(f"{path}: {hint.__name__} is a table but the schema says {node.get('type')}")
        _check_class(root, hint, node, path, problems)
        return
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        if set(args) != set(node.get("enum") or []):
            problems.append(f"{path}: Literal{list(args)} vs schema enum {node.get('enum')}")
        return
    if origin is dict:
        if "object" not in _schema_types(node):
            problems.append(f"{path}: a dict but the schema says {node.get('type')}")
        value = args[1] if args else Any
        extra = node.get("additionalProperties")
        if value is not Any:
            if not isinstance(extra, dict):
                problems.append(f"{path}: dict[str, {value}] but the schema has no additionalProperties schema")
            else:
                _check_type(root, value, _deref(root, extra), f"{path}.<name>", problems)
        return
    if origin in (typing.Union, types.UnionType):
        wanted = {_json_type(a) for a in args}
        if wanted != _schema_types(node):
            problems.append(f"{path}: {hint} vs schema type {node.get('type')}")
        return
    wanted = _json_type(hint)
    if wanted is None:
        problems.append(f"{path}: don't know how to compare {hint!r} with the schema")
        return
    if _schema_types(node) != {wanted}:
        problems.append(f"{path}: {hint} wants schema type {wanted!r}, schema says {node.get('type')}")
    if origin is tuple:
        items = _deref(root, node.get("items") or {})
        fixed = [a for a in args if a is not Ellipsis]
        if Ellipsis not in args and not (node.get("minItems") == node.get("maxItems") == len(fixed)):
            problems.append(
                f"{path}: {hint} has {len(fixed)} items; schema min/max {node.get('minItems')}/{node.get('maxItems')}"
            )
        if fixed:
            _check_type(root, fixed[0], items, f"{path}[]", problems)


def test_schema_top_level_matches_spec_class(schema):
    fields = {f.metadata.get("key", f.name) for f in attrs.fields(spec_types.Spec)}
    assert fields == set(schema["properties"])


def test_schema_and_attrs_classes_correspond(schema):
    problems: list[str] = []
    _check_class(schema, spec_types.Spec, schema, "spec", problems)
    assert problems == []


def test_the_schema_comparison_is_not_vacuous(schema):
    """Drop one key from a copy of the schema and rename a field's key: both must be noticed."""
    broken = json.loads(json.dumps(schema))
    del broken["properties"]["geometry"]["properties"]["layout"]
    del broken["$defs"]["shift"]["allOf"][2]["then"]["properties"]["max_shift"]
    broken["properties"]["sampler"]["properties"]["steps"]["type"] = "number"
    problems: list[str] = []
    _check_class(broken, spec_types.Spec, broken, "spec", problems)
    text = "\n".join(problems)
    assert "spec.geometry" in text
    assert "kind=resolution" in text
    assert "spec.sampler.steps" in text


def test_class_key_is_spelled_class(schema):
    """`class` is not a Python name: the attrs field `cls` carries the TOML key in its metadata."""
    (cls_field,) = [f for f in attrs.fields(spec_types.ComponentSpec) if f.name == "cls"]
    assert cls_field.metadata == {"key": "class"}
    assert "class" in schema["$defs"]["component"]["properties"]
    assert "cls" not in schema["$defs"]["component"]["properties"]


def _listed(text: str) -> set[str]:
    """`a, latent.frames/height/width, patch_t/patch_h` -> {a, latent.frames, latent.height, ...}."""
    names: set[str] = set()
    text = re.sub(r"\s*\([^)]*\)", "", text)  # drop glosses like `sigma ([B] float32)`
    for item in text.split(","):
        first, *rest = (part.strip() for part in item.strip().rstrip(".").split("/"))
        names.add(first)
        prefix = first.rsplit(".", 1)[0] + "." if "." in first else ""
        names.update(part if "." in part else prefix + part for part in rest)
    return names


def test_call_vocabulary_in_schema_matches_the_compiler(schema):
    """The `[transformer.call]` description is the user's reference: its names and ops are the real ones."""
    from ltxc.adapter import CALL_NAMES
    from ltxc.compiler import geometry_numbers
    from ltxc.geometry import FrameRule, Geometry
    from ltxc.ops import op_table

    description = schema["properties"]["transformer"]["properties"]["call"]["description"]
    match = re.search(r"Names: (?P<names>.*?); ops: (?P<ops>.*?)\. ", description)
    assert match, description
    geometry = Geometry(4, 8, 4, FrameRule(4, 1), 16)
    listed = _listed(match["names"])
    # names that depend on the spec are described by a pattern: text.<name> and <stream>.latents
    assert {"text.<name>", "<stream>.latents and <stream>.joint for each [streams] entry"} <= listed
    assert {n for n in listed if "<" not in n} == set(CALL_NAMES) | set(geometry_numbers(geometry))
    assert _listed(match["ops"]) == set(op_table(geometry))


# --- (d) no model-family names in the framework ----------------------------------------------------------

FAMILY_NAMES = [
    "LTX",
    "LTXVideo",
    "LTX2",
    "Wan",
    "Gemma",
    "T5",
    "UMT5",
    "ByT5",
    "Flux",
    "Hunyuan",
    "Mochi",
    "CogVideoX",
]
FAMILY_RE = re.compile(r"\b(?:" + "|".join(map(re.escape, FAMILY_NAMES)) + r")\b")
# As code: a family name starting an identifier or a word in a string and not running on in lower case,
# so `LTX2VideoTransformer3DModel`, `Gemma3`, `"UMT5EncoderModel"` and `wan_` (any case) are caught while
# `Wanted` or `T50` are not.
FAMILY_IN_CODE = re.compile(
    r"(?<![a-z0-9])(?:"
    + "|".join(sorted(map(re.escape, FAMILY_NAMES), key=len, reverse=True))
    + r")(?![a-z])"
    + r"|(?i:(?<![a-z0-9])(?:ltx2|ltxv|wan|gemma|umt5|t5)(?=_|\d|$))"
)


def _code_tokens(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every name and string token that is code: comments and docstrings are left out."""
    import io
    import tokenize

    source = path.read_text()
    docstrings = {
        (node.body[0].lineno, node.body[0].col_offset)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(getattr(node.body[0], "value", None), ast.Constant)
        and isinstance(node.body[0].value.value, str)
    }
    tokens = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if (
            token.type == tokenize.NAME
            or (token.type == tokenize.STRING and token.start not in docstrings)
            or token.type == getattr(tokenize, "FSTRING_MIDDLE", -1)
        ):
            tokens.append((token.start[0], token.string))
    return tokens


def test_no_model_family_identifier_as_code_in_ltxc():
    """Issue 6's guard: model knowledge lives in specs/; ltxc/ code never names a family (identifiers, strings)."""
    hits = []
    for path in sorted(LTXC.rglob("*.py")):
        for line, text in _code_tokens(path):
            for match in FAMILY_IN_CODE.finditer(text):
                hits.append(f"{path.relative_to(ROOT)}:{line}: {match.group()!r} in {text[:80]!r}")
    assert hits == [], "model knowledge belongs in specs/, not ltxc/:\n" + "\n".join(hits)


# The shipped specs' task names (and the words a task check would be written with): `ltxc/` reads tasks from the
# plan, so none of them may appear as code there (issue 13: "grep finds no task name as code in ltxc/").
TASK_IN_CODE = re.compile(r"(?i:(?<![a-z0-9])(?:i2v|ic_lora|iclora|ic-lora|image_to_video|img2vid)(?![a-z0-9]))")


def test_no_task_name_as_code_in_ltxc():
    """A task is spec data like a model: `ltxc/` never names one in code (identifiers, strings)."""
    hits = []
    for path in sorted(LTXC.rglob("*.py")):
        for line, text in _code_tokens(path):
            for match in TASK_IN_CODE.finditer(text):
                hits.append(f"{path.relative_to(ROOT)}:{line}: {match.group()!r} in {text[:80]!r}")
    assert hits == [], "task knowledge belongs in specs/ and run configs, not ltxc/:\n" + "\n".join(hits)


def test_task_pattern_catches_task_names_not_words():
    for caught in ('"i2v"', "ic_lora", "IC-LoRA", "if task == 'i2v':", "image_to_video"):
        assert TASK_IN_CODE.search(caught), caught
    for fine in ("i2vector", "logic_lorax", "video", "image"):
        assert not TASK_IN_CODE.search(fine), fine
    shipped = {
        name for spec in (ROOT / "specs").rglob("*.toml") for name in tomllib.loads(spec.read_text()).get("tasks", {})
    }
    assert shipped and all(TASK_IN_CODE.search(name) for name in shipped), shipped  # the pattern knows every task


def test_family_identifier_pattern_catches_class_names_not_words(tmp_path):
    for caught in ("LTX2VideoTransformer3DModel", "Gemma3ForConditionalGeneration", "UMT5EncoderModel",
                   "WanPipeline", "is_ltx2", "wan_shift", "T5", "AutoencoderKLLTXVideo"):  # fmt: skip
        assert FAMILY_IN_CODE.search(caught), caught
    for fine in ("Wanted", "wanted", "ltxc", "want", "gemmary", "Transformer", "sampler"):
        assert not FAMILY_IN_CODE.search(fine), fine
    # comments and docstrings are left out, code is not
    module = tmp_path / "m.py"
    module.write_text('"""About LTX2."""\n# Gemma here\nx = "WanPipeline"\ndef f():\n    """T5."""\n    return 1\n')
    assert [text for _, text in _code_tokens(module) if FAMILY_IN_CODE.search(text)] == ['"WanPipeline"']


def test_no_model_family_names_in_ltxc_source():
    """Stricter still: not even comments name a family (the framework's prose stays model-free)."""
    hits = []
    for path in sorted(LTXC.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            for match in FAMILY_RE.finditer(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {match.group()}: {line.strip()}")
    assert hits == [], "model knowledge belongs in specs/, not ltxc/:\n" + "\n".join(hits)


def test_family_pattern_is_case_sensitive_and_whole_word():
    assert FAMILY_RE.search("LTX-Video") and FAMILY_RE.search("a T5 encoder") and FAMILY_RE.search("Wan 2.1")
    assert not FAMILY_RE.search("ltxc.spec") and not FAMILY_RE.search("wanted") and not FAMILY_RE.search("T50")


# --- (e) every spec compiles -----------------------------------------------------------------------------


def _spec_files() -> list[Path]:
    runs = SPECS / "runs"
    return sorted(p for p in SPECS.rglob("*.toml") if runs not in p.parents)


def test_there_are_specs():
    names = {p.relative_to(SPECS).as_posix() for p in _spec_files()}
    assert {
        "ltx.toml",
        "tiny/ltx.toml",
        "ltx-2.3.toml",
        "tiny/ltx-2.3.toml",
        "wan-2.1.toml",
        "tiny/wan-2.1.toml",
    } <= names


@pytest.mark.parametrize("path", _spec_files(), ids=lambda p: p.relative_to(SPECS).as_posix())
def test_every_spec_compiles(path):
    from ltxc.compiler import compile_spec
    from ltxc.spec import load_spec

    plan = compile_spec(load_spec(path))
    assert plan.hash and len(plan.hash) == 64
    assert Path(plan.sources[-1]).resolve() == path.resolve()
    assert plan.call  # a spec without a call mapping could not drive a transformer


# --- (f) no utils ----------------------------------------------------------------------------------------


def test_no_utils_module():
    offenders = [p.relative_to(ROOT).as_posix() for p in LTXC.rglob("*") if p.stem == "utils" or p.name == "utils"]
    assert offenders == []


# --- (g) sizes -------------------------------------------------------------------------------------------

MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 400


def _function_lengths(path: Path, root: Path = ROOT) -> list[tuple[str, int]]:
    """(path:line name, lines from `def` to its last line) for every function and method in a module, nested ones
    included (decorators are not counted)."""
    return [
        (f"{path.relative_to(root).as_posix()}:{node.lineno} {node.name}", node.end_lineno - node.lineno + 1)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno is not None
    ]


def test_no_function_over_80_lines():
    """A long function is split into named steps (the train loop reads like a list of them)."""
    lengths = [found for path in sorted(LTXC.rglob("*.py")) for found in _function_lengths(path)]
    assert len(lengths) > 100  # the walk sees ltxc's functions
    offenders = sorted((f"{where}: {lines} lines" for where, lines in lengths if lines > MAX_FUNCTION_LINES))
    assert not offenders, f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps):\n" + "\n".join(
        offenders
    )


def test_no_module_over_400_lines():
    """A module that outgrows 400 lines becomes a package of modules that each say what they hold."""
    lengths = {path.relative_to(ROOT).as_posix(): len(path.read_text().splitlines()) for path in LTXC.rglob("*.py")}
    offenders = sorted(f"{where}: {lines} lines" for where, lines in lengths.items() if lines > MAX_MODULE_LINES)
    assert not offenders, f"modules over {MAX_MODULE_LINES} lines (make a package):\n" + "\n".join(offenders)


def test_the_size_guards_measure_from_def_to_the_last_line(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text("@decorator\ndef f():\n    x = 1\n\n    return x\n\n\nasync def g():\n    pass\n")
    found = {where.split(" ")[-1]: lines for where, lines in _function_lengths(source, tmp_path)}
    assert found == {"f": 4, "g": 2}
