"""Build a spec's components: allowlisted classes, from pretrained weights or from an inline config.

Classes resolve only from `diffusers`, `transformers` and `ltxc`, and must be what their role needs.
Nothing is built until it is asked for (`Components[role]`), so compiling a spec never loads weights.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import torch
from attrs import frozen

ALLOWED_PACKAGES = ("diffusers", "transformers", "ltxc")
Kind = Literal["module", "tokenizer", "scheduler"]
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def module_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype a model computes in, as diffusers' `ModelMixin.dtype` answers it: the first floating parameter
    outside the class's keep-in-float32 modules (a bf16 model's first parameter may be a kept one)."""
    keep = tuple(getattr(module, "_keep_in_fp32_modules", None) or ())
    last = None
    for name, param in module.named_parameters():
        if param.is_floating_point():
            last = param.dtype
            if not any(part in name for part in keep):  # a substring test, as diffusers' get_parameter_dtype
                return param.dtype
    return last or torch.float32


class ComponentError(ValueError):
    """A component's class or config is not acceptable; the message says why and what to do."""


def default_kind(role: str) -> Kind:
    """What a role must be when the spec does not say: by the generic diffusers role names."""
    if role.startswith("tokenizer"):
        return "tokenizer"
    if role.startswith("scheduler"):
        return "scheduler"
    return "module"


def _base_class(kind: Kind) -> type:
    if kind == "module":
        return torch.nn.Module
    if kind == "tokenizer":
        from transformers import PreTrainedTokenizerBase

        return PreTrainedTokenizerBase
    from diffusers import SchedulerMixin

    return SchedulerMixin


def resolve_class(reference: str, base: type | None = None) -> type:
    """Import "package:ClassName" from the allowlist; check it subclasses `base`."""
    module_name, _, class_name = reference.partition(":")
    package = module_name.split(".")[0]
    if package not in ALLOWED_PACKAGES or not class_name:
        raise ComponentError(
            f"{reference!r} is outside the allowlist: classes must come from "
            f'{", ".join(ALLOWED_PACKAGES)} (write "diffusers:ClassName")'
        )
    if not class_name.isidentifier() or class_name.startswith("_"):
        raise ComponentError(f"{class_name!r} is not a public class name")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ComponentError(f"cannot import {module_name!r}: {exc}") from None
    try:
        cls = getattr(module, class_name)
    except (AttributeError, ImportError, RuntimeError) as exc:
        raise ComponentError(f"{module_name} has no class {class_name!r} ({type(exc).__name__}: {exc})") from None
    if not inspect.isclass(cls):
        raise ComponentError(f"{reference!r} is not a class")
    if base is not None and not issubclass(cls, base):
        raise ComponentError(f"{reference!r} is not a {base.__module__}.{base.__qualname__}")
    return cls


def resolve_component_class(reference: str, kind: Kind) -> type:
    """`resolve_class` with the base class a role of this kind needs."""
    return resolve_class(reference, _base_class(kind))


def unknown_config_keys(cls: type, config: Mapping[str, Any]) -> list[str]:
    """Config keys the class would silently ignore (a typo in a tiny spec must not pass quietly)."""
    if _is_transformers_model(cls):
        config_class = cls.config_class
        known = set(config_class().to_dict()) | set(getattr(config_class, "attribute_map", {}))
        return [key for key in config if key not in known]
    init = cls.__init__
    params = inspect.signature(init).parameters
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    return [key for key in config if key not in params]


@frozen
class ComponentRecipe:
    """How to build one component; `build()` does it."""

    role: str
    reference: str
    cls: type
    kind: Kind
    source: Literal["pretrained", "config"]
    pretrained: str | None = None
    subfolder: str | None = None
    revision: str | None = None
    config: Mapping[str, Any] | None = None
    seed: int = 0
    dtype: str = "float32"

    def describe(self) -> str:
        """One line: class and where the weights come from."""
        if self.source == "pretrained":
            where = self.pretrained + (f" [{self.subfolder}]" if self.subfolder else "")
            where += f" @ {self.revision}" if self.revision else ""
        else:
            where = f"inline config, random weights (seed {self.seed})" if self.kind == "module" else "inline config"
        dtype = f", {self.dtype}" if self.kind == "module" else ""
        return f"{self.reference} <- {where}{dtype}"

    def build(self) -> Any:
        """Load or construct the component; a module comes back in eval mode, at the spec's dtype as
        `from_pretrained(torch_dtype=...)` gives it (modules its class keeps in float32 stay float32)."""
        if self.source == "pretrained":
            obj = self._load()  # from_pretrained already applies the dtype; a `.to` would undo keep-in-fp32
        else:
            obj = self._construct()
            if self.kind == "module":
                obj = as_loaded(obj, DTYPES[self.dtype])
        return obj.eval() if self.kind == "module" else obj

    def _load(self) -> Any:
        kwargs: dict[str, Any] = {}
        if self.subfolder:
            kwargs["subfolder"] = self.subfolder
        if self.revision:
            kwargs["revision"] = self.revision
        if self.kind == "module":
            # diffusers calls it torch_dtype, transformers 5 calls it dtype
            kwargs["torch_dtype" if _is_diffusers(self.cls) else "dtype"] = DTYPES[self.dtype]
        return self.cls.from_pretrained(self.pretrained, **kwargs)

    def _construct(self) -> Any:
        config = dict(self.config or {})
        if self.kind == "tokenizer":
            return self.cls(**config)
        if self.kind == "scheduler":
            return self.cls.from_config(config)
        with torch.random.fork_rng(devices=[]):  # seeded weights without disturbing the caller's RNG
            torch.manual_seed(self.seed)
            if _is_transformers_model(self.cls):
                return self.cls(self.cls.config_class(**config))
            return self.cls(**config)


def as_loaded(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A float32-built module at `dtype`, exactly as `save_pretrained` + `from_pretrained(torch_dtype=dtype)`
    would give it, without the disk: rebuilt under `dtype` as the default dtype (so buffers computed in
    `__init__` are), then the weights loaded as the library's loader casts them (keep-in-fp32 modules stay
    float32). Float32 returns the module itself. A class from neither library is cast with `.to`."""
    if dtype == torch.float32:
        return module
    from diffusers import ModelMixin

    if isinstance(module, ModelMixin):
        return _as_loaded_diffusers(module, dtype)
    if _is_transformers_model(type(module)):
        return _as_loaded_transformers(module, dtype)
    return module.to(dtype)


def _as_loaded_transformers(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """transformers' `from_pretrained` on an in-memory state dict, without its "Loading weights" bar."""
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        state = module.state_dict()
        return type(module).from_pretrained(None, config=module.config, state_dict=state, dtype=dtype)
    finally:
        if bar:
            hf_logging.enable_progress_bar()


def _as_loaded_diffusers(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """diffusers' `from_pretrained` steps on an in-memory state dict (modeling_utils: default dtype, empty
    init, then `load_model_dict_into_meta` with the class's keep-in-fp32 list)."""
    import accelerate
    from diffusers.models.model_loading_utils import load_model_dict_into_meta
    from diffusers.models.modeling_utils import no_init_weights

    cls = type(module)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with no_init_weights(), accelerate.init_empty_weights():
            built = cls.from_config(module.config)
    finally:
        torch.set_default_dtype(previous)
    keep = list(getattr(cls, "_keep_in_fp32_modules", None) or [])
    load_model_dict_into_meta(built, module.state_dict(), dtype=dtype, keep_in_fp32_modules=keep)
    return built


def _is_transformers_model(cls: type) -> bool:
    from transformers import PreTrainedModel

    return issubclass(cls, PreTrainedModel)


def _is_diffusers(cls: type) -> bool:
    return cls.__module__.split(".")[0] == "diffusers"


class Components(Mapping[str, Any]):
    """A plan's components, each built on first access and then kept."""

    def __init__(self, recipes: Mapping[str, ComponentRecipe]) -> None:
        self.recipes = dict(recipes)
        self._built: dict[str, Any] = {}

    def __getitem__(self, role: str) -> Any:
        if role not in self.recipes:
            raise KeyError(f"no component {role!r}; the spec has {', '.join(self.recipes)}")
        if role not in self._built:
            self._built[role] = self.recipes[role].build()
        return self._built[role]

    def __contains__(self, role: object) -> bool:
        # Mapping's default would build the component to answer; a membership test must never load weights
        return role in self.recipes

    def __iter__(self) -> Iterator[str]:
        return iter(self.recipes)

    def __len__(self) -> int:
        return len(self.recipes)

    def release(self, role: str) -> None:
        """Forget a built component (a later access builds it again), so its memory can be freed."""
        self._built.pop(role, None)

    def is_built(self, role: str) -> bool:
        """True once `role` has been loaded or constructed."""
        return role in self._built
