"""ltxc: fine-tune video diffusion transformers from TOML model specs."""

__version__ = "0.1.0"
