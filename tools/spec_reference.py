"""Print a schema reference (every key with its description, and its default where the schema gives one) as Markdown.

Run: python tools/spec_reference.py > docs/spec-reference.md
     python tools/spec_reference.py run.schema.json > docs/run-reference.md
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

from ltxc.document.load import load_schema

TITLES = {"spec.schema.json": "Spec reference", "run.schema.json": "Run config reference"}


def _resolve(node: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref:
        target = schema
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        return {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _properties(node: dict[str, Any], schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Own properties plus those of if/then variants (tagged unions)."""
    props = dict(node.get("properties", {}))
    for branch in node.get("allOf", []):
        props.update({k: v for k, v in branch.get("then", {}).get("properties", {}).items() if k not in props})
    return props


def rows(node: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, description) for every key under `node`, depth first."""
    node = _resolve(node, schema)
    for key, sub in _properties(node, schema).items():
        sub = _resolve(sub, schema)
        path = f"{prefix}{key}"
        description = sub.get("description", "")
        if "default" in sub:  # JSON spells defaults as TOML does (true, "auto", [0.9, 0.999])
            description += f" Default: `{json.dumps(sub['default'])}`."
        yield path, description
        yield from rows(sub, schema, path + ".")
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and (extra.get("$ref") or "properties" in extra):
        yield from rows(extra, schema, prefix + "<name>.")
    items = node.get("items")
    if isinstance(items, dict) and (items.get("$ref") or "properties" in items):  # an array of tables
        yield from rows(items, schema, prefix.removesuffix(".") + "[].")


def main(argv: list[str]) -> None:
    """Print the reference table of the schema named in `argv` (default spec.schema.json)."""
    name = argv[0] if argv else "spec.schema.json"
    schema = load_schema(name)
    print(f"# {TITLES.get(name, name)}\n\nGenerated from `schemas/{name}`.\n\n| key | description |\n|---|---|")
    for path, description in rows(schema, schema):
        print(f"| `{path}` | {description.replace('|', '/')} |")


if __name__ == "__main__":
    main(sys.argv[1:])
