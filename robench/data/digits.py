"""The demo's data: scikit-learn's bundled handwritten digits (1797 real 8×8 scans, no download) as 32×32 RGB.

Preprocessing: pixel values 0..16 → [0, 1] (÷ 16), upsampled 8×8 → 32×32 with bilinear interpolation
(`F.interpolate(mode="bilinear", align_corners=False)`, which keeps values in [0, 1]), the grey channel
replicated to RGB. Background is 0 (black), ink is bright.

Split: fixed and stratified, 1257 train / 540 test. The test indices (into `load_digits()`) are recorded in
`digits_test_indices.txt` next to this file (made once with `train_test_split(test_size=0.3, stratify=y,
random_state=0)`); train is every other index. Sample ids name the original index and its split:
`digits/test/0010`, `digits/train/0000`.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from robench.errors import RobenchError, suggest

SPLITS = ("train", "test", "all")
NUM_CLASSES = 10
CLASS_NAMES = tuple(str(i) for i in range(NUM_CLASSES))
IMAGE_SIZE = 32
NUM_SAMPLES, NUM_TRAIN, NUM_TEST = 1797, 1257, 540


@lru_cache(maxsize=1)
def test_indices() -> tuple[int, ...]:
    """The recorded test split: sorted `load_digits()` indices."""
    text = resources.files("robench.data").joinpath("digits_test_indices.txt").read_text()
    return tuple(int(t) for line in text.splitlines() if not line.startswith("#") for t in line.split())


@lru_cache(maxsize=1)
def _all_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [N, 1, 8, 8] in [0, 1]
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    x = x.clamp_(0, 1).expand(-1, 3, -1, -1).contiguous()
    return x, torch.tensor(d.target, dtype=torch.long)


def split_indices(split: str) -> list[int]:
    """`load_digits()` indices of a split, ascending."""
    if split not in SPLITS:
        raise RobenchError(f"unknown digits split '{split}'" + suggest(split, SPLITS) + f"; choose one of {', '.join(SPLITS)}")
    if split == "all":
        return list(range(NUM_SAMPLES))
    test = set(test_indices())
    return sorted(test) if split == "test" else [i for i in range(NUM_SAMPLES) if i not in test]


@lru_cache(maxsize=None)
def _split_tensors(split: str) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    idx = split_indices(split)
    x, y = _all_tensors()
    test = set(test_indices())
    ids = tuple(f"digits/{'test' if i in test else 'train'}/{i:04d}" for i in idx)
    return x[idx], y[idx], ids


def digits_tensors(split: str = "test") -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(X [N, 3, 32, 32] float32 in [0, 1], y [N] int64, sample ids) of a split ("train", "test" or "all").

    Decoded once per process (cached); the returned tensors are fresh copies, safe to modify.
    """
    x, y, ids = _split_tensors(split)
    return x.clone(), y.clone(), list(ids)


class DigitsDataset(Dataset):
    """Map-style dataset: `ds[i]` = (x [3, 32, 32] float32 in [0, 1], label int, sample id str)."""

    num_classes = NUM_CLASSES
    class_names = CLASS_NAMES

    def __init__(self, split: str = "test"):
        self.split = split
        self.x, self.y, self.ids = digits_tensors(split)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i]), self.ids[i]


def digits_dataset(split: str = "test") -> DigitsDataset:
    """The digits split as a Dataset (see the module docstring for preprocessing and the fixed split)."""
    return DigitsDataset(split)
