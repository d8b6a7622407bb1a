"""Where a fact was read: `pipelines/<dir>/<file>.py:<line>` citations into the installed library's source."""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Source:
    """The source of one function or class: its text, its first line and the file it lives in."""

    text: str
    first_line: int
    file: Path

    def cite(self, offset: int = 0) -> str:
        """`pipelines/x/pipeline_x.py:NNN` for a line `offset` lines into this source (0: its first line)."""
        return f"{short_path(self.file)}:{self.first_line + offset}"

    def tree(self) -> ast.Module:
        """The parsed source (dedented, so a method parses on its own)."""
        return ast.parse(textwrap.dedent(self.text))

    def find(self, pattern: str) -> str | None:
        """The citation of the first line matching a regular expression, or None."""
        for offset, line in enumerate(self.text.splitlines()):
            if re.search(pattern, line):
                return self.cite(offset)
        return None


def source_of(obj: object) -> Source | None:
    """The source of a function or class (None where the library ships none)."""
    obj = inspect.unwrap(obj) if callable(obj) else obj  # decorators (no_grad, register_to_config) wrap methods
    try:
        lines, first = inspect.getsourcelines(obj)  # type: ignore[arg-type]
        file = inspect.getsourcefile(obj)  # type: ignore[arg-type]
    except (OSError, TypeError):
        return None
    if file is None:
        return None
    return Source("".join(lines), max(first, 1), Path(file))  # a module's source starts at line 1 (inspect says 0)


def module_source(obj: object) -> Source | None:
    """The whole module source a class is defined in (its docstring examples live there)."""
    module = inspect.getmodule(obj)
    return source_of(module) if module is not None else None


def short_path(file: Path) -> str:
    """A path relative to the installed library's package root (`pipelines/flux/pipeline_flux.py`)."""
    parts = file.parts
    for root in ("diffusers", "transformers"):
        if root in parts:
            index = len(parts) - 1 - parts[::-1].index(root)
            return "/".join(parts[index + 1 :])
    return file.name
