"""The wheel carries the JSON Schemas and the specs, and an installed ltxc finds them without the checkout.

Run: pytest tests/test_packaging.py  (builds a wheel with hatchling, no network)
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
    )
    (built,) = out.glob("ltxc-*.whl")
    return built


def test_wheel_contains_schemas_and_specs(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "ltxc/schemas/spec.schema.json" in names
    assert "ltxc/specs/ltx.toml" in names
    assert "ltxc/specs/tiny/ltx.toml" in names
    assert "ltxc/specs/configs/Lightricks/LTX-2.3/transformer/config.json" in names  # the memory plan's, offline
    assert not any(name.startswith(("schemas/", "specs/", "tests/")) for name in names)


def test_installed_package_uses_its_own_schemas(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import ltxc, sys\n"
        "from ltxc.document.load import schema_path\n"
        "from ltxc.spec import load_spec\n"
        "p = schema_path('spec.schema.json')\n"
        "assert str(p).startswith(sys.argv[1]), p\n"
        "spec = load_spec(sys.argv[1] + '/ltxc/specs/tiny/ltx.toml').value\n"
        "print(spec.model.name)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run(
        [sys.executable, "-c", code, str(site)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ltx-video-tiny"
