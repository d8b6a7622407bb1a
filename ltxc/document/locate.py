"""Find the line on which each key of a TOML document is written.

tomllib gives values but no positions; errors must say `FILE:LINE`, so this scanner maps every key path
(table headers, `key = value` lines, keys inside inline tables) to its line. It runs only on text that
tomllib has already parsed, so it can be forgiving about syntax.
"""

from __future__ import annotations

# Table and key names; an integer is the index of an element of an array of tables (`[[a]]`).
KeyPath = tuple[str | int, ...]


def key_lines(text: str) -> dict[KeyPath, int]:
    """Map each key path in a TOML document to the 1-based line that defines it."""
    lines: dict[KeyPath, int] = {}
    table: KeyPath = ()
    arrays: dict[KeyPath, int] = {}  # array-of-tables path -> index of its latest element
    open_brackets = 0  # > 0 while inside a multi-line array
    open_string: str | None = None  # the delimiter of a multi-line string we are inside
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if open_string is not None:
            if open_string in line:
                open_string = None
            continue
        if open_brackets > 0:
            open_brackets += _bracket_balance(line)
            continue
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            inner = line.lstrip("[").split("]")[0]
            names = _split_key(inner)
            # a header inside an array of tables' element (`[a.b]` after `[[a]]`) belongs to its last element
            table = ()
            for name in names:
                table = (*table, name)
                if table in arrays and table != tuple(names):
                    table = (*table, arrays[table])
            if line.startswith("[["):  # one more element of an array of tables: its keys get its index
                arrays[table] = arrays.get(table, -1) + 1
                lines.setdefault(table, number)
                table = (*table, arrays[table])
            for depth in range(1, len(table) + 1):  # `[a.b]` also opens `a`, if nothing did before
                lines.setdefault(table[:depth], number)
            continue
        key_text, eq, value = _split_assignment(line)
        if not eq:
            continue
        path = table + tuple(_split_key(key_text))
        lines[path] = number
        value = value.strip()
        if value.startswith("{"):
            for sub in _inline_table_keys(value):
                lines[path + sub] = number
        for delim in ('"""', "'''"):
            if value.count(delim) % 2 == 1:
                open_string = delim
        open_brackets = max(_bracket_balance(value), 0)
    return lines


def _split_assignment(line: str) -> tuple[str, str, str]:
    """Split `key = value` at the first `=` outside quotes."""
    quote: str | None = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "=":
            return line[:i], "=", line[i + 1 :]
    return line, "", ""


def _split_key(text: str) -> list[str]:
    """`a."b.c".d` -> ['a', 'b.c', 'd']."""
    parts: list[str] = []
    current = ""
    quote: str | None = None
    for ch in text.strip():
        if quote:
            if ch == quote:
                quote = None
            else:
                current += ch
        elif ch in "\"'":
            quote = ch
        elif ch == ".":
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    parts.append(current.strip())
    return [p for p in parts if p]


def _bracket_balance(text: str) -> int:
    """Opening minus closing `[`/`{` outside strings and comments."""
    balance = 0
    quote: str | None = None
    escaped = False
    for ch in text:
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\" and quote == '"':
                escaped = True
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            break
        elif ch in "[{":
            balance += 1
        elif ch in "]}":
            balance -= 1
    return balance


def _inline_table_keys(value: str) -> list[KeyPath]:
    """Every key path inside an inline table `{ a = 1, b = { c = 2 } }`, relative to the table."""
    found: list[KeyPath] = []
    stack: list[KeyPath] = []  # the key path of each open inline table
    pending: KeyPath = ()
    key = ""
    quote: str | None = None
    expecting_key = False
    for ch in value:
        if quote:
            if ch == quote:
                quote = None
            elif expecting_key:
                key += ch
            continue
        if ch in "\"'":
            quote = ch
        elif ch == "{":
            stack.append(pending)
            expecting_key, key = True, ""
        elif ch == "}":
            stack.pop()
            expecting_key = False
            if not stack:
                break
        elif ch == "[":
            expecting_key = False
        elif ch == "," and stack:
            expecting_key, key = True, ""
        elif ch == "=" and expecting_key:
            pending = stack[-1] + tuple(_split_key(key))
            found.append(pending)
            expecting_key = False
        elif expecting_key:
            key += ch
    return found
