"""`ltxc draft`: write a drafted spec and its tiny twin, then list what is left to decide."""

from __future__ import annotations

from pathlib import Path

from ltxc.errors import UserError


def run_draft(
    reference: str, pretrained: str | None, out: Path, tiny: Path | None, hub_id: str | None, force: bool = False
) -> int:
    """Draft SPEC.toml (and its tiny twin), print a summary; 0 on success."""
    if out.suffix != ".toml":
        raise UserError(f"--out {out}: the spec is a TOML file; name it e.g. {out.with_suffix('.toml').name}")
    tiny_path = tiny or out.parent / "tiny" / out.name
    existing = [str(p) for p in (out, tiny_path) if p.exists()]
    if existing and not force:
        raise UserError(f"{', '.join(existing)} exists: pass --force to overwrite it, or another --out")
    from ltxc.draft import draft_spec
    from ltxc.draft.tiny import draft_tiny

    draft = draft_spec(reference, pretrained, out, hub_id=hub_id)
    twin = draft_tiny(draft, out, tiny_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(draft.spec.render())
    tiny_path.parent.mkdir(parents=True, exist_ok=True)
    tiny_path.write_text(twin.render())
    todos = draft.spec.todos() + [f"(tiny) {todo}" for todo in twin.todos()]
    print(f"wrote {out}")
    print(f"wrote {tiny_path} (extends {out.name})")
    print(f"roles      {', '.join(draft.context.classes)}")
    print(f"todo       {len(todos)} value(s) to decide by hand:")
    for todo in todos:
        print(f"  {todo}")
    return 0
