"""Load a model spec: TOML -> `extends` -> local paths made absolute -> JSON Schema -> a frozen `Spec`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ltxc.document import Loaded, Locator, load_document

SCHEMA = "spec.schema.json"
EXTENDS = ("model", "extends")
# Component keys that hold local paths: resolved against the directory of the file that wrote them.
_PATH_PREFIXES = ("./", "../", "/", "~")


def load_spec(path: str | Path) -> Loaded:
    """Load, merge, validate and structure a model spec; `.value` is a `Spec`."""
    from ltxc.spec.types import spec_from_dict

    return load_document(path, SCHEMA, spec_from_dict, extends_key=EXTENDS, prepare=resolve_local_paths)


def resolve_local_paths(data: dict[str, Any], locator: Locator) -> None:
    """Make `pretrained = "./dir"` absolute, relative to the file that wrote it."""
    components = data.get("components")
    if not isinstance(components, dict):
        return  # the schema reports it
    for role, table in components.items():
        if not isinstance(table, dict):
            continue
        value = table.get("pretrained")
        if isinstance(value, str) and value.startswith(_PATH_PREFIXES):
            file, _ = locator.where(("components", role, "pretrained"))
            base = Path(file).resolve().parent
            table["pretrained"] = str((base / Path(value).expanduser()).resolve())


__all__ = ["SCHEMA", "load_spec", "resolve_local_paths"]
