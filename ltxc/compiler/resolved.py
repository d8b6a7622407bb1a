"""The spec as the plan stores it, and its content hash (what caches and checkpoints are keyed by)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from ltxc.components import ComponentRecipe
from ltxc.spec import spec_to_dict
from ltxc.spec.types import Spec


def spec_hash(data: Mapping[str, Any]) -> str:
    """Content hash of a resolved spec: canonical JSON, sha256."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def resolved_data(spec: Spec, recipes: Mapping[str, ComponentRecipe]) -> dict[str, Any]:
    """The spec as the plan stores it: defaults filled, `extends` merged away, one source per component."""
    data = spec_to_dict(spec)
    data["model"].pop("extends", None)  # merged already; the plan records the files instead
    if not data.get("tasks"):
        data.pop("tasks", None)  # a spec without tasks keeps the hash it had before tasks existed
    unused = {"pretrained": ("config", "seed"), "config": ("pretrained", "subfolder", "revision")}
    for role, recipe in recipes.items():
        table = data["components"][role]
        table["source"] = recipe.source
        table["kind"] = recipe.kind
        for key in unused[recipe.source] + (() if recipe.kind == "module" else ("seed", "dtype")):
            table.pop(key, None)  # keys that do nothing stay out of the plan, and out of its hash
    return data
