"""compile_spec: a loaded spec -> a `Plan`, every weightless check run first."""

from __future__ import annotations

import os

import attrs

from ltxc.compiler.checks import (
    check_audio_sources,
    check_normaliser,
    check_reference,
    check_roles,
    check_sampler,
    check_text_encoders,
    check_text_lengths,
    checked_geometry,
    decode_steps,
)
from ltxc.compiler.expressions import CompiledExpressions, compile_expressions
from ltxc.compiler.names import geometry_numbers, text_names
from ltxc.compiler.recipes import component_recipes
from ltxc.compiler.resolved import resolved_data, spec_hash
from ltxc.compiler.tasks import compile_tasks
from ltxc.components import ComponentRecipe
from ltxc.document import Loaded
from ltxc.errors import ConfigError, Problem
from ltxc.geometry import Geometry
from ltxc.ops import op_table
from ltxc.plan import CompiledTask, Plan
from ltxc.spec.types import Spec


def compile_spec(loaded: Loaded) -> Plan:
    """Check everything that can be checked without weights and build the plan."""
    spec: Spec = loaded.value
    locator = loaded.locator
    problems: list[Problem] = []  # every check appends; all are reported together

    geometry = checked_geometry(spec, locator, problems)
    recipes = component_recipes(spec, locator, problems)
    check_roles(spec, locator, problems)
    check_text_encoders(spec, locator, problems)
    check_normaliser(spec, locator, problems)
    check_sampler(spec, locator, problems)
    check_text_lengths(spec, locator, problems)
    check_audio_sources(spec, locator, problems)
    compiled = compile_expressions(spec, geometry_numbers(geometry), op_table(geometry), locator, problems)
    check_reference(spec, locator, problems)
    numbers = geometry_numbers(geometry)
    tasks = compile_tasks(spec, numbers, op_table(geometry), compiled.call, locator, problems)
    if problems:
        raise ConfigError(problems)
    sources = tuple(os.path.normpath(f) for f in loaded.files)
    return _plan(spec, sources, geometry, recipes, compiled, tasks)


def _plan(
    spec: Spec,
    sources: tuple[str, ...],
    geometry: Geometry,
    recipes: dict[str, ComponentRecipe],
    compiled: CompiledExpressions,
    tasks: dict[str, CompiledTask],
) -> Plan:
    """The plan of a spec that passed every check: the compiled objects and the settings they read."""
    data = resolved_data(spec, recipes)
    return Plan(
        spec=spec,
        data=data,
        hash=spec_hash(data),
        sources=sources,
        geometry=geometry,
        recipes=recipes,
        call=compiled.call,
        loss_weight=compiled.flow["loss_weight"],
        constants=geometry_numbers(geometry),
        timestep=compiled.flow["timestep"],
        text=spec.text,
        latent=spec.latent,
        sampler=spec.sampler,
        text_names=text_names(spec),
        text_stage=compiled.stage,
        streams=compiled.streams,
        perturbations=compiled.perturbations,
        reference_args=compiled.reference_args,
        transformer_output=spec.transformer.output,
        flow=spec.flow,
        lora=spec.lora,
        blocks=spec.parallel.blocks,
        frozen=spec.parallel.frozen,
        transformer_role=spec.transformer.component,
        input_role=spec.sampler.input_dtype or spec.transformer.component,
        latent_role=spec.sampler.latent_dtype,
        inputs=dict(spec.inputs or {}),
        decode=decode_steps(spec),
        reference=spec.model.reference,
        stage_in_training=spec.text.stage is not None and spec.text.cache == "before_stage",
        null_text=spec.text.null_conditioning,
        tasks={
            name: attrs.evolve(task, reference_args={**compiled.reference_args, **task.reference_args})
            for name, task in tasks.items()
        },
    )
