"""`ltxc verify`'s run settings: `--dtype` (the components at a precision, as the real spec keeps them) and the
one-line note on a spec shift that the scheduler's own config does not apply."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from ltxc.compiler import compile_spec
from ltxc.components import DTYPES
from ltxc.errors import UserError
from ltxc.plan import Plan
from ltxc.spec import load_spec
from ltxc.spec.types import FixedShiftSpec, ResolutionShiftSpec, ShiftSpec

KEPT = "float32"
# A resolution shift's numbers and the FlowMatch scheduler config keys that hold the same ones.
_RESOLUTION_KEYS = {
    "base_seq_len": "base_image_seq_len",
    "max_seq_len": "max_image_seq_len",
    "base_shift": "base_shift",
    "max_shift": "max_shift",
}


def with_dtype(plan: Plan, dtype: str) -> tuple[Plan, str]:
    """The plan with every module component at `dtype`, except the roles the root spec keeps in float32; a note.

    The root spec is the real one a tiny or test spec extends (`plan.sources[0]`): it carries the real dtypes
    (e.g. a VAE that runs in float32). Each component is still built by its recipe, as real loading builds it.
    """
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    root_file = plan.sources[0] if plan.sources else None
    root = _root_dtypes(plan, root_file)
    modules = {role: r for role, r in plan.recipes.items() if r.kind == "module"}
    kept = [role for role in modules if root.get(role) == KEPT and dtype != KEPT]
    recipes = {
        role: attrs.evolve(r, dtype=dtype) if role in modules and role not in kept else r
        for role, r in plan.recipes.items()
    }
    changed = [role for role in modules if role not in kept]
    note = f"--dtype {dtype}: {', '.join(changed) or 'no component'}"
    if kept:
        them = "them" if len(kept) > 1 else "it"
        note += f"; {', '.join(kept)} kept in {KEPT}, as the root spec {root_file} keeps {them}"
    return attrs.evolve(plan, recipes=recipes), note


def _root_dtypes(plan: Plan, root_file: str | None) -> dict[str, str]:
    """{module role: dtype} as the root spec resolves it (the plan's own when it extends nothing)."""
    if root_file is None or len(plan.sources) == 1:
        return {role: r.dtype for role, r in plan.recipes.items() if r.kind == "module"}
    try:
        root = compile_spec(load_spec(Path(root_file)))
    except (OSError, UserError) as exc:
        raise UserError(f"--dtype reads the root spec {root_file} for the dtypes it keeps: {exc}") from None
    return {role: r.dtype for role, r in root.recipes.items() if r.kind == "module"}


def shift_notes(plan: Plan, scheduler: Any) -> list[str]:
    """One line per spec shift ([sampler], [flow]) that the scheduler's own config does not apply."""
    config = getattr(scheduler, "config", None)
    if not isinstance(config, Mapping):
        return []
    notes = []
    for section, shift in (("[sampler] shift", plan.sampler.shift), ("[flow] shift", plan.flow.shift)):
        problem = _shift_problem(shift, config)
        if problem:
            notes.append(f"{section} differs from the scheduler's config ({type(scheduler).__name__}): {problem}")
    return notes


def _shift_problem(shift: ShiftSpec, config: Mapping[str, Any]) -> str | None:
    dynamic = config.get("use_dynamic_shifting")
    fixed_key = "flow_shift" if config.get("use_flow_sigmas") or "flow_shift" in config else "shift"
    fixed = config.get(fixed_key)
    if isinstance(shift, ResolutionShiftSpec):
        if dynamic is not None and not dynamic:
            return f"the spec shifts by resolution, the config has use_dynamic_shifting = false ({fixed_key} {fixed})"
        if dynamic is None:
            return f"the spec shifts by resolution, the config has no dynamic shifting ({fixed_key} {fixed})"
        differ = [
            f"{key} {getattr(shift, name)} vs {config[key]}"
            for name, key in _RESOLUTION_KEYS.items()
            if key in config and float(config[key]) != float(getattr(shift, name))
        ]
        return ", ".join(differ) or None
    if isinstance(shift, FixedShiftSpec):
        if dynamic:
            return f"the spec's shift is fixed ({shift.value:g}), the config has use_dynamic_shifting = true"
        if fixed is not None and float(fixed) != float(shift.value):
            return f"the spec's fixed shift is {shift.value:g}, the config's {fixed_key} is {fixed:g}"
    return None
