"""Helpers every layer shares, defined once at the bottom of the layering (beside errors, seeding and paths):
eps formatting, Wilson intervals, atomic file writes and image opening. Light on purpose: the standard library and
robench.errors only at import time (PIL is imported by the one function that opens images)."""

from __future__ import annotations

import math
from pathlib import Path

from robench.errors import RobenchError

Z95 = 1.959963984540054


def fmt_eps(eps, norm: str | None = "Linf") -> str:
    """An eps for tables, labels and messages: '' for None; under L-inf '4/255' for whole 255ths, a short decimal
    as is ('0.3'), '0.5/255' for eighths of 1/255, else 4 significant digits; under any other norm the number
    ('0.5', '1')."""
    if eps is None:
        return ""
    e = float(eps)
    text = f"{e:g}"
    if norm != "Linf":
        return text
    k = e * 255
    if abs(k - round(k)) < 1e-6 and round(k) > 0:
        return f"{round(k)}/255"
    if len(text) <= 6:
        return text
    if abs(8 * k - round(8 * k)) < 1e-6:
        return f"{round(8 * k) / 8:g}/255"
    return f"{e:.4g}"


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval for k successes out of n (as fractions). (nan, nan) when n == 0."""
    if n <= 0:
        return (math.nan, math.nan)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def atomic_write(path, write) -> Path:
    """Write a file all at once: `write(tmp)` fills path.tmp beside it, which then replaces path (readers never see
    a half-written file; a failed write leaves the old one). An OS error is one RobenchError line naming the file
    (as robench.paths.write_file, which the commands use; this one serves the layers below paths)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        tmp.replace(path)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise RobenchError(f"cannot write {path}: {e.strerror or e}") from None
    return path


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
