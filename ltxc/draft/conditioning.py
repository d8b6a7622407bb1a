"""[text], [transformer] and [transformer.call]: how the pipeline encodes prompts and what it hands the
transformer, read from its source lines."""

from __future__ import annotations

import re

from ltxc.draft.components import has_role_kind, is_text_model
from ltxc.draft.context import Context
from ltxc.draft.document import Document
from ltxc.draft.encoders import EncoderUse, encoder_uses, primary_and_pooled

# The pipelines' keyword -> ltxc's call name, where the keyword alone says what it is.
_CALL_NAMES = {
    "hidden_states": "latents",
    "encoder_hidden_states": "text.embeds",
    "encoder_attention_mask": "text.mask",
}
# Keywords whose value is one of the latent grid's sizes when the pipeline passes a latent_* variable.
_GRID = {"num_frames": "latent.frames", "height": "latent.height", "width": "latent.width"}


def draft_text(context: Context, document: Document) -> None:
    """Write [text] (one text encoder; more than one is left as a TODO naming the roles)."""
    pipeline = context.pipeline
    section = document.section("text")
    encoders = [role for role, cls in context.classes.items() if is_text_model(cls)]
    tokenizers = has_role_kind(context, "tokenizer")
    encoder = encoders[0] if encoders else "text_encoder"
    pooled = None
    if len(encoders) > 1:
        primary, pooled = primary_and_pooled(encoder_uses(pipeline, encoders))
        if primary is not None:
            encoder = primary.role
            section.set("encoder", encoder, note=f"its output is prompt_embeds, {primary.cite}")
            section.set("tokenizer", _tokenizer_of(encoder))
        others = [r for r in encoders if r != encoder and (pooled is None or r != pooled.role)]
        if primary is None or others:
            named = ", ".join(f"{r} ({_encoder_line(pipeline, r)})" for r in others or encoders)
            section.comment = f"TODO: {pipeline.name} also encodes with {named}: declare it"
    length = pipeline.defaults.get("max_sequence_length")
    if isinstance(length, int):
        section.set(
            "max_length", length, note=f"max_sequence_length's default, {pipeline.params['max_sequence_length']}"
        )
    else:
        section.set(
            "max_length",
            None,
            todo=f"the tokenizer's max_length ({pipeline.module.find('max_length=') or pipeline.call.cite()})",
        )
    section.set("padding_side", *_padding_side(context, _tokenizer_of(encoder) if tokenizers else "tokenizer"))
    special = pipeline.module.find(r"add_special_tokens=(True|False)")
    match = re.search(r"add_special_tokens=(True|False)", pipeline.module.text)
    section.set("add_special_tokens", match.group(1) == "True" if match else True, note=special or "")
    stacked = re.search(r"output_hidden_states=True", pipeline.module.text) and "torch.stack(" in pipeline.module.text
    where = pipeline.module.find(r"output_hidden_states=True" if stacked else r"last_hidden_state|\)\[0\]")
    section.set("hidden_states", "stack_all" if stacked else "last", note=where or "")
    call_line = _encoder_call(pipeline.module.text, encoder)
    masked = call_line is not None and "mask" in call_line
    cite = pipeline.module.find(rf"self\.{encoder}\(") or ""
    section.set("encoder_mask", masked, note=f"{cite}: {call_line.strip()}" if call_line else "")
    if "new_zeros(" in pipeline.module.text:
        section.set("zero_padding", True, note=f"cut to length and zero-padded, {pipeline.module.find('new_zeros')}")
    empty = pipeline.module.find(r"negative_prompt or \"\"")
    section.set("null_conditioning", "empty_prompt", note=f'negative_prompt or "", {empty}' if empty else "")
    clean = _clean(context)
    if clean:
        section.set("clean", *clean)
    if pooled is not None:
        _pooled_encoder(context, document, pooled)


def _tokenizer_of(encoder: str) -> str:
    """The tokenizer role paired with an encoder role by suffix (text_encoder_2 -> tokenizer_2)."""
    return "tokenizer" + encoder.removeprefix("text_encoder")


def _pooled_encoder(context: Context, document: Document, use: EncoderUse) -> None:
    """[text.encoders.pooled]: a second encoder whose pooled output is a text tensor of its own."""
    section = document.section("text.encoders.pooled", comment=f"{use.role}'s output is {use.variable} ({use.cite})")
    section.set("encoder", use.role)
    tokenizer = _tokenizer_of(use.role)
    section.set("tokenizer", tokenizer)
    length = context.config(tokenizer).get("model_max_length")
    if not (isinstance(length, int) and length < 100000):
        found = context.attribute(r"^tokenizer_max_length$")
        length = found[1] if found else None
    where = context.checkpoint.cite(tokenizer) if context.checkpoint else "tokenizer_max_length's fallback"
    section.set("max_length", length if isinstance(length, int) else None, note=where,
                todo="" if isinstance(length, int) else f"the tokenizer's model_max_length ({use.cite})")  # fmt: skip
    output = "pooled" if "pooler_output" in use.text else None
    section.set("output", output, note=f"pooler_output, {use.helper}", todo="" if output else "which output it uses")
    call = _encoder_call(use.text, use.role)
    section.set("encoder_mask", call is not None and "mask" in call, note=call or "")


def _encoder_line(pipeline, encoder: str) -> str:
    """Where the pipeline calls an encoder (its `__init__` when it never calls it by name)."""
    return pipeline.module.find(rf"self\.{encoder}\(") or pipeline.init.cite()


def _encoder_call(text: str, encoder: str) -> str | None:
    """The text encoder's call, joined onto one line (it may span several)."""
    match = re.search(rf"self\.{encoder}\((.*?)\)(?:\.|\[|\n)", text, flags=re.S)
    return " ".join(match.group(0).split()) if match else None


def _padding_side(context: Context, tokenizer: str) -> tuple[str, str, str]:
    side = context.config(tokenizer).get("padding_side")
    if side in ("left", "right"):
        return str(side), f"{tokenizer}/tokenizer_config.json", ""
    match = re.search(r"padding_side\s*=\s*\"(left|right)\"", context.pipeline.module.text)
    if match:
        return match.group(1), context.pipeline.module.find(r"padding_side\s*=\s*\"") or "", ""
    return "right", "tokenizers pad right unless told otherwise", ""


def _clean(context: Context) -> tuple[list[str], str] | None:
    module = context.pipeline.module
    if re.search(r"def prompt_clean", module.text) and "html.unescape" in module.text:
        steps = (["fix_text"] if "fix_text" in module.text else []) + ["unescape_html", "collapse_whitespace"]
        return steps, f"prompt_clean, {module.find(r'def prompt_clean')}"
    where = module.find(r"\.strip\(\) for \w+ in prompt")
    if where:
        return ["strip"], where
    return None


def draft_transformer(context: Context, document: Document, staged: dict[str, str]) -> None:
    """Write [transformer] and [transformer.call] from the denoising loop's transformer call (`staged`: a text
    stage's result variables and their text names)."""
    pipeline = context.pipeline
    document.section("transformer").set("output", 0, note="return_dict=False, then [0]")
    section = document.section("transformer.call")
    if not pipeline.transformer_call:
        section.set("hidden_states", "latents", todo=f"no transformer call found in {pipeline.call.cite()}")
        return
    inputs = call_inputs(pipeline)
    for keyword in pipeline.transformer_call:
        name = f"input.{keyword.name}" if keyword.text in inputs else _call_name(keyword.name, keyword.text)
        name = staged.get(keyword.text, name)
        if name is not None:
            section.set(keyword.name, name, note=f"{keyword.text}, {keyword.cite}")
        else:
            section.set(keyword.name, None, todo=f"the pipeline passes `{keyword.text}` ({keyword.cite})")


def call_inputs(pipeline) -> dict[str, tuple[str, str]]:
    """Call keywords fed from a `__call__` argument through `torch.full(...)`: variable -> (argument, citation)."""
    found = {}
    for keyword in pipeline.transformer_call:
        pattern = rf"^\s*{re.escape(keyword.text)} = torch\.full\(\[1\], (\w+)"
        match = re.search(pattern, pipeline.call.text, flags=re.M)
        if match and match.group(1) in pipeline.params:
            found[keyword.text] = (match.group(1), pipeline.call.find(pattern) or "")
    return found


def draft_inputs(context: Context, document: Document) -> set[str]:
    """[inputs.<name>] for each call input fed from a call argument; return the arguments so consumed."""
    used = set()
    for keyword in context.pipeline.transformer_call:
        entry = call_inputs(context.pipeline).get(keyword.text)
        if entry is None:
            continue
        argument, cite = entry
        section = document.section(
            f"inputs.{keyword.name}", comment=f"{keyword.name} = torch.full([1], {argument}) ({cite})"
        )
        default = context.pipeline.defaults.get(argument)
        section.set("sample", default if isinstance(default, (int, float)) else None, note=f"{argument}'s default")
        section.set("train", 1.0, todo=f"the constant training feeds it, commonly 1.0 ({cite})")
        used.add(argument)
    return used


def _call_name(keyword: str, text: str) -> str | None:
    if keyword in _CALL_NAMES:
        return _CALL_NAMES[keyword]
    if text == "pooled_prompt_embeds":  # the [text.encoders.pooled] tensor
        return "text.pooled"
    if keyword == "timestep" and text == "timestep":
        return "timestep"
    if keyword in _GRID and text.startswith("latent"):
        return _GRID[keyword]
    if keyword == "fps" or "frame_rate" in text:
        return "fps"
    if text in ("True", "False"):
        return text
    return None
