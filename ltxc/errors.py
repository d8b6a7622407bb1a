"""The project's root exception and the file problems every layer reports: a leaf that imports nothing of ltxc."""

from __future__ import annotations

from collections.abc import Iterable

from attrs import frozen


@frozen
class Problem:
    """One thing wrong with a user's file, and where."""

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class UserError(Exception):
    """An error in what the user gave us: the CLI prints it as is and exits 2, with no traceback."""


class ConfigError(UserError):
    """One or more problems in a spec or a run config, each `FILE:LINE: key.path: message`."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.path))
        super().__init__("\n".join(str(p) for p in self.problems))


def dotted(path: Iterable[object]) -> str:
    """A key path as the user writes it: `components.vae.class`, list indices as `[2]`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out
