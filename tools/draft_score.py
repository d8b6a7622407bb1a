"""How much of each shipped spec `ltxc draft` gets right: both TOMLs flattened to dotted keys (inline tables
included, lists as values), compared key by key; the share of the shipped spec's keys whose drafted value is equal.

    python tools/draft_score.py            # the table in docs/onboarding.md
    python tools/draft_score.py --misses   # and every key the draft got wrong or left out
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "pretrained"
# (family, shipped spec, reference pipeline, configs-only fixture, the hub id the shipped spec names)
FAMILIES = [
    ("LTX-Video", "ltx.toml", "diffusers:LTXPipeline", "LTX-Video", "Lightricks/LTX-Video"),
    (
        "Wan 2.1",
        "wan-2.1.toml",
        "diffusers:WanPipeline",
        "Wan2.1-T2V-1.3B-Diffusers",
        "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
    ),
    ("LTX-2.3", "ltx-2.3.toml", "diffusers:LTX2Pipeline", "LTX-2.3", "Lightricks/LTX-2.3"),
    ("FLUX.1-dev", "flux-1.toml", "diffusers:FluxPipeline", "FLUX.1-dev", "black-forest-labs/FLUX.1-dev"),
]


def flatten(table: dict, prefix: str = "") -> dict[str, object]:
    """Dotted key -> value for every leaf (tables and inline tables recurse; lists of tables get indices)."""
    out: dict[str, object] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for index, item in enumerate(value):
                out.update(flatten(item, f"{name}[{index}]."))
        else:
            out[name] = value
    return out


def same(a: object, b: object) -> bool:
    """Equal as TOML values (3 == 3.0; lists element-wise)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def score(shipped: dict, drafted: dict) -> tuple[int, int, list[str]]:
    """(right, total, misses) over the shipped spec's keys; model.name and model.description are not scored."""
    truth, draft = flatten(shipped), flatten(drafted)
    keys = [k for k in truth if k not in ("model.name", "model.description")]
    misses = [f"{k}: shipped {truth[k]!r}, drafted {draft.get(k, '(missing)')!r}" for k in keys if not (
        k in draft and same(truth[k], draft[k]))]  # fmt: skip
    return len(keys) - len(misses), len(keys), misses


def drafted(reference: str, pretrained: Path | None, hub_id: str | None, out: Path) -> dict:
    """Draft a spec in-process and parse it back."""
    from ltxc.draft import draft_spec

    draft = draft_spec(reference, str(pretrained) if pretrained else None, out, hub_id=hub_id)
    return tomllib.loads(draft.spec.render())


def main(argv: list[str] | None = None) -> int:
    """Print the table (and with --misses the keys each draft missed)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--misses", action="store_true", help="list every key each draft got wrong or left out")
    args = parser.parse_args(argv)
    rows, details = [], []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "draft.toml"
        for family, spec, reference, fixture, hub_id in FAMILIES:
            path = ROOT / "specs" / spec
            if not path.is_file():
                rows.append(f"| {family} | `specs/{spec}` not shipped yet | | |")
                continue
            shipped = tomllib.loads(path.read_text())
            alone = score(shipped, drafted(reference, None, None, out))
            local = score(shipped, drafted(reference, FIXTURES / fixture, hub_id, out))
            rows.append(f"| {family} (`specs/{spec}`) | {alone[1]} | {_share(alone)} | {_share(local)} |")
            details.append((family, "class alone", alone[2]))
            details.append((family, "--pretrained", local[2]))
    print("| family (shipped spec) | keys | right, class alone | right, with --pretrained |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    if args.misses:
        for family, mode, misses in details:
            print(f"\n{family}, {mode}: {len(misses)} missed")
            print("\n".join(f"  {m}" for m in misses))
    return 0


def _share(result: tuple[int, int, list[str]]) -> str:
    right, total, _ = result
    return f"{right} ({100 * right / total:.0f}%)"


if __name__ == "__main__":
    sys.exit(main())
