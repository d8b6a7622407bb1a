"""The tiny twin: the drafted spec extended with inline configs (seeded random weights) that keep the real geometry,
shrunk by the key-name rules in tiny_rules.toml."""

from __future__ import annotations

import inspect
import os
import re
import sys
from pathlib import Path

from ltxc.draft import Draft
from ltxc.draft.components import is_text_model, kind_of
from ltxc.draft.context import Context
from ltxc.draft.document import Document

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

RULES = tomllib.loads(Path(__file__).with_name("tiny_rules.toml").read_text())
_SHRINK = RULES["shrink"]


def _matches(key: str, group: str) -> bool:
    return any(re.search(pattern, str(key)) for pattern in _SHRINK[group])


def real_config(context: Context, role: str, cls: type) -> dict[str, object]:
    """The checkpoint's config for a role (keys the class takes), else the class's constructor defaults."""
    from ltxc.components import unknown_config_keys

    config = {k: v for k, v in context.config(role).items() if not k.startswith("_") and v is not None}
    if config:
        unknown = set(unknown_config_keys(cls, config))
        return {k: v for k, v in config.items() if k not in unknown}
    if cls.__module__.startswith("transformers"):
        return dict(cls.config_class().to_dict())
    params = inspect.signature(cls.__init__).parameters.values()
    return {
        p.name: list(p.default) if isinstance(p.default, tuple) else p.default
        for p in params
        if p.default is not inspect.Parameter.empty and p.default is not None
    }


def head_dim(configs: list[dict[str, object]]) -> int:
    """The tiny head dimension: the first candidate that scales every list summing to a real head dim to even parts."""
    real = {v for c in _walk(configs) for k, v in c.items() if _matches(k, "head_dim_keys") and isinstance(v, int)}
    lists = [v for c in _walk(configs) for v in c.values() if _int_list(v) and sum(v) in real]
    for candidate in _SHRINK["head_dims"]:
        if all(all((x * candidate) % sum(v) == 0 and (x * candidate // sum(v)) % 2 == 0 for x in v) for v in lists):
            return candidate
    return _SHRINK["head_dims"][-1]


def _walk(configs: list[dict[str, object]]) -> list[dict[str, object]]:
    found = []
    for config in configs:
        found.append(config)
        found.extend(_walk([v for v in config.values() if isinstance(v, dict)]))
    return found


def _int_list(value: object) -> bool:
    return (
        isinstance(value, list) and bool(value) and all(isinstance(x, int) and not isinstance(x, bool) for x in value)
    )


def shrink(config: dict[str, object], tiny_head: int, text_model: bool) -> dict[str, object]:
    """A tiny copy of a config: fewer layers and heads, narrower widths, the same geometry."""
    attention = any(_matches(k, "head_keys") for c in _walk([config]) for k in c)
    divisor = None if attention else _conv_divisor(config)
    width = _SHRINK["heads"] * tiny_head
    real_head = next((v for k, v in config.items() if _matches(k, "head_dim_keys") and isinstance(v, int)), None)
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            out[key] = shrink(value, tiny_head, text_model)
        elif isinstance(value, float) and _matches(key, "zero_keys"):
            out[key] = 0.0
        elif (
            isinstance(value, dict)
            or not isinstance(key, str)
            or isinstance(value, bool)
            or not isinstance(value, (int, list))
            or _matches(key, "keep_keys")
        ):
            out[key] = value
        elif _matches(key, "depth_keys"):
            out[key] = [_SHRINK["depth"]] * len(value) if isinstance(value, list) else _SHRINK["depth"]
        elif _matches(key, "kv_head_keys"):
            out[key] = _SHRINK["kv_heads"]
        elif _matches(key, "head_keys"):
            out[key] = _SHRINK["heads"]
        elif _matches(key, "head_dim_keys"):
            out[key] = tiny_head
        elif _int_list(value) and real_head and sum(value) == real_head:
            out[key] = [x * tiny_head // real_head for x in value]  # e.g. rotary axes that sum to the head dim
        elif _matches(key, "group_keys") and divisor:
            out[key] = max(1, value // divisor)
        else:
            out[key] = _narrow(value, divisor, width)
    if text_model:
        _tokenizer_ids(out)
    return out


def _conv_divisor(config: dict[str, object]) -> int | None:
    """One divisor for a component without attention heads that keeps its width ratios (a VAE's channel ladder)."""
    widths = [x for v in config.values() for x in (v if _int_list(v) else [v]) if _is_width(x)]
    widths += [v for k, v in config.items() if isinstance(v, int) and _is_width(v) and not _matches(k, "keep_keys")]
    if not widths:
        return None
    divisor = max(1, min(widths) // _SHRINK["conv_width"])
    return divisor if all(w % divisor == 0 for w in widths) else None


def _is_width(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= _SHRINK["min_width"]


def _narrow(value: object, divisor: int | None, width: int) -> object:
    if _int_list(value) and all(_is_width(x) for x in value):
        return [x // divisor if divisor else width for x in value]
    if _is_width(value):
        return value // divisor if divisor else width
    return value


def _tokenizer_ids(config: dict[str, object]) -> None:
    """A text model reads the byte tokenizer's ids: its vocabulary size and special ids must be the tokenizer's."""
    rules = RULES["tokenizer"]
    if "vocab_size" in config:
        config["vocab_size"] = rules["vocab_size"]
    for key, value in list(config.items()):
        if key in rules["ids"]:
            config[key] = rules["ids"][key]
        elif str(key).endswith("_token_id") and isinstance(value, int) and value >= rules["vocab_size"]:
            config[key] = rules["ids"]["unk_token_id"]


def draft_tiny(draft: Draft, spec_path: Path, tiny_path: Path) -> Document:
    """The tiny twin of a drafted spec."""
    context = draft.context
    extends = os.path.relpath(spec_path.resolve(), tiny_path.resolve().parent)
    document = Document(header=[
        f"Tiny twin of {spec_path.name}, drafted by `ltxc draft`: the real geometry with tiny random-weight",
        "components (tiny_rules.toml's key-name rules), for tests and `ltxc verify`. Nothing is downloaded.",
    ])  # fmt: skip
    model = document.section("model")
    model.set("name", f"{spec_path.stem}-tiny")
    model.set("description", f"{spec_path.stem} geometry with tiny random weights (tests and demos)")
    model.set("extends", extends)
    modules = {r: real_config(context, r, c) for r, c in context.classes.items() if kind_of(c) == "module"}
    tiny_head = head_dim(list(modules.values()))
    for role, cls in context.classes.items():
        section = document.section(f"components.{role}")
        kind = kind_of(cls)
        if kind == "tokenizer":
            _tiny_tokenizer(context, role, section)
        elif kind == "scheduler":
            _tiny_scheduler(context, role, section)
        else:
            section.set("source", "config")
            section.set("dtype", "float32")
            todo = (
                ""
                if context.checkpoint
                else "shrunk from the class's defaults (no --pretrained): check it against [geometry]"
            )
            section.set("config", _changed(cls, shrink(modules[role], tiny_head, is_text_model(cls))), todo=todo)
    _tiny_sizes(draft, document)
    lora = document.section("lora")
    lora.set("rank", 4)
    lora.set("alpha", 4)
    return document


def _changed(cls: type, config: dict[str, object]) -> dict[str, object]:
    """A transformers config as the keys that differ from its class's defaults (its full dict is mostly defaults)."""
    if not cls.__module__.startswith("transformers"):
        return config
    return _difference(config, cls.config_class().to_dict())


def _difference(config: dict[str, object], default: dict[str, object]) -> dict[str, object]:
    out = {}
    for key, value in config.items():
        base = default.get(key)
        if isinstance(value, dict) and isinstance(base, dict):
            value = _difference(value, base)
            if value:
                out[key] = value
        elif value != base and value is not None and isinstance(key, str):
            out[key] = list(value) if isinstance(value, tuple) else value
    return out


def _tiny_tokenizer(context: Context, role: str, section) -> None:
    rules = RULES["tokenizer"]
    section.set("class", rules["class"], note="bytes: needs no vocabulary file")
    section.set("source", "config")
    config: dict[str, object] = {}
    length = context.config(role).get("model_max_length")
    encoder = "text_encoder" + role.removeprefix("tokenizer")
    if not (isinstance(length, int) and length <= rules["model_max_length_limit"]):
        length = real_config(context, encoder, context.classes[encoder]).get("max_position_embeddings") if (
            encoder in context.classes) else None  # fmt: skip
    if isinstance(length, int) and length <= rules["model_max_length_limit"]:
        config["model_max_length"] = length  # pipelines pad to tokenizer.model_max_length
    section.set("config", config)


def _tiny_scheduler(context: Context, role: str, section) -> None:
    config = {k: v for k, v in context.config(role).items() if not k.startswith("_") and v is not None}
    section.set("source", "config")
    if config:
        section.set("config", config, note="the checkpoint's scheduler settings (a scheduler has no weights)")
    else:
        section.set("config", {}, todo="copy the checkpoint's scheduler_config.json here (class defaults for now)")


def _tiny_sizes(draft: Draft, document: Document) -> None:
    """Sampler sizes small but valid under the real rules; text lengths of 32."""
    spec = {s.name: {e.key: e.value for e in s.entries} for s in draft.spec.sections}
    geometry, sampler, text = spec.get("geometry", {}), spec.get("sampler", {}), spec.get("text", {})
    section = document.section("sampler")
    section.set("steps", 8)
    frames = geometry.get("frames")
    if "frames" in sampler and isinstance(frames, dict):
        section.set("frames", frames.get("max") or frames["multiple"] + frames["offset"])  # the smallest count past 1
    multiple = geometry.get("resolution_multiple")
    if isinstance(multiple, int):
        section.set("height", multiple * max(1, 64 // multiple))
        section.set("width", multiple * max(1, 96 // multiple))
    length = text.get("max_length")
    if isinstance(length, int) and length > 32:
        document.section("text").set("max_length", 32)
        if "max_sequence_length" in sampler:
            section.set("max_sequence_length", 32)
