"""`[components]` -> one `ComponentRecipe` per role: the class resolved, the source decided, the config checked."""

from __future__ import annotations

import os

from ltxc.components import ComponentError, ComponentRecipe, default_kind, resolve_component_class, unknown_config_keys
from ltxc.document import Locator
from ltxc.errors import Problem
from ltxc.spec.types import ComponentSpec, Spec


def component_recipes(spec: Spec, locator: Locator, problems: list[Problem]) -> dict[str, ComponentRecipe]:
    """A recipe for every component that passes its checks; a problem for every one that does not."""
    recipes: dict[str, ComponentRecipe] = {}
    for role, component in spec.components.items():
        where = ("components", role)
        kind = component.kind or default_kind(role)
        try:
            cls = resolve_component_class(component.cls, kind)
        except ComponentError as exc:
            problems.append(locator.problem((*where, "class"), str(exc)))
            continue
        source = _source(component, where, locator, problems)
        if source is None:
            continue
        # Local paths were made absolute at load time; hub ids never are. A missing directory would
        # otherwise surface at build time as a confusing hub download error.
        if (
            source == "pretrained"
            and os.path.isabs(component.pretrained or "")
            and not os.path.isdir(component.pretrained or "")
        ):
            problems.append(locator.problem((*where, "pretrained"), f"{component.pretrained} is not a directory"))
            continue
        if source == "config" and kind != "tokenizer":
            unknown = unknown_config_keys(cls, component.config or {})
            if unknown:
                problems.extend(
                    locator.problem((*where, "config", key), f"{cls.__name__} has no config key {key!r}")
                    for key in unknown
                )
                continue
        recipes[role] = ComponentRecipe(
            role=role,
            reference=component.cls,
            cls=cls,
            kind=kind,
            source=source,
            pretrained=component.pretrained,
            subfolder=component.subfolder,
            revision=component.revision,
            config=component.config,
            seed=component.seed,
            dtype=component.dtype,
        )
    return recipes


def _source(component: ComponentSpec, where: tuple[str, ...], locator: Locator, problems: list[Problem]) -> str | None:
    """The source to build from: as `source` says, else whichever is set; None (and a problem) if unclear."""
    has_pretrained, has_config = component.pretrained is not None, component.config is not None
    if component.source == "pretrained" and not has_pretrained:
        problems.append(locator.problem((*where, "pretrained"), 'source = "pretrained" but no pretrained is set'))
        return None
    if component.source == "config" and not has_config:
        problems.append(locator.problem((*where, "config"), 'source = "config" but no config table is set'))
        return None
    if component.source:
        return component.source
    if has_pretrained and has_config:
        problems.append(
            locator.problem(where, 'both pretrained and config are set; say which to use with source = "..."')
        )
        return None
    if not (has_pretrained or has_config):
        problems.append(locator.problem(where, "set pretrained (a directory or hub id) or an inline config table"))
        return None
    return "pretrained" if has_pretrained else "config"
