"""Opening an image file as RGB, with every way it can be unreadable turned into one RobenchError line."""

from __future__ import annotations

from robench.errors import RobenchError


def open_rgb(path):
    """The image at path as a loaded RGB PIL image; unreadable (missing, truncated, not an image, or a decompression
    bomb: more than twice PIL's MAX_IMAGE_PIXELS) -> RobenchError naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            img = im.convert("RGB")
            img.load()
        return img
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
        raise RobenchError(f"unreadable image {path} ({type(e).__name__})") from None
