"""The checkpoint's configs, read as JSON from a local diffusers-format directory (never its weights)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ltxc.errors import UserError

# Where each kind of component keeps its config inside its subfolder, in the order diffusers looks.
_CONFIG_FILES = ("config.json", "scheduler_config.json", "tokenizer_config.json", "preprocessor_config.json")


@dataclass
class Checkpoint:
    """model_index.json and each role's config, plus how the spec should name the checkpoint."""

    root: Path
    name: str
    index: dict[str, object]
    configs: dict[str, dict[str, object]] = field(default_factory=dict)

    def role_class(self, role: str) -> tuple[str, str] | None:
        """(library, class name) that model_index.json gives a role, or None."""
        entry = self.index.get(role)
        if isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str) for e in entry):
            return entry[0], entry[1]
        return None

    def config(self, role: str) -> dict[str, object]:
        """The role's config (empty when the checkpoint has none)."""
        return self.configs.get(role, {})

    def cite(self, role: str) -> str:
        """The config file a role's values come from, for comments."""
        for name in _CONFIG_FILES:
            if (self.root / role / name).is_file():
                return f"{role}/{name}"
        return f"{role}/"


def open_checkpoint(pretrained: str, spec_dir: Path) -> Checkpoint:
    """Read a local directory (or a hub id already in the Hugging Face cache); nothing is downloaded."""
    path = Path(pretrained).expanduser()
    if path.is_dir():
        root, name = path.resolve(), _spec_relative(path.resolve(), spec_dir)
    elif path.exists():
        raise UserError(
            f"--pretrained {pretrained}: is a file; pass the checkpoint's directory (it holds model_index.json)"
        )
    elif _looks_like_hub_id(pretrained):
        root, name = _cached_hub_snapshot(pretrained), pretrained
    else:
        raise UserError(f"--pretrained {pretrained}: no such directory")
    index_file = root / "model_index.json"
    if not index_file.is_file():
        raise UserError(
            f"--pretrained {pretrained}: {index_file} does not exist; pass a diffusers-format checkpoint directory "
            "(its model_index.json names the pipeline and each component's subfolder)"
        )
    index = _read_json(index_file)
    checkpoint = Checkpoint(root, name, index)
    for role in index:
        if role.startswith("_"):
            continue
        for file in _CONFIG_FILES:
            if (root / role / file).is_file():
                checkpoint.configs[role] = _read_json(root / role / file)
                break
    return checkpoint


def _read_json(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not readable JSON ({exc}); restore the checkpoint's config file") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~"))


def _cached_hub_snapshot(hub_id: str) -> Path:
    """The newest cached snapshot of a hub id, or a UserError: hub ids are never fetched by `ltxc draft`."""
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:  # pragma: no cover - huggingface_hub comes with diffusers
        HF_HUB_CACHE = str(Path("~/.cache/huggingface/hub").expanduser())
    snapshots = Path(HF_HUB_CACHE) / f"models--{hub_id.replace('/', '--')}" / "snapshots"
    found = sorted(snapshots.glob("*/model_index.json"), key=lambda p: p.stat().st_mtime) if snapshots.is_dir() else []
    if not found:
        raise UserError(
            f"--pretrained {hub_id}: ltxc draft reads configs locally and does not download; fetch the configs first "
            f"(e.g. `huggingface-cli download {hub_id} --include '*.json'`) and pass that directory, or draft from "
            "the pipeline class alone (leave out --pretrained)"
        )
    return found[-1].parent


def _spec_relative(path: Path, spec_dir: Path) -> str:
    """How the spec names a local checkpoint: ./ or ../ relative to the spec's folder, as the spec language reads it."""
    import os

    relative = os.path.relpath(path, spec_dir.resolve())
    return relative if relative.startswith("..") else f"./{relative}"
