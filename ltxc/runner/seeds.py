"""Seeds derived from the run's seed, so every random draw of a run is a function of (seed, where it happens)."""

from __future__ import annotations

import hashlib

LORA_INIT = -1  # the part that names the LoRA's random init, apart from any step


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integer parts, e.g. (run seed, step, micro-batch, sample position)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
