"""Peak memory of preprocessing a long clip vs a short one at the same output size (streaming decode).

Writes a 5 s and a 60 s clip (same resolution and fps), preprocesses each into its own cache with the
tiny spec in a fresh process under `/usr/bin/time -v`, and prints both peak RSS values and their ratio.
Decoding streams and keeps only the chosen frames, so the ratio should be ~1.0 (the goal: within 10%).

Run: python tools/bench_preprocess_memory.py [--seconds 5 60] [--size 640x360] [--fps 25]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from ltxc.media.synthetic import write_video


def peak_rss_kib(command: list[str]) -> int:
    """Run `command` under /usr/bin/time -v; return its maximum resident set size in KiB."""
    result = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    if not match:
        raise SystemExit("could not read the peak RSS from /usr/bin/time -v")
    return int(match.group(1))


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[5.0, 60.0])
    parser.add_argument("--size", default="640x360", help="source clip size WxH")
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--resolution", default="96x64", help="output bucket WxH")
    parser.add_argument("--max-frames", type=int, default=49)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for seconds in args.seconds:
            data = root / f"data-{seconds:g}s"
            data.mkdir()
            write_video(data / "clip.mp4", frames=round(seconds * args.fps), fps=args.fps, size=(width, height))
            (data / "clip.txt").write_text("a moving test pattern")
            cache = root / f"cache-{seconds:g}s"
            command = [
                sys.executable, "-m", "ltxc", "run", "preprocess", "--data", str(data), "--cache", str(cache),
                "--resolution", args.resolution, "--max-frames", str(args.max_frames), "--fps", str(args.fps),
            ]  # fmt: skip
            rows.append((seconds, peak_rss_kib(command), (data / "clip.mp4").stat().st_size))
    base = rows[0][1]
    print(f"{'clip':>8} {'file MiB':>9} {'peak RSS MiB':>13} {'ratio':>6}")
    for seconds, rss, size in rows:
        print(f"{seconds:>7g}s {size / 2**20:>9.2f} {rss / 1024:>13.1f} {rss / base:>6.3f}")


if __name__ == "__main__":
    main()
