"""The cattrs converter that turns validated document data into frozen attrs classes, and back."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override


def key(name: str) -> dict[str, str]:
    """Field metadata naming the TOML key when it is not a valid Python name (e.g. `class`)."""
    return {"key": name}


def make_converter(
    tagged_unions: Mapping[Any, Mapping[str, type]] | None = None, scalar_unions: Iterable[Any] = ()
) -> cattrs.Converter:
    """A strict converter: unknown keys are errors, `key(...)` renames apply both ways.

    `tagged_unions` maps a union type to its variants by their `kind` value; `scalar_unions` are unions of
    plain values (a number or a reference string) that the schema has already checked.
    """
    conv = cattrs.Converter(forbid_extra_keys=True)
    for union, variants in (tagged_unions or {}).items():
        conv.register_structure_hook(
            union, lambda data, _t, variants=variants: conv.structure(data, variants[data["kind"]])
        )
    for union in scalar_unions:
        conv.register_structure_hook(union, _structure_scalar_union)
    conv.register_structure_hook_func(lambda t: t == dict[str, Any], lambda data, _t: dict(data))

    def renames(cls: type) -> dict[str, Any]:
        return {f.name: override(rename=f.metadata["key"]) for f in attrs.fields(cls) if "key" in f.metadata}

    conv.register_structure_hook_factory(
        attrs.has,
        lambda cls: make_dict_structure_fn(cls, conv, _cattrs_forbid_extra_keys=True, **renames(cls)),
    )
    conv.register_unstructure_hook_factory(
        attrs.has,
        lambda cls: make_dict_unstructure_fn(cls, conv, _cattrs_omit_if_default=False, **renames(cls)),
    )
    return conv


def drop_none(value: Any) -> Any:
    """Plain data without unset (None) keys, lists for tuples: what TOML and JSON can hold."""
    if isinstance(value, dict):
        return {k: drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [drop_none(v) for v in value]
    return value


def _structure_scalar_union(value: Any, type_: Any) -> Any:
    # The JSON Schema has already checked these values; lists become tuples so the result stays frozen.
    return tuple(value) if isinstance(value, list) else value
