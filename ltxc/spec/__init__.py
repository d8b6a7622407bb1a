"""The spec language: TOML -> validated, typed `Spec`. Imports no torch (a guard test checks)."""

from ltxc.spec.errors import Problem, SpecError, UserError
from ltxc.spec.load import Loaded, Locator, load_document, load_spec
from ltxc.spec.run import RunConfig, load_run_config, parse_overrides
from ltxc.spec.types import Spec, spec_from_dict, spec_to_dict

__all__ = [
    "Loaded",
    "Locator",
    "Problem",
    "RunConfig",
    "Spec",
    "SpecError",
    "UserError",
    "load_document",
    "load_run_config",
    "load_spec",
    "parse_overrides",
    "spec_from_dict",
    "spec_to_dict",
]
