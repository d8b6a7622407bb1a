"""Print the spec reference (every key of schemas/spec.schema.json with its description) as Markdown.

Run: python tools/spec_reference.py > spec-reference.md
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ltxc.spec.load import load_schema


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
        yield path, sub.get("description", "")
        yield from rows(sub, schema, path + ".")
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and extra.get("$ref"):
        yield from rows(extra, schema, prefix + "<name>.")


def main() -> None:
    """Print the reference table."""
    schema = load_schema("spec.schema.json")
    print("# Spec reference\n\nGenerated from `schemas/spec.schema.json`.\n\n| key | description |\n|---|---|")
    for path, description in rows(schema, schema):
        print(f"| `{path}` | {description.replace('|', '/')} |")


if __name__ == "__main__":
    main()
