"""The spec language: TOML -> validated, typed `Spec`. Imports no torch and nothing of ltxc but `ltxc.errors`
and `ltxc.document` (a guard test checks)."""

from ltxc.spec.load import load_spec
from ltxc.spec.types import Spec, spec_from_dict, spec_to_dict

__all__ = ["Spec", "load_spec", "spec_from_dict", "spec_to_dict"]
