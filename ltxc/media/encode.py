"""Video encoding shared by the output writers and the synthetic test media: exact rates, reproducible bytes."""

from __future__ import annotations

import math
from fractions import Fraction

from av.container import OutputContainer
from av.video.stream import VideoStream

CODEC_OPTIONS = {
    # veryfast keeps B-frames (packets arrive out of display order); one thread and no macroblock tree make
    # the bytes the same on every run (with mbtree on, x264 here varies between runs even on one thread)
    "libx264": {"preset": "veryfast", "crf": "16", "threads": "1", "x264-params": "mbtree=0"},
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "crf": "16", "b": "0"},
    "mpeg4": {"qscale": "2"},
}
MP4_FAMILY = (".mp4", ".mov", ".m4v")
MP4_OPTIONS = {"movflags": "faststart"}  # index first, so players and browsers can start before the download ends

# A float within this of N * 1000/1001 means that NTSC rate: people write 23.976 or 23.98 for 24000/1001.
_NTSC_TOLERANCE = 0.005


def frame_rate(fps: float | Fraction) -> Fraction:
    """`fps` as an exact ratio: a Fraction or whole number as given, 23.976 / 29.97 / 59.94 as N*1000/1001."""
    if isinstance(fps, Fraction | int):
        rate = Fraction(fps)
    else:
        if not math.isfinite(fps):
            raise ValueError(f"fps must be a positive number, got {fps}")
        whole = round(fps * 1.001)
        ntsc = Fraction(whole * 1000, 1001)
        near_ntsc = whole > 0 and fps != round(fps) and abs(fps - float(ntsc)) < _NTSC_TOLERANCE
        rate = ntsc if near_ntsc else Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps must be a positive number, got {fps}")
    return rate


def add_video_stream(
    container: OutputContainer,
    codec: str,
    *,
    rate: Fraction,
    size: tuple[int, int],
    pix_fmt: str,
    time_base: Fraction | None = None,
) -> VideoStream:
    """Add a `codec` stream of size (w, h) at `rate` with the options above; time base 1/rate unless given."""
    stream = container.add_stream(codec, rate=rate, options=CODEC_OPTIONS.get(codec, {}))
    stream.width, stream.height = size
    stream.pix_fmt = pix_fmt
    # Some codecs (gif, mpeg4) need a time base that is the frame rate.
    stream.codec_context.time_base = time_base if time_base is not None else 1 / rate
    return stream
