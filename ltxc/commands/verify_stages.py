"""`ltxc verify`'s per-stage rows: ltxc's sampler trace against what the reference's transformer got and gave.

ltxc's side is the sampler's `trace` (stage name -> tensor). The reference's side is a forward hook on the shared
transformer at the first step (verify_reference.run_reference): its keyword inputs are found through the spec's
`[transformer.call]` (the keyword whose expression is `text.<name>` or `<stream>.latents`), and each call is
given its role by the spec's `[sampler] cfg` / `cfg_order`, then the perturbations in spec order, so the rows
match by role, not call order. The noise-level and condition inputs (each keyword whose call expression reads σ,
the timestep or a task's condition names, e.g. a task's per-token timestep or its appended tokens' positions) are
compared as the conditional pass got them. Rows come in pipeline order; the
report names the first one that departs.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ltxc.commands.verify_reference import Call, ReferenceRun
from ltxc.commands.verify_report import Check, compare, skipped
from ltxc.guidance import NOISE_LEVEL, traced_keywords
from ltxc.plan import VIDEO, Plan

GUIDANCE_ROLES = ("uncond", "cond")
_ROLE_NOTES = {"uncond": "unconditional", "cond": "conditional"}


def keyword_for(plan: Plan, source: str) -> str | None:
    """The transformer keyword whose call expression is exactly `source` (e.g. "text.embeds")."""
    return next((key for key, expr in plan.call.items() if expr.source.strip() == source), None)


def latent_source(stream: str) -> str:
    """The call-vocabulary name of a stream's latents."""
    return "latents" if stream == VIDEO else f"{stream}.latents"


def recorded_keywords(plan: Plan) -> frozenset[str]:
    """The transformer keywords the reference's hook keeps: the text tensors, every stream's latents and the
    noise-level and condition inputs."""
    sources = [f"text.{name}" for name in plan.text_names] + [latent_source(s) for s in (VIDEO, *plan.streams)]
    keys = [keyword_for(plan, source) for source in sources] + traced_keywords(plan.call)
    return frozenset(key for key in keys if key)


def stage_rows(
    plan: Plan, ours: Mapping[str, Tensor], reference: ReferenceRun, tolerance: float
) -> tuple[list[Check], list[str]]:
    """Every stage's row in pipeline order (without the final latents and frames); notes on what did not map."""
    if not ours:
        return [], ["ltxc's sampler gave no trace: only the final latents and frames are compared"]
    if not reference.calls:
        return [], ["the reference has no step callbacks: only the final latents and frames are compared"]
    streams = [VIDEO, *sorted(s for s in plan.streams if f"noise.{s}" in ours)]
    roles = [r for r in GUIDANCE_ROLES if f"prediction.{VIDEO}.{r}" in ours]
    roles += [p.name for p in plan.perturbations if f"prediction.{VIDEO}.{p.name}" in ours]
    batch = ours[f"noise.{VIDEO}"].shape[0]
    calls, notes = reference_roles(plan, reference.calls, roles, batch)
    rows = _text_rows(plan, ours, calls, tolerance)
    for name in ("sigmas", "timesteps"):
        theirs = getattr(reference, name)
        row = compare(name, ours.get(name), theirs, tolerance, "the scheduler's, after set_timesteps", True)
        rows.append(row if theirs is not None else skipped(name, f"the reference's scheduler has no {name}"))
    first = calls.get("cond") or next(iter(calls.values()))
    for stream in streams:
        rows.append(_input_row(plan, f"noise{_suffix(stream)}", ours, f"noise.{stream}", first, stream, tolerance))
    rows += _level_rows(plan, ours, calls, tolerance)
    for role in roles:
        for stream in streams:
            rows.append(_prediction_row(plan, ours, calls.get(role), role, stream, tolerance))
    for stream in streams:
        label, key = f"step1{_suffix(stream)}", f"step1.{stream}"
        if stream == VIDEO and reference.step1 is not None:
            rows.append(compare(label, ours.get(key), reference.step1, tolerance, "latents after step 1", True))
        elif stream != VIDEO and reference.next_inputs is not None:
            step2 = _cond_half(plan, Call(reference.next_inputs, ()), roles, batch)
            rows.append(_input_row(plan, label, ours, key, step2, stream, tolerance, "as step 2's input"))
        else:
            rows.append(skipped(label, "the reference ran one step"))
    return rows, notes


def reference_roles(
    plan: Plan, recorded: list[Call], roles: list[str], batch: int
) -> tuple[dict[str, Call], list[str]]:
    """Each role's call at the first step: a batched CFG call split by `cfg_order`, separate passes in
    `cfg_order`, then one call per perturbation in spec order."""
    calls, s = list(recorded), plan.sampler
    order = tuple(getattr(s, "cfg_order", GUIDANCE_ROLES))
    found: dict[str, Call] = {}
    if "uncond" in roles and calls:
        if getattr(s, "cfg", "batched") == "separate":
            found.update(zip(order, calls[:2], strict=False))
            calls = calls[2:]
        else:
            found.update(zip(order, _split(calls.pop(0), batch), strict=True))
    elif calls:
        found["cond"] = calls.pop(0)
    perturbations = [role for role in roles if role not in GUIDANCE_ROLES]
    found.update(zip(perturbations, calls, strict=False))
    notes = []
    if len(calls) != len(perturbations):
        notes.append(f"the reference's first step made {len(recorded)} transformer calls; roles {', '.join(roles)}")
    return found, notes


def _cond_half(plan: Plan, call: Call, roles: list[str], batch: int) -> Call:
    """The conditional part of a call that may be a batched CFG call."""
    if "uncond" not in roles or getattr(plan.sampler, "cfg", "batched") == "separate":
        return call
    return _split(call, batch)[tuple(getattr(plan.sampler, "cfg_order", GUIDANCE_ROLES)).index("cond")]


def _split(call: Call, batch: int) -> tuple[Call, Call]:
    """A batched CFG call's two halves (tensors of batch 2B are split; the rest are shared)."""

    def halves(t: Tensor) -> tuple[Tensor, Tensor]:
        return tuple(t.chunk(2)) if t.ndim and t.shape[0] == 2 * batch else (t, t)  # type: ignore[return-value]

    inputs = {k: halves(v) for k, v in call.inputs.items()}
    outputs = [halves(v) for v in call.outputs]
    return tuple(  # type: ignore[return-value]
        Call({k: v[i] for k, v in inputs.items()}, tuple(v[i] for v in outputs)) for i in (0, 1)
    )


def _text_rows(plan: Plan, ours: Mapping[str, Tensor], calls: Mapping[str, Call], tolerance: float) -> list[Check]:
    rows = []
    for side, label, role in (("text", "text", "cond"), ("negative_text", "negative", "uncond")):
        if f"{side}.{plan.text_names[0]}" not in ours:
            continue
        for name in plan.text_names:
            keyword, row = keyword_for(plan, f"text.{name}"), f"{label}.{name}"
            if keyword is None:
                rows.append(skipped(row, f"no [transformer.call] keyword reads text.{name}"))
            elif role not in calls or keyword not in calls[role].inputs:
                rows.append(skipped(row, f"the reference passed no {keyword}"))
            else:
                theirs = calls[role].inputs[keyword]
                rows.append(compare(row, ours.get(f"{side}.{name}"), theirs, tolerance, f"as {keyword}", True))
    return rows


def _input_row(
    plan: Plan,
    label: str,
    ours: Mapping[str, Tensor],
    key: str,
    call: Call,
    stream: str,
    tolerance: float,
    note: str = "initial latents",
) -> Check:
    """ltxc's latents against the reference transformer's input, ours cast to the dtype the reference passed."""
    keyword = keyword_for(plan, latent_source(stream))
    if keyword is None or keyword not in call.inputs:
        return skipped(label, f"no transformer input for {latent_source(stream)}")
    theirs = call.inputs[keyword]
    mine = ours.get(key)
    mine = None if mine is None else mine.to(theirs.dtype)
    return compare(label, mine, theirs, tolerance, f"{note}, as {keyword} ({_dtype(theirs)})", True)


def _level_rows(plan: Plan, ours: Mapping[str, Tensor], calls: Mapping[str, Call], tolerance: float) -> list[Check]:
    """The noise-level and condition inputs of the conditional pass (else the first), as the transformer got them."""
    role = "cond" if "cond" in calls else next(iter(calls), None)
    rows = []
    for keyword in traced_keywords(plan.call):
        label, theirs = f"input.{keyword}", calls[role].inputs.get(keyword) if role else None
        if theirs is None:
            rows.append(skipped(label, f"the reference passed no tensor {keyword}"))
            continue
        names = plan.call[keyword].names
        what = "a task's condition input"
        if names & NOISE_LEVEL:
            what = "the step's noise level"
        elif any(n.startswith("input.") for n in names):
            what = "a scalar input"
        note = f"{what}, as {keyword} ({_dtype(theirs)}, {_ROLE_NOTES.get(role, role)} pass)"
        rows.append(compare(label, ours.get(f"input.{keyword}.{role}"), theirs, tolerance, note, True))
    return rows


def _prediction_row(
    plan: Plan, ours: Mapping[str, Tensor], call: Call | None, role: str, stream: str, tolerance: float
) -> Check:
    label = f"pred.{role}{_suffix(stream)}"
    index = plan.transformer_output if stream == VIDEO else plan.streams[stream].output
    if call is None or index >= len(call.outputs):
        return skipped(label, f"the reference made no {role} call")
    theirs = call.outputs[index]
    note = f"first prediction, {_ROLE_NOTES.get(role, role)} ({_dtype(theirs)})"
    return compare(label, ours.get(f"prediction.{stream}.{role}"), theirs, tolerance, note, True)


def _suffix(stream: str) -> str:
    return "" if stream == VIDEO else f".{stream}"


def _dtype(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.") if isinstance(t, torch.Tensor) else "?"
