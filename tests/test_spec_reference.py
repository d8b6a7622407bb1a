"""docs/spec-reference.md is generated from the schema and must not drift from it.

Run: pytest tests/test_spec_reference.py   (regenerate with: python tools/spec_reference.py > docs/spec-reference.md)
"""

from __future__ import annotations

import pytest
from conftest import ROOT, generated_reference


def test_reference_matches_schema(capsys: pytest.CaptureFixture[str]) -> None:
    generated = generated_reference(capsys)
    committed = (ROOT / "docs" / "spec-reference.md").read_text()
    assert generated == committed, "regenerate: python tools/spec_reference.py > docs/spec-reference.md"


def test_reference_lists_every_section() -> None:
    text = (ROOT / "docs" / "spec-reference.md").read_text()
    for key in ("geometry.frames.multiple", "latent.normalise.scaling_factor", "transformer.call", "sampler.shift"):
        assert f"| `{key}` |" in text
