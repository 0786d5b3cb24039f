"""Render corrupted copies of images to disk, and a grid of one image under every corruption x severity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from robench.corrupt import corrupt_batch, get_suite
from robench.corrupt.suite import check_corruption, check_severity
from robench.images import open_rgb
from robench.errors import RobenchError
from robench.seeding import sample_seeds

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}


def find_images(path) -> list[Path]:
    """An image file, or the images directly inside a directory (sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise RobenchError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) in {path}")
        return files
    raise RobenchError(f"image or directory not found: {path}")


def load_image(path) -> torch.Tensor:
    """(3, H, W) float in [0, 1]; unreadable or smaller than 32x32 -> RobenchError."""
    a = np.array(open_rgb(path), dtype=np.uint8)
    if min(a.shape[:2]) < 32:
        raise RobenchError(f"image {path} is {a.shape[1]}x{a.shape[0]}: corruptions need at least 32x32 pixels")
    return torch.from_numpy(a).permute(2, 0, 1).float() / 255


def save_image(x: torch.Tensor, path: Path):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    a = (x.clamp(0.0, 1.0) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    Image.fromarray(a).save(path)


def render(inputs, out, *, suite="imagenet-c", corruptions=None, severities=None, seed: int = 0,
           backend: str = "torch", grid=None) -> list[Path]:
    """Write out/<corruption>/<severity>/<image stem>.png for every image x corruption x severity; with `grid`,
    also draw the first image under every corruption (rows) x severity (columns). Returns the written paths."""
    s = get_suite(suite)
    corruptions = [check_corruption(c) for c in (corruptions or s.corruptions)]
    severities = [check_severity(v) for v in (severities or s.severities)]
    for c in corruptions:
        s.severity_params(c, 1)  # unknown to this suite's family -> RobenchError before any work
    files = find_images(inputs)
    images = [load_image(f) for f in files]
    out = Path(out)
    written, first = [], {}
    for c in corruptions:
        for sev in severities:
            for i, (f, x) in enumerate(zip(files, images)):
                y = corrupt_batch(x[None], c, sev, sample_seeds(seed, [i], c, sev), suite=s, backend=backend)[0]
                p = out / c / str(sev) / f"{f.stem}.png"
                save_image(y, p)
                written.append(p)
                if i == 0:
                    first[c, sev] = y
    if grid:
        written.append(draw_grid(images[0], first, corruptions, severities, grid, title=files[0].name))
    return written


def draw_grid(clean, cells: dict, corruptions, severities, path, title: str = "") -> Path:
    """One row per corruption, one column per severity (plus the clean image), via matplotlib Agg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(corruptions), len(severities) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows), squeeze=False)
    for r, c in enumerate(corruptions):
        for k, img in enumerate([clean] + [cells[c, s] for s in severities]):
            ax = axes[r][k]
            ax.imshow(img.permute(1, 2, 0).cpu().numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("clean" if k == 0 else f"severity {severities[k - 1]}", fontsize=8)
            if k == 0:
                ax.set_ylabel(c, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
