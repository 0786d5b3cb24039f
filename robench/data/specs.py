"""Data specs: `imagenet:DIR`, `imagenet-c:DIR`, `cifar10:DIR`, `cifar10-c:DIR`, `folder:DIR`, `digits[:split]`.

`load_dataset(spec, model_info)` gives an `EvalData`: a Dataset of (x in [0,1], label, sample index) plus what
the store needs to know (name, fingerprint). Clean data gets the model's eval transform; pre-rendered corruption
sets are read as they are (`load_prerendered`).
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from robench.errors import RobenchError, suggest
from robench.seeding import derive_seed

KINDS = ("imagenet", "imagenet-c", "cifar10", "cifar10-c", "folder", "digits")
PRERENDERED = {"imagenet-c": "imagenet", "cifar10-c": "cifar10"}


@dataclass
class EvalData:
    dataset: Dataset  # items: (x float [3,H,W] in [0,1], label int (-1 = unreadable), index int)
    name: str  # e.g. "imagenet", "digits-test"
    spec: str
    num_classes: int
    sample_ids: list = field(default_factory=list)
    fingerprint: str = ""  # changes whenever the evaluated samples change (limit, subset, folder contents)

    def __len__(self):
        return len(self.dataset)


class TensorData(Dataset):
    """In-memory images (N,3,H,W) in [0,1] with labels."""

    def __init__(self, x: torch.Tensor, y, num_classes: int):
        self.x, self.y, self.num_classes = x, torch.as_tensor(y, dtype=torch.long), num_classes

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i]), i


class Reindexed(Dataset):
    """A selection of another dataset's items; the sample index becomes the position in the selection."""

    def __init__(self, base: Dataset, positions: list[int]):
        self.base, self.positions = base, positions

    def __len__(self):
        return len(self.positions)

    def __getitem__(self, i):
        x, y, _ = self.base[self.positions[i]]
        return x, y, i


def parse_spec(spec: str) -> tuple[str, str | None]:
    kind, _, arg = spec.partition(":")
    if kind not in KINDS:
        raise RobenchError(f"unknown data spec '{spec}'" + suggest(kind, KINDS)
                           + "; use imagenet:DIR, imagenet-c:DIR, cifar10:DIR, cifar10-c:DIR, folder:DIR or digits")
    if kind != "digits" and not arg:
        raise RobenchError(f"data spec '{spec}' needs a directory: {kind}:DIR")
    return kind, (arg or None)


def _fingerprint(*parts) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _select(data: EvalData, limit: int | None, subset, seed: int) -> EvalData:
    """Apply --subset FILE (relative paths, in file order) and/or --limit N (a seeded random subset, in order)."""
    positions = list(range(len(data.dataset)))
    tag = []
    if subset is not None:
        path = Path(subset)
        if not path.is_file():
            raise RobenchError(f"subset file not found: {path}")
        wanted = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        where = {sid: i for i, sid in enumerate(data.sample_ids)}
        missing = [w for w in wanted if w not in where]
        if missing:
            raise RobenchError(f"{len(missing)} image(s) of subset {path} are not in {data.spec} "
                               f"(first: {missing[0]})")
        positions = [where[w] for w in wanted]
        tag.append(("subset", hashlib.sha256("\n".join(wanted).encode()).hexdigest()[:16]))
    if limit is not None:
        if limit < 1:
            raise RobenchError(f"--limit must be >= 1 (got {limit})")
        if limit < len(positions):
            g = torch.Generator().manual_seed(derive_seed(seed, "limit", data.name))
            keep = sorted(torch.randperm(len(positions), generator=g)[:limit].tolist())
            positions = [positions[i] for i in keep]
        tag.append(("limit", limit, seed))
    if not tag:
        return data
    return EvalData(Reindexed(data.dataset, positions), data.name, data.spec, data.num_classes,
                    [data.sample_ids[p] for p in positions], _fingerprint(data.fingerprint, tag))


def load_dataset(spec: str, model_info=None, *, limit: int | None = None, subset=None, seed: int = 0,
                 strict: bool = False) -> EvalData:
    """The clean evaluation set for a data spec, with the model's eval transform."""
    kind, arg = parse_spec(spec)
    if kind in PRERENDERED:
        raise RobenchError(f"'{kind}' is a pre-rendered corruption set: evaluate it with --corruptions "
                           f"(e.g. --data {spec} --corruptions {'imagenet-c' if kind == 'imagenet-c' else 'cifar10-c'})")
    if kind == "digits":
        data = _digits(arg or "test")
    elif kind == "cifar10":
        data = _cifar10(Path(arg))
    else:
        data = _folder(kind, Path(arg), model_info, strict)
    return _select(data, limit, subset, seed)


def _transform(model_info):
    from robench.data.imagenet import EvalTransform

    size = model_info.input_size[-1] if model_info is not None else 224
    crop = model_info.crop_pct if model_info is not None else 0.875
    interp = model_info.interpolation if model_info is not None else "bicubic"
    return EvalTransform(size, crop, interp)


def _folder(kind: str, root: Path, model_info, strict: bool) -> EvalData:
    from robench.data.imagenet import (ImageFolderDataset, imagenet_class_index, imagenet_root, read_class_list,
                                       scan_class_folders)

    if kind == "imagenet":
        root = imagenet_root(root)
        index = imagenet_class_index()
    else:
        if not root.is_dir():
            raise RobenchError(f"folder directory not found: {root}")
        classes_file = next((root / n for n in ("classes.txt", "classes.tsv") if (root / n).is_file()), None)
        if classes_file is None:
            raise RobenchError(f"folder:{root} needs a classes file (classes.txt: one class folder name per line, "
                               "line i = class index i)")
        index = {c: i for i, c in enumerate(read_class_list(classes_file))}
    items = scan_class_folders(root, index, kind)
    ds = ImageFolderDataset(root, items, _transform(model_info), len(index), strict=strict)
    fp = _fingerprint(kind, str(root.resolve()), len(items), items[0], items[-1],
                      getattr(ds.transform, "size", None), getattr(ds.transform, "crop_pct", None))
    return EvalData(ds, kind, f"{kind}:{root}", len(index), ds.sample_ids, fp)


def _digits(split: str) -> EvalData:
    from robench.data.digits import digits_tensors

    if split not in ("train", "test", "all"):
        raise RobenchError(f"unknown digits split '{split}' (train, test, all)")
    x, y, ids = digits_tensors(split)
    return EvalData(TensorData(x, y, 10), f"digits-{split}", f"digits:{split}", 10, list(ids),
                    _fingerprint("digits", split, len(ids)))


class _RestrictedUnpickler(pickle.Unpickler):
    """CIFAR's python batches are pickles of dicts of numpy arrays: allow only what they need."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("copyreg", "_reconstructor"), ("builtins", "object")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def _cifar10(root: Path) -> EvalData:
    for cand in (root / "test_batch", root / "cifar-10-batches-py" / "test_batch"):
        if cand.is_file():
            break
    else:
        raise RobenchError(f"cifar10:{root} has no test_batch (expected the python version: cifar-10-batches-py/)")
    try:
        with open(cand, "rb") as f:
            d = _RestrictedUnpickler(f, encoding="bytes").load()
        data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = list(d[b"labels"])
    except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as e:
        raise RobenchError(f"{cand} is not a CIFAR-10 python batch ({e})") from None
    x = torch.from_numpy(data).float().div_(255)
    ids = [f"test_batch/{i}" for i in range(len(labels))]
    return EvalData(TensorData(x, labels, 10), "cifar10", f"cifar10:{root}", 10, ids,
                    _fingerprint("cifar10", str(root.resolve()), len(labels)))


def load_prerendered(spec: str, corruption: str, severity: int, model_info=None, *, limit=None, subset=None,
                     seed: int = 0) -> EvalData:
    """One (corruption, severity) of a pre-rendered set, read as it is (no resize / crop)."""
    kind, arg = parse_spec(spec)
    if kind == "imagenet-c":
        from robench.data.corrupted import ImageNetCFolder
        from robench.data.imagenet import imagenet_class_index

        ds = ImageNetCFolder(arg, corruption, severity, imagenet_class_index())
        name, n_classes = "imagenet", 1000
    elif kind == "cifar10-c":
        from robench.data.corrupted import Cifar10C

        ds = Cifar10C(arg, corruption, severity)
        name, n_classes = "cifar10", 10
    else:
        raise RobenchError(f"'{spec}' is not a pre-rendered corruption set (imagenet-c:DIR, cifar10-c:DIR)")
    ids = [str(s) for s in getattr(ds, "sample_ids", range(len(ds)))]
    wrapped = _IndexItems(ds)
    data = EvalData(wrapped, name, spec, n_classes, ids,
                    _fingerprint(kind, str(Path(arg).resolve()), corruption, severity, len(ds)))
    return _select(data, limit, subset, seed)


class _IndexItems(Dataset):
    """Adapts datasets whose items are (x, y, sample_id) to (x, y, index)."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        item = self.base[i]
        return item[0], int(item[1]), i
