"""`ltxc verify`'s rows: one comparison each, the report that prints them, and the first stage that departs."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from attrs import frozen

# What a first departure at each kind of stage says (the row names of verify_stages, pipeline order).
_DEPARTURE_HINTS = (
    (("text.", "negative."), "the text reaching the transformer differs: check [text] and the text stage"),
    (("sigmas", "timesteps"), "the schedule differs from step 0: a spec number ([sampler] sigmas or shift)"),
    (("noise",), "the initial latents differ: the noise's shape, layout or dtype, or a task's clean latents"),
    (
        ("input.",),
        "the step's noise level or a task's condition input reaches the transformer otherwise: the "
        "call's timestep / sigma entries, or a task's entries reading condition.mask / reference.*",
    ),
    (("pred.",), "the first transformer call differs: its inputs ([transformer.call]), layout or precision"),
    (("step1", "latents", "frames"), "the first step matched: guidance, the scheduler step or precision drift"),
)


@frozen
class Check:
    """One comparison: its max |Δ| (None when skipped), whether it passed, and what it compared."""

    name: str
    max_abs: float | None
    ok: bool
    note: str = ""
    stage: bool = False  # a stage of the run (pipeline order), not a helper check


@frozen
class Report:
    """Every check of one `verify` run."""

    title: str
    checks: tuple[Check, ...]
    notes: tuple[str, ...]
    tolerance: float

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return all(check.ok for check in self.checks)

    @property
    def first_departure(self) -> Check | None:
        """The first failing stage in pipeline order, else the first failing check; None when all passed."""
        failed = [check for check in self.checks if not check.ok]
        stages = [check for check in failed if check.stage]
        return (stages or failed or [None])[0]

    def format(self) -> str:
        """The lines `ltxc verify` prints; on a FAIL the last one names the first departing stage."""
        lines = [self.title]
        width = max([12, *(len(check.name) for check in self.checks)])
        for check in self.checks:
            value = f"max |Δ| = {check.max_abs:.3e}" if check.max_abs is not None else "skipped" if check.ok else "-"
            status = "ok" if check.ok else "FAIL"
            lines.append(f"  {check.name:<{width}} {value:<22} {status:<5} {check.note}".rstrip())
        lines += [f"  note: {note}" for note in self.notes]
        verdict = "PASS" if self.ok else "FAIL"
        lines.append(f"{verdict}: tolerance {self.tolerance:.0e} on every difference")
        first = self.first_departure
        if first is not None:
            value = "shapes differ" if first.max_abs is None else f"max |Δ| = {first.max_abs:.3e}"
            hint = next((h for prefixes, h in _DEPARTURE_HINTS if first.name.startswith(prefixes)), "")
            kind = "stage" if first.stage else "check"
            lines.append(f"first departing {kind}: {first.name}, {value}" + (f" ({hint})" if first.stage else ""))
        return "\n".join(lines)


def compare(
    name: str, ours: torch.Tensor | None, theirs: torch.Tensor, tolerance: float, note: str, stage: bool = False
) -> Check:
    """ltxc's tensor against the reference's, in float32 on the CPU."""
    if ours is None:
        return Check(name, None, False, "ltxc produced nothing to compare", stage)
    ours, theirs = ours.detach().float().cpu(), theirs.detach().float().cpu()
    if ours.shape != theirs.shape:
        return Check(
            name, None, False, f"shapes differ: ltxc {list(ours.shape)}, reference {list(theirs.shape)}", stage
        )
    difference = (ours - theirs).abs().max().item() if ours.numel() else 0.0
    ok = difference <= tolerance  # False for NaN
    return Check(name, difference, ok, f"{note} {list(ours.shape)}", stage)


def skipped(name: str, why: str) -> Check:
    """A stage row that cannot be compared (it passes, and says why)."""
    return Check(name, None, True, f"skipped: {why}", True)


def parameters(function: Callable[..., object]) -> dict[str, inspect.Parameter]:
    """A callable's named parameters, without `self` and without *args/**kwargs."""
    params = inspect.signature(function).parameters
    skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return {name: p for name, p in params.items() if name != "self" and p.kind not in skip}
