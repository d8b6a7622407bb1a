"""`plan.json` -> a `Plan`: the resolved spec read back, its hash checked, and compiled again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ltxc.compiler.build import compile_spec
from ltxc.compiler.resolved import spec_hash
from ltxc.document import Locator, validate_data
from ltxc.errors import UserError
from ltxc.plan import PLAN_FORMAT, Plan
from ltxc.spec import spec_from_dict


def load_plan(path: str | Path) -> Plan:
    """Read a `plan.json` written by `ltxc compile` and compile it again (no TOML needed)."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no plan here; run `ltxc compile SPEC` first (it writes .ltxc/plan.json)") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read the plan ({exc}); run `ltxc compile SPEC` again") from None
    return plan_from_json(content, str(path))


def plan_from_json(content: Any, origin: str = "plan.json") -> Plan:
    """Rebuild a plan from the content of a `plan.json` (also how worker processes receive it)."""
    if not isinstance(content, dict) or content.get("ltxc_plan") != PLAN_FORMAT or "spec" not in content:
        raise UserError(f"{origin}: not an ltxc plan of format {PLAN_FORMAT}; run `ltxc compile SPEC` again")
    data = content["spec"]
    if spec_hash(data) != content.get("hash"):
        raise UserError(f"{origin}: the plan was edited after it was compiled (hash mismatch); edit the spec instead")
    locator = Locator({}, origin)
    loaded = validate_data(data, "spec.schema.json", spec_from_dict, locator, tuple(content.get("sources", ())))
    return compile_spec(loaded)
