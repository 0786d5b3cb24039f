"""Image-folder datasets: ImageNet val (`<root>/<wnid>/*`), generic folders with a classes file.

Class indices come from a class list (ImageNet: the standard 1000-wnid order shipped with timm), never from the
sorted subfolders, so a folder holding a subset of classes still maps to the right indices.
"""

from __future__ import annotations

import importlib.resources
from functools import lru_cache
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from robench.images import open_rgb
from robench.errors import RobenchError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}


@lru_cache(maxsize=1)
def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k wnids in standard class-index order (line i = class i)."""
    text = (importlib.resources.files("timm.data") / "_info" / "imagenet_synsets.txt").read_text()
    wnids = [w.strip() for w in text.split() if w.strip()]
    assert len(wnids) == 1000, len(wnids)
    return wnids


def imagenet_class_index() -> dict[str, int]:
    return {w: i for i, w in enumerate(imagenet_wnids())}


def read_class_list(path) -> list[str]:
    """A classes file: one class per line (first whitespace/tab-separated field), line i = class i."""
    path = Path(path)
    if not path.is_file():
        raise RobenchError(f"class list not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RobenchError(f"cannot read class list {path} ({type(e).__name__}: the file must be UTF-8 text)") from None
    names = [ln.split("\t")[0].split()[0] for ln in text.splitlines() if ln.strip()]
    if len(set(names)) != len(names):
        raise RobenchError(f"class list {path} has duplicate names")
    return names


def scan_class_folders(root: Path, class_index: dict[str, int], what: str, hint: str = "") -> list[tuple[str, int]]:
    """(relative path, label) for every image under root/<class>/, sorted. Class folders must be in the list
    (`hint`, e.g. the expected layout, ends the error message otherwise)."""
    if not root.is_dir():
        raise RobenchError(f"{what} directory not found: {root}")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise RobenchError(f"{what} directory {root} has no class folders")
    unknown = [f.name for f in folders if f.name not in class_index]
    if unknown:
        raise RobenchError(f"{what} class folder(s) not in the class list: {', '.join(unknown[:5])}"
                           + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "") + f" (in {root})"
                           + (f"; {hint}" if hint else ""))
    items = [(f"{f.name}/{p.name}", class_index[f.name]) for f in folders for p in sorted(f.iterdir())
             if p.suffix.lower() in IMAGE_EXTS]
    if not items:
        raise RobenchError(f"{what} directory {root} holds no images")
    return items


class ImageFolderDataset(Dataset):
    """Images under root/<class>/ with labels from a class index. Items: (x float [3,H,W] in [0,1], label, idx).

    An unreadable image yields label -1 (the sweep skips, counts and reports it), or raises with strict=True.
    """

    def __init__(self, root, items: list[tuple[str, int]], transform, num_classes: int, strict: bool = False):
        self.root, self.items, self.transform = Path(root), items, transform
        self.num_classes, self.strict = num_classes, strict
        self.sample_ids = [rel for rel, _ in items]
        self.labels = [y for _, y in items]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        rel, y = self.items[i]
        try:
            img = open_rgb(self.root / rel)
        except RobenchError:
            if self.strict:
                raise
            # label -1: the sweep counts it and warns once (never a raw warning from a worker process)
            return torch.zeros(3, *self.transform.size), -1, i
        return self.transform(img), y, i


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)


class EvalTransform:
    """timm-style eval transform: resize shorter side to size/crop_pct, center crop to size, [0,1] tensor (no norm).

    With crop_pct=None the image is used as it is (pre-rendered 224x224 ImageNet-C must not be resized again).
    """

    def __init__(self, size: int, crop_pct: float | None = 0.875, interpolation: str = "bicubic"):
        self.size, self.crop_pct, self.interpolation = (size, size), crop_pct, interpolation

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if self.crop_pct is not None:
            import math

            from torchvision.transforms import InterpolationMode
            from torchvision.transforms import functional as TF

            scale = math.floor(self.size[0] / self.crop_pct)
            mode = InterpolationMode(self.interpolation) if self.interpolation in ("bilinear", "bicubic",
                                                                                   "nearest") else InterpolationMode.BICUBIC
            img = TF.resize(img, scale, interpolation=mode)
            img = TF.center_crop(img, list(self.size))
        return pil_to_tensor(img)


def imagenet_root(path) -> Path:
    """Accept either the val folder itself (holding wnid folders) or an ImageNet root holding val/."""
    path = Path(path)
    if (path / "val").is_dir() and not any(p.name.startswith("n") and p.is_dir() for p in path.iterdir()
                                            if p.name != "val"):
        return path / "val"
    return path
