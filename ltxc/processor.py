"""The processor: frames + caption -> normalised latents + text conditioning (one cache record).

Built from a plan and its components; it touches only the VAE, the tokenizer and the text encoder, so the
transformer is never loaded for preprocessing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ltxc.components import Components, module_dtype
from ltxc.errors import UserError
from ltxc.plan import Plan
from ltxc.text_clean import clean_caption
from ltxc.vae_frames import from_vae, to_vae


class Processor:
    """Encodes pixels and captions exactly as the spec says (VAE mode/sample, normaliser, text settings)."""

    def __init__(
        self,
        plan: Plan,
        components: Components,
        device: str | torch.device = "cpu",
        max_length: int | None = None,
    ) -> None:
        self.plan = plan
        self.text = plan.text
        # the tokenizer's length: `[text] max_length` for the cache, `[sampler] max_sequence_length` for sampling
        self.max_length = plan.text.max_length if max_length is None else max_length
        self.device = torch.device(device)
        self.components = components
        self._vae: Any = None
        self._text: tuple[Any, Any] | None = None
        self._extra: dict[str, tuple[Any, Any]] = {}  # `[text.encoders]`: name -> (tokenizer, encoder)
        self._normaliser: Any = None
        self._stage: Any = None
        self._audio: Any = None

    # -- video -------------------------------------------------------------------------------------
    @property
    def vae(self) -> Any:
        """The VAE, on the processor's device (built on first use)."""
        if self._vae is None:
            self._vae = self.components[self.plan.latent.vae].to(self.device)
        return self._vae

    def enable_tiling(self) -> bool:
        """Turn on the VAE's tiled encode if it has one; return whether it did."""
        if hasattr(self.vae, "enable_tiling"):
            self.vae.enable_tiling()
            return True
        return False

    def pixels_to_tensor(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 [F, H, W, 3] -> [1, 3, F, H, W] in [-1, 1], the VAE's dtype and device."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        x = x.permute(3, 0, 1, 2).unsqueeze(0).to(torch.float32) / 127.5 - 1.0
        return x.to(self.vae.dtype)

    @torch.no_grad()
    def encode_video(self, frames: np.ndarray, seed: int = 0, encode: str | None = None) -> torch.Tensor:
        """uint8 frames [F, H, W, 3] -> normalised float32 latents [C, F', H', W'] (`[latent] normalise`).

        `encode` ("mode" or "sample") overrides `[latent] encode`, e.g. with a task condition's for its input."""
        self.plan.geometry.check(frames.shape[0], frames.shape[1], frames.shape[2])
        vae_input = self.plan.latent.vae_input
        posterior = self.vae.encode(to_vae(self.pixels_to_tensor(frames), vae_input)).latent_dist
        if (encode or self.plan.latent.encode) == "mode":
            latents = posterior.mode()
        else:  # seeded per sample, so the cache does not depend on worker count or order
            generator = torch.Generator(device=self.device).manual_seed(seed)
            latents = posterior.sample(generator=generator)
        latents = from_vae(latents, 1, vae_input)
        return self.normaliser.normalise(latents.to(torch.float32))[0].cpu()

    @property
    def normaliser(self) -> Any:
        """The spec's latent normaliser (reads VAE statistics on first use)."""
        if self._normaliser is None:
            self._normaliser = self.plan.normaliser(self.components)
        return self._normaliser

    # -- audio -----------------------------------------------------------------------------------------
    @property
    def audio(self) -> Any:
        """The `ltxc.audio.AudioEncoder` of the spec's audio source, or None when the spec declares none."""
        if self._audio is None:
            from ltxc.audio import AudioEncoder, audio_stream

            if audio_stream(self.plan) is None:
                return None
            self._audio = AudioEncoder(self.plan, self.components, self.device)
        return self._audio

    # -- text ------------------------------------------------------------------------------------------
    def _text_modules(self) -> tuple[Any, Any]:
        if self._text is None:
            tokenizer = self.components[self.text.tokenizer]
            tokenizer.padding_side = self.text.padding_side
            encoder = self.components[self.text.encoder].to(self.device)
            self._text = (tokenizer, encoder)
        return self._text

    # Three views of a caption's encoding: `encoder_output` (tokenizer and encoder only), `cache_text` (what
    # the cache stores: the stage applied unless the cache stops before it) and `transformer_text` (what the
    # transformer sees: the stage always applied).
    @torch.no_grad()
    def cache_text(self, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        """Captions -> the text conditioning the cache stores: named tensors [B, L, ...], on the CPU.

        Always `embeds` and `mask`; with a `[text.stage]` cached after it, the stage's outputs instead.
        """
        text = self.encoder_output(captions)
        if self.text.stage is not None and self.text.cache == "after_stage":
            text = self.apply_stage(text)
        return {name: tensor.cpu() for name, tensor in text.items()}

    @torch.no_grad()
    def transformer_text(self, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        """Captions -> the text conditioning the transformer sees (the stage applied), on the device."""
        text = self.encoder_output(captions)
        return self.apply_stage(text) if self.text.stage is not None else text

    @torch.no_grad()
    def encoder_output(self, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenizer and encoders only: {"embeds": [B, L, D...], "mask": bool [B, L]}, and each `[text.encoders]`
        entry's output by its name ([B, D] pooled, or [B, L, D]), on the device."""
        text = self._primary_output(captions)
        for name in sorted(self.text.encoders or {}):
            text[name] = self._extra_output(name, captions)
        return text

    def _primary_output(self, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        """`[text]`'s tokenizer and encoder: {"embeds", "mask"}."""
        text = self.text
        tokenizer, encoder = self._text_modules()
        tokens = tokenizer(
            [clean_caption(caption, text.clean) for caption in captions],
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            add_special_tokens=text.add_special_tokens,
            return_tensors="pt",
        )
        ids = tokens.input_ids.to(self.device)
        mask = tokens.attention_mask.to(self.device)
        stack_all = text.hidden_states == "stack_all"
        output = encoder(
            ids, attention_mask=mask if text.encoder_mask else None, output_hidden_states=stack_all or None
        )
        # every layer's hidden state on a new last axis, then folded into the features: [B, L, D * layers]
        embeds = torch.stack(output.hidden_states, dim=-1).flatten(2, 3) if stack_all else output[0]
        if text.zero_padding:  # for right padding this is "cut to the true length, then zero-pad"
            embeds = torch.where(mask.bool().unsqueeze(-1), embeds, torch.zeros((), dtype=embeds.dtype))
        return {"embeds": embeds, "mask": mask.bool()}

    def _extra_output(self, name: str, captions: Sequence[str]) -> torch.Tensor:
        """A `[text.encoders.<name>]` encoder's output in its own dtype (as pipelines hand it on): the pooled output
        [B, D] or the last hidden state [B, L, D]."""
        spec = (self.text.encoders or {})[name]
        if name not in self._extra:
            tokenizer = self.components[spec.tokenizer]
            tokenizer.padding_side = spec.padding_side
            self._extra[name] = (tokenizer, self.components[spec.encoder].to(self.device))
        tokenizer, encoder = self._extra[name]
        tokens = tokenizer(
            [clean_caption(caption, self.text.clean) for caption in captions],
            padding="max_length",
            max_length=spec.max_length,
            truncation=True,
            add_special_tokens=spec.add_special_tokens,
            return_tensors="pt",
        )
        mask = tokens.attention_mask.to(self.device) if spec.encoder_mask else None
        output = encoder(tokens.input_ids.to(self.device), attention_mask=mask, output_hidden_states=False)
        result = output.pooler_output if spec.output == "pooled" else output[0]
        return result.to(module_dtype(encoder))

    @torch.no_grad()
    def apply_stage(self, text: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run the `[text.stage]` module on encoder output; its outputs replace or join the text tensors."""
        stage, call = self.text.stage, self.plan.text_stage
        if stage is None or call is None:
            return dict(text)
        module = self.stage_module
        device = next(module.parameters(), torch.empty(0)).device
        # the stage sees the mask as the tokenizer returns it (integers), as the reference pipelines pass it
        env = {
            "text.embeds": text["embeds"].to(device),
            "text.mask": text["mask"].to(device).long(),
            "padding_side": self.text.padding_side,
        }
        outputs = module(**{key: expr(env) for key, expr in call.items()})
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        if len(outputs) < len(stage.outputs):
            raise UserError(
                f"[text.stage] names {len(stage.outputs)} outputs but {type(module).__name__} returned {len(outputs)}"
            )
        return {**text, **dict(zip(stage.outputs, outputs, strict=False))}

    @property
    def stage_module(self) -> Any:
        """The `[text.stage]` module, on the processor's device."""
        if self._stage is None:
            stage = self.text.stage
            if stage is None:
                raise UserError("the spec has no [text.stage]")
            self._stage = self.components[stage.component].to(self.device)
        return self._stage

    def free_text(self) -> None:
        """Drop the tokenizer, the text encoder and the text stage (from this processor and its components), so
        their memory is freed once nothing else holds them; a later text call builds them again."""
        self._text = self._stage = None
        self._extra = {}
        roles = [self.text.tokenizer, self.text.encoder] + ([self.text.stage.component] if self.text.stage else [])
        roles += [role for e in (self.text.encoders or {}).values() for role in (e.tokenizer, e.encoder)]
        release = getattr(self.components, "release", None)
        for role in roles if release is not None else ():
            release(role)
        _empty_device_cache(self.device)

    def free_vae(self) -> None:
        """Drop the VAEs (from this processor and its components); a later video call builds them again."""
        self._vae = None
        if self._audio is not None:
            self._audio.release()
        release = getattr(self.components, "release", None)
        if release is not None:
            release(self.plan.latent.vae)
        _empty_device_cache(self.device)

    def null_conditioning(self) -> dict[str, torch.Tensor]:
        """What "no text" is for CFG dropout: the encoded empty prompt, or zeros (and all-false masks)."""
        text = self.cache_text([""])
        if self.plan.null_text == "zeros":
            return {name: torch.zeros_like(tensor) for name, tensor in text.items()}
        return text


def _empty_device_cache(device: torch.device) -> None:
    """Give freed GPU memory back to the allocator's pool owner (no-op on the CPU)."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
