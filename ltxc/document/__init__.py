"""Reading TOML documents (model specs and run configs): extends, --set, schema, locations, structuring.

A leaf below `spec/` and `runner/config.py`: it imports nothing of ltxc but `ltxc.errors`, and no torch.
"""

from ltxc.document.load import Loaded, Locator, apply_overrides, load_document, load_schema, validate_data
from ltxc.document.locate import KeyPath

__all__ = ["KeyPath", "Loaded", "Locator", "apply_overrides", "load_document", "load_schema", "validate_data"]
