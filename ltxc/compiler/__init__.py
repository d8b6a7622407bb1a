"""The compiler: a loaded spec -> a `Plan`. The one place that maps spec kinds to implementations.

Every check that needs no weights happens here, so a bad spec fails at `ltxc compile` with
`FILE:LINE: key.path: message`, not an hour into a run.

    names        the vocabularies expressions are checked against (the call names come from the adapter)
    checks       geometry rules, roles, normaliser statistics, text lengths, the reference class
    recipes      `[components]` -> component recipes
    expressions  the expression tables: call, flow, text stage, streams, perturbations, reference args
    resolved     the spec as the plan stores it, and its hash
    build        compile_spec: the checks in order, then the plan
    plan_file    plan.json -> a plan
"""

from __future__ import annotations

from ltxc.compiler.build import compile_spec
from ltxc.compiler.names import call_names, geometry_numbers, text_names
from ltxc.compiler.plan_file import load_plan, plan_from_json
from ltxc.compiler.resolved import spec_hash

__all__ = ["call_names", "compile_spec", "geometry_numbers", "load_plan", "plan_from_json", "spec_hash", "text_names"]
