"""TOML -> `extends` -> `--set` -> JSON Schema -> frozen attrs: the one way a spec or a run config is read.

Every problem a user can cause here becomes a `ConfigError` whose lines read `FILE:LINE: key.path: message`.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
from collections.abc import Callable, Iterable
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import attrs
import cattrs
import jsonschema

from ltxc.document.locate import KeyPath, key_lines
from ltxc.errors import ConfigError, Problem, dotted

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

T = TypeVar("T")


@attrs.frozen
class Locator:
    """Answers "where was this key written?" for a merged document: (file, line)."""

    origins: dict[KeyPath, tuple[str, int]]
    root_file: str

    def where(self, path: Iterable[object]) -> tuple[str, int]:
        """The file and line of `path`, or of its nearest written ancestor."""
        exact = tuple(p if isinstance(p, int) else str(p) for p in path)
        # elements of arrays of tables are recorded with their index; other lists (inline arrays) are not
        for keys in (exact, tuple(p for p in exact if not isinstance(p, int))):
            for depth in range(len(keys), 0, -1):
                if keys[:depth] in self.origins:
                    return self.origins[keys[:depth]]
        return self.root_file, 1

    def problem(self, path: Iterable[object], message: str) -> Problem:
        """A `Problem` at `path`."""
        path = list(path)
        file, line = self.where(path)
        return Problem(file, line, dotted(path), message)


@attrs.frozen
class Loaded:
    """A validated document: its typed form, its merged data, and where every key came from."""

    value: Any
    data: dict[str, Any]
    locator: Locator
    files: tuple[str, ...]


def schema_path(name: str) -> Path:
    """Path of a shipped JSON Schema (inside the installed package, or the checkout's `schemas/`)."""
    packaged = resources.files("ltxc") / "schemas" / name
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "schemas" / name


@cache
def load_schema(name: str) -> dict[str, Any]:
    """A shipped JSON Schema as data."""
    return json.loads(schema_path(name).read_text())


def load_document(
    path: str | Path,
    schema_name: str,
    structure: Callable[[dict[str, Any]], T],
    extends_key: KeyPath | None = None,
    overrides: dict[KeyPath, Any] | None = None,
    replace_on_kind_change: bool = True,
    prepare: Callable[[dict[str, Any], Locator], None] | None = None,
) -> Loaded:
    """Read a TOML document (following `extends`), validate it against a schema and structure it.

    `overrides` (`--set` items, in order) apply last; `replace_on_kind_change=False` merges tables with a
    `kind` key like any other (for documents whose `kind` is a plain setting, not a tagged union);
    `prepare` edits the merged data in place before validation (e.g. makes local paths absolute).
    """
    layers = _read_chain(Path(path), extends_key)
    data: dict[str, Any] = {}
    origins: dict[KeyPath, tuple[str, int]] = {}
    for file, layer, lines in layers:
        _record_origins(layer, (), file, lines, origins)
        data = _deep_merge(data, layer, replace_on_kind_change)
    apply_overrides(data, origins, overrides or {})
    locator = Locator(origins, layers[-1][0])
    if prepare is not None:
        prepare(data, locator)
    return validate_data(data, schema_name, structure, locator, tuple(file for file, _, _ in layers))


def validate_data(
    data: dict[str, Any],
    schema_name: str,
    structure: Callable[[dict[str, Any]], T],
    locator: Locator,
    files: tuple[str, ...],
) -> Loaded:
    """Validate already-merged data against a schema (reporting every error) and structure it."""
    _validate(data, load_schema(schema_name), locator)
    try:
        value = structure(data)
    except cattrs.BaseValidationError as exc:  # the schema should catch these first; this is the backstop
        raise ConfigError(_cattrs_problems(exc, locator)) from None
    return Loaded(value, data, locator, files)


def _read_toml(path: Path, referrer: Problem | None) -> tuple[dict[str, Any], dict[KeyPath, int]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if referrer is not None:
            raise ConfigError([attrs.evolve(referrer, message=f"{referrer.message}: {path} does not exist")]) from None
        raise ConfigError([Problem(str(path), 1, "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(str(path), 1, "", f"cannot read: {exc}")]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None) or _line_from_message(str(exc))
        raise ConfigError([Problem(str(path), line, "", f"not valid TOML: {exc}")]) from None
    return data, key_lines(text)


def _line_from_message(message: str) -> int:
    # Python < 3.14 only says "(at line N, column M)" inside the message.
    marker = "at line "
    if marker in message:
        digits = message.split(marker, 1)[1].split(",")[0].split(")")[0]
        if digits.isdigit():
            return int(digits)
    return 0


def _read_chain(path: Path, extends_key: KeyPath | None) -> list[tuple[str, dict[str, Any], dict[KeyPath, int]]]:
    """The file and its `extends` ancestors, root ancestor first."""
    chain: list[tuple[str, dict[str, Any], dict[KeyPath, int]]] = []
    seen: list[Path] = []
    referrer: Problem | None = None
    current = path
    while True:
        resolved = current.resolve()
        if resolved in seen:
            cycle = " -> ".join(str(p) for p in [*seen[seen.index(resolved) :], resolved])
            assert referrer is not None
            raise ConfigError([attrs.evolve(referrer, message=f"extends cycle: {cycle}; remove one link")])
        seen.append(resolved)
        data, lines = _read_toml(current, referrer)
        chain.append((str(current), data, lines))
        parent = _get_path(data, extends_key) if extends_key else None
        if parent is None:
            break
        where = lines.get(extends_key, 1)
        referrer = Problem(str(current), where, dotted(extends_key), f"cannot extend {parent!r}")
        if not isinstance(parent, str):
            raise ConfigError([attrs.evolve(referrer, message="must be a path string")])
        current = Path(os.path.normpath(current.parent / parent))
    return chain[::-1]


def _deep_merge(base: dict[str, Any], over: dict[str, Any], replace_on_kind_change: bool = True) -> dict[str, Any]:
    """Tables merge key by key; anything else: `over` wins.

    A tagged table (one with a `kind`) that changes its kind replaces the parent's table instead: a child
    switching `normalise` from mean_std to shift_scale must not inherit the parent's mean and std.
    """
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        if (
            isinstance(value, dict)
            and isinstance(old, dict)
            and (not replace_on_kind_change or value.get("kind", old.get("kind")) == old.get("kind"))
        ):
            out[key] = _deep_merge(old, value, replace_on_kind_change)
        else:
            out[key] = value
    return out


def _record_origins(
    value: Any, path: KeyPath, file: str, lines: dict[KeyPath, int], origins: dict[KeyPath, tuple[str, int]]
) -> None:
    if path:
        ancestors = (path[:depth] for depth in range(len(path), 0, -1))
        origins[path] = (file, next((lines[p] for p in ancestors if p in lines), 1))
    if isinstance(value, dict):
        for key, sub in value.items():
            _record_origins(sub, (*path, key), file, lines, origins)
    elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        for index, item in enumerate(value):  # an array of tables: each element where it was written
            _record_origins(item, (*path, index), file, lines, origins)


def _get_path(data: dict[str, Any], path: KeyPath) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def apply_overrides(
    data: dict[str, Any], origins: dict[KeyPath, tuple[str, int]], overrides: dict[KeyPath, Any]
) -> None:
    """Set each `--set` key path in `data`; its origin is `--set:N`, N counting the items from 1."""
    for number, (key, value) in enumerate(overrides.items(), start=1):
        table = data
        for depth in range(1, len(key)):
            if not isinstance(table.get(key[depth - 1]), dict):
                # A table the item creates (or a scalar it turns into one, which the schema then reports).
                table[key[depth - 1]] = {}
                origins[key[:depth]] = ("--set", number)
            table = table[key[depth - 1]]
        table[key[-1]] = value
        for path in [path for path in origins if path[: len(key)] == key]:
            del origins[path]  # keys under a replaced table were written in a file, but are gone now
        origins[key] = ("--set", number)


def _validate(data: dict[str, Any], schema: dict[str, Any], locator: Locator) -> None:
    validator = jsonschema.Draft202012Validator(schema)
    problems = [problem for error in validator.iter_errors(data) for problem in _describe(error, locator)]
    if problems:
        raise ConfigError(problems)


def _describe(error: jsonschema.ValidationError, locator: Locator) -> list[Problem]:
    """Turn a jsonschema error into lines a user can act on (one per unknown key)."""
    path = list(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted((error.schema.get("properties") or {}).keys())
        problems = []
        for key in sorted(set(error.instance) - set(allowed)) or ["?"]:
            hint = difflib.get_close_matches(key, allowed, n=1)
            did_you_mean = f"; did you mean {hint[0]!r}?" if hint else ""
            problems.append(
                locator.problem([*path, key], f"unknown key{did_you_mean} (allowed here: {', '.join(allowed)})")
            )
        return problems
    return [_describe_one(error, path, locator)]


def _describe_one(error: jsonschema.ValidationError, path: list, locator: Locator) -> Problem:
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return locator.problem([*path, missing], "missing required key")
    if error.validator == "type":
        wanted = error.validator_value
        wanted = " or ".join(wanted) if isinstance(wanted, list) else wanted
        return locator.problem(
            path, f"expected {wanted}, got {_toml_type(error.instance)} {_toml_repr(error.instance)}"
        )
    if error.validator == "enum":
        options = ", ".join(_toml_repr(v) for v in error.validator_value)
        return locator.problem(path, f"{_toml_repr(error.instance)} is not one of {options}")
    if error.validator == "pattern":
        desc = error.schema.get("description", f"must match {error.validator_value}")
        return locator.problem(path, f"{error.instance!r} is not valid: {desc}")
    return locator.problem(path, error.message)


def _toml_repr(value: Any) -> str:
    # An enum may mix strings and booleans: show the booleans as TOML spells them.
    return str(value).lower() if isinstance(value, bool) else repr(value)


def _toml_type(value: Any) -> str:
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "table",
    }.get(type(value), type(value).__name__)


def _cattrs_problems(exc: cattrs.BaseValidationError, locator: Locator) -> list[Problem]:
    from cattrs.v import transform_error

    return [locator.problem([], message) for message in transform_error(exc)]


__all__ = ["Loaded", "Locator", "apply_overrides", "load_document", "load_schema", "schema_path", "validate_data"]
