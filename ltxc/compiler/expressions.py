"""The spec's expression tables compiled against their vocabularies: call, flow, text stage, streams,
perturbations and reference arguments."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

from attrs import frozen

from ltxc.compiler.names import (
    LOSS_WEIGHT_NAMES,
    RESERVED_STREAM_NAMES,
    STAGE_NAMES,
    call_names,
    reference_names,
    stream_names,
)
from ltxc.document import Locator
from ltxc.errors import Problem
from ltxc.plan import CompiledPerturbation, CompiledStream
from ltxc.spec.expr import Expr, ExprError, compile_expr
from ltxc.spec.types import Spec

Ops = Mapping[str, Callable[..., Any]]


@frozen
class CompiledExpressions:
    """Every expression of a spec, compiled (a table whose entries failed lacks them; problems say why)."""

    call: dict[str, Expr]
    flow: dict[str, Expr]  # "loss_weight" and "timestep"
    stage: dict[str, Expr] | None
    streams: dict[str, CompiledStream]
    perturbations: tuple[CompiledPerturbation, ...]
    reference_args: dict[str, Expr]


def compile_expressions(
    spec: Spec, numbers: Mapping[str, int], ops: Ops, locator: Locator, problems: list[Problem]
) -> CompiledExpressions:
    """Compile every expression table of the spec, in the order their problems are reported."""
    names = call_names(spec, numbers)
    call = expressions(spec.transformer.call, ("transformer", "call"), names, ops, locator, problems)
    flow = expressions(
        {"loss_weight": spec.flow.loss_weight, "timestep": spec.flow.timestep},
        ("flow",),
        LOSS_WEIGHT_NAMES | numbers.keys(),
        ops,
        locator,
        problems,
    )
    stage = _stage(spec, ops, locator, problems)
    streams = _streams(spec, names, ops, locator, problems)
    perturbations = _perturbations(spec, names, ops, locator, problems)
    where = ("model", "reference_args")
    reference_args = expressions(spec.model.reference_args, where, reference_names(spec), ops, locator, problems)
    return CompiledExpressions(call, flow, stage, streams, perturbations, reference_args)


def expressions(
    table: Mapping[str, str],
    where: tuple[str, ...],
    names: frozenset[str] | set[str],
    ops: Ops,
    locator: Locator,
    problems: list[Problem],
) -> dict[str, Expr]:
    """Compile each entry of `table` against `names`; a problem at `where.<key>` for each that fails."""
    compiled: dict[str, Expr] = {}
    for key, source in table.items():
        try:
            compiled[key] = compile_expr(source, frozenset(names), ops)
        except ExprError as exc:
            problems.append(locator.problem((*where, key), str(exc)))
    return compiled


def _stage(spec: Spec, ops: Ops, locator: Locator, problems: list[Problem]) -> dict[str, Expr] | None:
    stage = spec.text.stage
    if stage is None:
        if spec.text.cache == "before_stage":
            problems.append(locator.problem(("text", "cache"), '"before_stage" needs a [text.stage] table'))
        return None
    return expressions(stage.call, ("text", "stage", "call"), STAGE_NAMES, ops, locator, problems)


def _streams(
    spec: Spec, names: frozenset[str], ops: Ops, locator: Locator, problems: list[Problem]
) -> dict[str, CompiledStream]:
    shape_names = names - stream_names(spec)  # a stream's shape cannot depend on the streams themselves
    compiled: dict[str, CompiledStream] = {}
    outputs = {spec.transformer.output: ("transformer", "output")}
    for name, stream in spec.streams.items():
        where = ("streams", name)
        if name in RESERVED_STREAM_NAMES:
            problems.append(locator.problem(where, f"{name!r} is a reserved name; call the stream something else"))
            continue
        if stream.output in outputs:
            taken = ".".join(outputs[stream.output])
            problems.append(locator.problem((*where, "output"), f"output {stream.output} is already {taken}"))
        outputs[stream.output] = (*where, "output")
        shapes = expressions({"noise": stream.noise, "dummy": stream.dummy}, where, shape_names, ops, locator, problems)
        pack = expressions({"pack": stream.pack}, where, frozenset({"x"}), ops, locator, problems)
        unpack = (
            {}
            if stream.decode is None
            else expressions(
                {"unpack": stream.decode.unpack}, (*where, "decode"), frozenset({"x"}), ops, locator, problems
            )
        )
        if len(shapes) == 2 and pack:
            compiled[name] = CompiledStream(
                name, shapes["noise"], shapes["dummy"], pack["pack"], stream.output, stream.sample, stream.guidance,
                sigma=stream.sigma, modules=tuple(stream.modules), text=tuple(stream.text or ()),
                source=stream.source, decode=stream.decode,
                unpack=unpack.get("unpack"),
            )  # fmt: skip
        for text in stream.text or ():
            if f"text.{text}" not in names:
                known = ", ".join(sorted(n.removeprefix("text.") for n in names if n.startswith("text.")))
                problems.append(locator.problem((*where, "text"), f"no text tensor {text!r} (the text has: {known})"))
        if stream.sigma == "independent" and f"{name}.sigma" not in _call_reads(spec, names, ops):
            message = (f'"independent" needs [transformer.call] to read {name}.sigma (its σ), e.g. '
                       f'{name}_timestep = "float32({name}.sigma * 1000)"')  # fmt: skip
            problems.append(locator.problem((*where, "sigma"), message))
    return compiled


def _call_reads(spec: Spec, names: frozenset[str], ops: Ops) -> set[str]:
    """The names `[transformer.call]` reads (an entry that does not compile is reported where the call is)."""
    read: set[str] = set()
    for source in spec.transformer.call.values():
        with contextlib.suppress(ExprError):
            read |= compile_expr(source, names, ops).names
    return read


def _perturbations(
    spec: Spec, names: frozenset[str], ops: Ops, locator: Locator, problems: list[Problem]
) -> tuple[CompiledPerturbation, ...]:
    compiled = []
    seen: set[str] = set()
    for index, term in enumerate(spec.sampler.perturbations):
        where = ("sampler", "perturbations", index)
        if term.name in seen:
            problems.append(locator.problem((*where, "name"), f"a perturbation named {term.name!r} comes earlier"))
        seen.add(term.name)
        call = expressions(term.call, (*where, "call"), names, ops, locator, problems)
        weight = expressions({"weight": term.weight}, where, frozenset({"scale"}), ops, locator, problems)
        if "weight" in weight:
            compiled.append(CompiledPerturbation(term.name, float(term.scale), weight["weight"], call))
    return tuple(compiled)
