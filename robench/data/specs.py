"""What every data format produces: `EvalData`, a Dataset of (x in [0,1], label, sample index) plus what the store
needs to know (name, fingerprint, class mask), and the --limit / --subset selection. The formats themselves (spec
syntax, readers) are one table in robench.data.formats.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from robench.errors import RobenchError
from robench.seeding import derive_seed


@dataclass
class EvalData:
    dataset: Dataset  # items: (x float [3,H,W] in [0,1], label int (-1 = unreadable), index int)
    name: str  # e.g. "imagenet", "digits-test"
    spec: str
    num_classes: int
    sample_ids: list = field(default_factory=list)
    fingerprint: str = ""  # what the samples are (file contents, robench.data.fingerprint) and the limit/subset
    # selection; never the absolute path (a moved dataset keeps its identity)
    class_mask: list[int] | None = None  # the model's logits of these classes, in label order (200-class subsets)
    model_classes: int | None = None  # logits the model must output (default: num_classes)

    def __post_init__(self):
        if self.model_classes is None:
            self.model_classes = self.num_classes

    def __len__(self):
        return len(self.dataset)

    def labels(self) -> list[int] | None:
        """Each sample's label by position, read from the dataset's index without decoding any image; None when
        the dataset keeps none (a custom Dataset)."""
        return known_labels(self.dataset)


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


class IndexItems(Dataset):
    """Adapts datasets whose items are (x, y, sample_id) to (x, y, index)."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        item = self.base[i]
        return item[0], int(item[1]), i


def known_labels(ds) -> list[int] | None:
    """The labels a dataset holds in its index (`labels` or `y`), through selections and adapters; None if unknown."""
    if isinstance(ds, Reindexed):
        base = known_labels(ds.base)
        return None if base is None else [base[p] for p in ds.positions]
    if isinstance(ds, IndexItems):
        return known_labels(ds.base)
    for name in ("labels", "y"):
        v = getattr(ds, name, None)
        if v is not None and len(v) == len(ds):
            return [int(t) for t in (v.tolist() if isinstance(v, torch.Tensor) else v)]
    return None


def fingerprint(*parts) -> str:
    """A short hash of the parts (their repr): callers pass content digests and settings, never absolute paths."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def select(data: EvalData, limit: int | None, subset, seed: int) -> EvalData:
    """Apply --subset FILE (relative paths, in file order) and/or --limit N (a seeded random subset, in order)."""
    positions = list(range(len(data.dataset)))
    tag = []
    if subset is not None:
        path = Path(subset)
        if not path.is_file():
            raise RobenchError(f"subset file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise RobenchError(f"cannot read subset file {path} ({type(e).__name__}: it must be UTF-8 text, one "
                               "sample id per line)") from None
        wanted = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
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
                    [data.sample_ids[p] for p in positions], fingerprint(data.fingerprint, tag),
                    data.class_mask, data.model_classes)
