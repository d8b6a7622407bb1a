"""`ltxc compile`: compile a loaded spec, print the human-readable summary, write plan.json."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from ltxc.compiler import compile_spec
from ltxc.document import Loaded
from ltxc.errors import UserError
from ltxc.geometry import ShapeError
from ltxc.plan import Plan
from ltxc.spec import types as spec_types

# (width, height, frames) shown by default: common video training sizes.
DEFAULT_SIZES: tuple[tuple[int, int, int], ...] = ((768, 512, 121), (1216, 704, 121))
FRAME_LIST_LIMIT = 257


def run_compile(loaded: Loaded, *, sizes: Sequence[tuple[int, int, int]] | None, out: Path) -> int:
    """The whole command on a spec the CLI loaded before importing torch; returns the exit code."""
    plan = compile_spec(loaded)
    print(summarise(plan, sizes or DEFAULT_SIZES))
    try:
        path = plan.save(out)
    except OSError as exc:
        raise UserError(f"{out}: cannot write the plan there ({exc}); pass --out DIR") from None
    print(f"plan       {path}")
    return 0


def summarise(plan: Plan, sizes: Iterable[tuple[int, int, int]] = DEFAULT_SIZES) -> str:
    """Components, geometry, frame counts, example shapes, normaliser and call mapping, as text."""
    spec, g = plan.spec, plan.geometry
    lines = [f"model      {spec.model.name}: {spec.model.description}".rstrip(": ")]
    lines.append(f"sources    {' <- '.join(reversed(plan.sources))}")
    lines.append(f"hash       {plan.hash[:16]}")
    if spec.model.reference:
        lines.append(f"reference  {spec.model.reference}")
    lines.append("components")
    width = max(len(role) for role in plan.recipes)
    lines += [f"  {role:<{width}}  {recipe.describe()}" for role, recipe in plan.recipes.items()]
    lines.append("geometry")
    lines.append(
        f"  latent channels {g.latent_channels}; compression {g.spatial_compression}x spatial, "
        f"{g.temporal_compression}x temporal; patch {list(g.patch)}; layout {g.layout}"
    )
    lines.append(f"  frames     {g.frame_rule.describe()}: {_frame_list(plan)}")
    lines.append(f"  resolution multiples of {g.resolution_multiple} px")
    lines.append("  sizes (W x H x F -> latent [C, F, H, W], tokens)")
    for w, h, f in _fitted(plan, sizes):
        try:
            shape = g.latent_shape(f, h, w)
            lines.append(f"    {w}x{h}x{f} -> {shape.as_list()}, {shape.tokens:,} tokens")
        except ShapeError as exc:
            lines.append(f"    {w}x{h}x{f} -> invalid: {exc}")
    lines.append(f"normaliser {_normaliser(spec.latent.normalise)}")
    lines.append(
        f"text       {spec.text.max_length} tokens, padded {spec.text.padding_side}, "
        f"hidden states: {spec.text.hidden_states}, null conditioning: {spec.text.null_conditioning}"
    )
    lines.append(f"transformer.call (fps = {spec.sampler.fps:g})")
    static_env = {**plan.constants, "fps": spec.sampler.fps}
    key_width = max(len(k) for k in plan.call)
    for key, expr in plan.call.items():
        shown = expr.source
        if expr.names and expr.is_static(static_env):
            try:
                shown += f"  = {_short(expr(static_env))}"
            except (ArithmeticError, ValueError, TypeError) as exc:
                shown += f"  (cannot evaluate: {exc})"
        lines.append(f"  {key:<{key_width}} = {shown}")
    lines.append(
        f"sampler    {spec.sampler.steps} steps, guidance {spec.sampler.guidance:g}, "
        f"sigmas {spec.sampler.sigmas}, shift {_shift(spec.sampler.shift)}"
    )
    lines.append(f"flow       target {spec.flow.target}, sigma {spec.flow.sigma.kind}, shift {_shift(spec.flow.shift)}")
    lines.append(f"parallel   shard/checkpoint {', '.join(spec.parallel.blocks)}")
    return "\n".join(lines)


def _fitted(plan: Plan, sizes: Iterable[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """The sizes to show; for a rule with a largest count (images) the default video sizes take that count."""
    largest = plan.geometry.frame_rule.largest
    if largest is None or sizes is not DEFAULT_SIZES:
        return list(sizes)  # sizes the user asked for are shown as asked, invalid ones with the reason
    return list(dict.fromkeys((w, h, min(f, largest)) for w, h, f in sizes))


def _frame_list(plan: Plan) -> str:
    rule = plan.geometry.frame_rule
    counts = rule.valid_counts(FRAME_LIST_LIMIT)
    bounded = rule.largest is not None and rule.largest <= FRAME_LIST_LIMIT
    return ", ".join(str(c) for c in counts) + ("" if bounded else f" (up to {FRAME_LIST_LIMIT})")


def _normaliser(norm: spec_types.NormaliserSpec) -> str:
    if isinstance(norm, spec_types.MeanStdSpec):
        return f"mean_std: (z - {_ref(norm.mean)}) * {norm.scaling_factor} / {_ref(norm.std)}"
    if isinstance(norm, spec_types.ShiftScaleSpec):
        return f"shift_scale: (z - {norm.shift}) * {norm.scale}"
    return "none"


def _ref(value: object) -> str:
    return value if isinstance(value, str) else f"[{len(value)} values]"  # type: ignore[arg-type]


def _shift(shift: spec_types.ShiftSpec) -> str:
    if isinstance(shift, spec_types.FixedShiftSpec):
        return f"fixed {shift.value:g}"
    if isinstance(shift, spec_types.ResolutionShiftSpec):
        return (
            f"resolution (mu {shift.base_shift:g} at {shift.base_seq_len} tokens -> "
            f"{shift.max_shift:g} at {shift.max_seq_len})"
        )
    return "none"


def _short(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return str(value)
