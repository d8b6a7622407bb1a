"""Media input: probe files, choose frames by time, decode them upright to RGB, and make synthetic test media.

- `probe(path) -> MediaInfo` reads sizes, rotation and per-frame times without decoding the clip.
- `select_frames` / `available_frames` / `pad_selection` (frames.py) are the frame policy, pure maths.
- `read_frames(info, indices, size)` decodes just those frames, resized to cover `size` and centre-cropped.
- `read_image(path, size)` reads a conditioning image (a still through PIL, or a video's first frame) the same way.
- `read_clip(path, count, fps, size)` reads a conditioning video's first frames at a frame rate the same way.
- Every unusable input raises `MediaError` with a short reason for the user.
"""

from ltxc.media.clip import read_clip
from ltxc.media.decode import cover_crop, read_frames
from ltxc.media.errors import MediaError
from ltxc.media.frames import FrameSelection, available_frames, pad_selection, select_frames
from ltxc.media.image import read_image
from ltxc.media.probe import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, MediaInfo, probe

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "FrameSelection",
    "MediaError",
    "MediaInfo",
    "available_frames",
    "cover_crop",
    "pad_selection",
    "probe",
    "read_clip",
    "read_frames",
    "read_image",
    "select_frames",
]
