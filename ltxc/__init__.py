"""ltxc: fine-tune video diffusion transformers from TOML model specs."""

import logging
import warnings

__version__ = "0.1.0"

# torchao (installed for the NF4 base and the low-memory optimizers) and the libraries that probe for it log at
# import, on a CPU-only torch, that its CUDA kernels did not load, that two of its enums are registered twice,
# and that diffusers cannot find a class torchao moved: harmless, and not for users' terminals. Filters on the
# loggers that emit them (set before anything imports torch, torchao or diffusers) drop exactly those lines.
_NOISE = {
    "torchao": "Failed to load ",
    "torch.utils._pytree": "is an Enum subclass and is now natively supported",
    "diffusers.quantizers.torchao.torchao_quantizer": "Unable to import `torchao` Tensor objects",
}
for _name, _text in _NOISE.items():
    logging.getLogger(_name).addFilter(lambda record, text=_text: text not in record.getMessage())
# torch.compile (torchao compiles its optimizers' step) warns once per run that the 8-bit state class cannot be
# cached across processes: a note for torchao's authors, not for users.
warnings.filterwarnings("ignore", message=r".*OptimState8bit does not implement _stable_hash_for_caching.*")
