"""The drafted spec as ordered sections of entries, each with a value and/or a TODO, and its TOML text."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field


@dataclass
class Entry:
    """One key: its value (None: undecided, written as a TODO comment), a note and a TODO naming what to read."""

    key: str
    value: object = None
    note: str = ""
    todo: str = ""


@dataclass
class Section:
    """One [table] of the spec, with a comment above it."""

    name: str
    entries: list[Entry] = field(default_factory=list)
    comment: str = ""

    def entries_dict(self) -> dict[str, object]:
        """Key -> value of the decided entries."""
        return {e.key: e.value for e in self.entries if e.value is not None}

    def set(self, key: str, value: object = None, note: str = "", todo: str = "") -> None:
        """Add (or replace) an entry."""
        self.entries = [e for e in self.entries if e.key != key]
        self.entries.append(Entry(key, value, note, todo))


@dataclass
class Document:
    """A whole spec (or tiny twin): a header comment and its sections in order."""

    header: list[str]
    sections: list[Section] = field(default_factory=list)

    def section(self, name: str, comment: str = "") -> Section:
        """The section of that name, created at the end if new."""
        for section in self.sections:
            if section.name == name:
                return section
        section = Section(name, comment=comment)
        self.sections.append(section)
        return section

    def todos(self) -> list[str]:
        """Every TODO as "section.key: text"."""
        return [f"{s.name}.{e.key}: {e.todo}" for s in self.sections for e in s.entries if e.todo]

    def render(self) -> str:
        """The TOML text: decided values as keys, undecided ones as commented-out TODO lines."""
        lines = [f"# {line}" if line else "#" for line in self.header]
        for section in self.sections:
            lines.append("")
            lines.extend(f"# {line}" for line in section.comment.splitlines() if section.comment)
            lines.append(f"[{section.name}]")
            for entry in section.entries:
                lines.extend(_entry_lines(entry))
        return "\n".join(lines) + "\n"


def _entry_lines(entry: Entry) -> list[str]:
    if entry.value is None:
        return [f"# TODO: {entry.key} = ?  {entry.todo}".rstrip()] + ([f"#   {entry.note}"] if entry.note else [])
    notes = ([f"TODO: {entry.todo}"] if entry.todo else []) + ([entry.note] if entry.note else [])
    text = f"{entry.key} = {toml_value(entry.value)}"
    if len(notes) == 1 and len(text) + len(notes[0]) < 112:
        return [f"{text}  # {notes[0]}"]
    return [f"# {note}" for note in notes] + [text]


def toml_value(value: object) -> str:
    """A TOML inline value (strings, numbers, booleans, lists, inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            raise ValueError(f"{value} has no TOML form")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_key(k)} = {toml_value(v)}" for k, v in value.items() if v is not None)
        return "{ " + items + " }" if items else "{}"
    raise ValueError(f"{value!r} has no TOML form")


def _key(key: object) -> str:
    text = str(key)
    return text if text.replace("_", "").replace("-", "").isalnum() else json.dumps(text)
