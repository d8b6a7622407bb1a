"""The spec language: TOML -> validated, typed `Spec`. Imports no torch (a guard test checks)."""

from ltxc.spec.errors import Problem, SpecError, UserError
from ltxc.spec.load import Loaded, Locator, load_document, load_spec
from ltxc.spec.types import Spec, spec_from_dict, spec_to_dict

__all__ = [
    "Loaded",
    "Locator",
    "Problem",
    "Spec",
    "SpecError",
    "UserError",
    "load_document",
    "load_spec",
    "spec_from_dict",
    "spec_to_dict",
]
