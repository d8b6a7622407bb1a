"""The `ltxc` command: argparse front end. User errors print one clear line each and exit 2."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ltxc.spec import UserError

DEFAULT_PLAN_DIR = Path(".ltxc")


def _size(text: str) -> tuple[int, int, int]:
    try:
        w, h, f = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHTxFRAMES (e.g. 768x512x121)") from None
    return w, h, f


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ltxc", description="Fine-tune video diffusion transformers from model specs."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    compile_cmd = commands.add_parser("compile", help="validate and compile a spec; print a summary; write the plan")
    compile_cmd.add_argument("spec", type=Path, help="a model spec (TOML), e.g. specs/tiny/ltx.toml")
    compile_cmd.add_argument(
        "--out", type=Path, default=DEFAULT_PLAN_DIR, help="directory for plan.json (default .ltxc)"
    )
    compile_cmd.add_argument(
        "--size",
        type=_size,
        action="append",
        metavar="WxHxF",
        help="a pixel size to show shapes for (repeatable)",
    )
    return parser


def _compile(args: argparse.Namespace) -> int:
    from ltxc.spec import load_spec

    loaded = load_spec(args.spec)  # before importing torch: a bad spec fails in a fraction of a second
    from ltxc.compiler import compile_spec
    from ltxc.summary import DEFAULT_SIZES, summarise

    plan = compile_spec(loaded)
    print(summarise(plan, args.size or DEFAULT_SIZES))
    try:
        path = plan.save(args.out)
    except OSError as exc:
        raise UserError(f"{args.out}: cannot write the plan there ({exc}); pass --out DIR") from None
    print(f"plan       {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ltxc` console script and `python -m ltxc`."""
    args = _parser().parse_args(argv)
    try:
        return {"compile": _compile}[args.command](args)
    except UserError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except BrokenPipeError:  # `ltxc compile ... | head` is not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keep the interpreter from failing at exit
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
