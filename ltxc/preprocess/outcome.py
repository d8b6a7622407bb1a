"""What becomes of one sample in preprocessing: a manifest record, or a rejection with its reason."""

from __future__ import annotations

import math
from typing import Any

from attrs import frozen


@frozen
class Outcome:
    """What became of one sample: a manifest record or a rejection."""

    sample_id: str
    record: dict[str, Any] | None = None
    rejected: dict[str, Any] | None = None


class Rejection(Exception):
    """A sample that cannot be used, with a short reason for `rejected.jsonl`."""


def round_time(value: float) -> float:
    """6 decimals: microsecond timestamps, and byte-stable JSON across platforms."""
    return 0.0 if math.isclose(value, 0.0, abs_tol=5e-7) else round(value, 6)
