"""Write a folder of synthetic captioned clips and images (ltxc.media.synthetic), to try `ltxc run preprocess` on.

With --extras it adds the awkward cases too: a rotated phone clip, a variable-frame-rate clip, gray and
10-bit clips (all captioned, all usable), and bad inputs that preprocess must reject with a reason: an empty
file, random bytes, a truncated clip, an audio-only file (each with a caption, so only the media is at fault).

Run: python tools/make_sample_media.py DIR [--clips 16] [--images 4] [--seed 0] [--extras]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ltxc.media import synthetic


def write_extras(directory: Path) -> list[Path]:
    """Usable but unusual clips, then bad inputs; every one gets a sidecar caption."""
    jittered = [k * 0.05 + 0.02 * (k % 2) for k in range(30)]  # 20 fps on average, uneven
    usable = [
        synthetic.write_video(directory / "phone_portrait.mp4", frames=50, fps=30, size=(320, 240), rotation=90),
        synthetic.write_video(directory / "variable_rate.mp4", frames=30, times=jittered),
        synthetic.write_video(directory / "gray.mp4", frames=40, fps=25, pix_fmt="gray"),
        synthetic.write_video(directory / "ten_bit.mp4", frames=40, fps=24, pix_fmt="yuv420p10le"),
    ]
    empty = directory / "bad_empty.mp4"
    empty.touch()
    bad = [
        empty,
        synthetic.write_corrupt(directory / "bad_random_bytes.mp4"),
        synthetic.write_truncated(usable[0], directory / "bad_truncated.mp4", 0.5),
        synthetic.write_audio_only(directory / "bad_audio_only.mp4", seconds=1.0),
    ]
    for path in usable + bad:
        path.with_suffix(".txt").write_text("a red square moving left to right on a dark blue background\n")
    return usable + bad


def main() -> None:
    """Write the folder and say what is in it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extras", action="store_true", help="add rotated/VFR/gray/10-bit clips and bad inputs")
    args = parser.parse_args()
    started = time.perf_counter()
    paths = synthetic.make_sample_dataset(args.directory, clips=args.clips, images=args.images, seed=args.seed)
    if args.extras:
        paths += write_extras(args.directory)
    seconds = time.perf_counter() - started
    print(f"wrote {len(paths)} media files with captions to {args.directory} in {seconds:.2f} s")


if __name__ == "__main__":
    main()
