"""Caption cleaning steps a spec's `[text] clean` list may name, applied before tokenising.

The reference pipelines clean prompts before their tokenizer sees them (some strip, some unescape HTML and
collapse whitespace); training captions and sampling prompts must be cleaned the same way, or a caption with
a double space encodes differently in training than at inference.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Sequence


def _fix_text(text: str) -> str:
    # As the pipelines do: ftfy's repairs only where ftfy is installed.
    try:
        import ftfy
    except ImportError:
        return text
    return ftfy.fix_text(text)


STEPS: dict[str, Callable[[str], str]] = {
    "strip": str.strip,
    "collapse_whitespace": lambda text: re.sub(r"\s+", " ", text).strip(),
    "unescape_html": lambda text: html.unescape(html.unescape(text)),
    "fix_text": _fix_text,
}


def clean_caption(text: str, steps: Sequence[str]) -> str:
    """Apply the named cleaning steps in order."""
    for step in steps:
        text = STEPS[step](text)
    return text
