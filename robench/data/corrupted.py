"""Readers for the released pre-rendered corruption sets, read as they are (never resized or cropped again).

- ImageNet-C: `<root>/<corruption>/<severity 1-5>/<wnid>/*.JPEG` (224x224 JPEGs);
- CIFAR-10-C: `<root>/<corruption>.npy` (5 severities x 10 000 uint8 images, 32x32x3, stacked) and `labels.npy`.

Items are (x float32 [3, H, W] in [0, 1], label int, sample_id str). Sample ids match the clean sets' ids
(`<wnid>/<file>` for ImageNet, `test_batch/<i>` for CIFAR-10), so clean and corrupted predictions pair up.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from robench.images import open_rgb
from robench.corrupt.suite import CORRUPTIONS, check_severity
from robench.data.imagenet import scan_class_folders
from robench.errors import RobenchError, suggest


def _check_name(corruption: str, available: list[str], root: Path, what: str):
    if corruption not in available:
        hint = suggest(corruption, available) or suggest(corruption, CORRUPTIONS)
        raise RobenchError(f"{what} {root} has no '{corruption}'{hint}; "
                           f"available: {', '.join(sorted(available)) or 'none'}")


class ImageNetCFolder(Dataset):
    """One (corruption, severity) of ImageNet-C; labels from class_index (wnid -> int), not from folder order.
    An unreadable image (e.g. a truncated JPEG) yields label -1 (skipped and counted), or raises with strict=True."""

    def __init__(self, root, corruption: str, severity: int, class_index: dict[str, int], strict: bool = False):
        root = Path(root)
        check_severity(severity)
        if not root.is_dir():
            raise RobenchError(f"ImageNet-C directory not found: {root}")
        _check_name(corruption, [p.name for p in root.iterdir() if p.is_dir()], root, "ImageNet-C directory")
        folder = root / corruption / str(severity)
        if not folder.is_dir():
            have = sorted(p.name for p in (root / corruption).iterdir() if p.is_dir())
            raise RobenchError(f"ImageNet-C {corruption} has no severity {severity} folder ({folder}); "
                               f"found: {', '.join(have) or 'none'}")
        self.folder, self.strict, self._size = folder, strict, None
        items = scan_class_folders(folder, class_index, f"ImageNet-C {corruption}/{severity}")
        self.sample_ids = [rel for rel, _ in items]
        self.labels = [y for _, y in items]

    def __len__(self):
        return len(self.sample_ids)

    def __getitem__(self, i):
        path = self.folder / self.sample_ids[i]
        try:
            a = np.array(open_rgb(path), dtype=np.uint8)
        except RobenchError:
            if self.strict:
                raise
            return torch.zeros(3, *self._image_size()), -1, self.sample_ids[i]
        return torch.from_numpy(a).permute(2, 0, 1).float().div_(255), self.labels[i], self.sample_ids[i]

    def _image_size(self) -> tuple[int, int]:
        """(H, W) of the set's images, for the placeholder of an unreadable one (from the first readable header;
        ImageNet-C's 224x224 if none)."""
        if self._size is None:
            from PIL import Image

            self._size = (224, 224)
            for sid in self.sample_ids:
                try:
                    with Image.open(self.folder / sid) as im:
                        self._size = (im.height, im.width)
                    break
                except Exception:  # noqa: BLE001 - any unreadable header: try the next file
                    continue
        return self._size


def _check_labels(labels: np.ndarray, n: int, num_classes: int, path: Path):
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise RobenchError(f"{path} must hold one integer label per image (1-D), got {labels.dtype} "
                           f"{tuple(labels.shape)}")
    if len(labels) not in (n, 5 * n):
        raise RobenchError(f"{path} has {len(labels)} labels for {n} images per severity (must be {n} or {5 * n})")
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
        bad = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
        raise RobenchError(f"{path} has label {bad}: labels must be in 0..{num_classes - 1} ({num_classes} classes)")


class Cifar10C(Dataset):
    """One (corruption, severity) of CIFAR-10-C: rows (severity-1)*n .. severity*n of <corruption>.npy.
    CIFAR-100-C has the same layout (what="CIFAR100-C", id_prefix="test": ids match the clean set's). labels.npy must
    hold N or 5N integer labels in 0..num_classes-1 (1-D)."""

    def __init__(self, root, corruption: str, severity: int, what: str = "CIFAR-10-C", id_prefix: str = "test_batch",
                 num_classes: int = 10):
        root = Path(root)
        check_severity(severity)
        if not root.is_dir():
            raise RobenchError(f"{what} directory not found: {root}")
        have = [p.stem for p in root.glob("*.npy") if p.stem != "labels"]
        _check_name(corruption, have, root, f"{what} directory")
        if not (root / "labels.npy").is_file():
            raise RobenchError(f"{what} directory {root} has no labels.npy")
        try:
            data = np.load(root / f"{corruption}.npy", mmap_mode="r")
            labels = np.load(root / "labels.npy", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise RobenchError(f"cannot read {what} {corruption} in {root} ({e})") from None
        if data.ndim != 4 or data.shape[-1] != 3 or data.shape[0] % 5 or data.dtype != np.uint8:
            raise RobenchError(f"{root / (corruption + '.npy')} should hold 5 x N uint8 images (5N, H, W, 3), got "
                               f"{data.dtype} {data.shape}")
        n = data.shape[0] // 5
        _check_labels(labels, n, num_classes, root / "labels.npy")
        self.root = root
        self.data = data[(severity - 1) * n:severity * n]
        if len(labels) == 5 * n:
            labels = labels[(severity - 1) * n:severity * n]
        self.labels = [int(v) for v in labels]
        self.sample_ids = [f"{id_prefix}/{i}" for i in range(n)]

    def __len__(self):
        return len(self.sample_ids)

    def __getitem__(self, i):
        x = torch.from_numpy(np.array(self.data[i], dtype=np.uint8)).permute(2, 0, 1).float().div_(255)
        return x, self.labels[i], self.sample_ids[i]
