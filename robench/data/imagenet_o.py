"""ImageNet-O (Hendrycks et al., "Natural Adversarial Examples", 2021): out-of-distribution images for ImageNet-1k
models, released as 200 folders named by ImageNet-1k wnids (robench/data/imagenet_o_wnids.txt; a replaceable data
file). Detection is scored against ImageNet val images of the same 200 classes, with the model's logits restricted
to those 200 classes on both sides (as the authors' evaluation), anomaly score = -max softmax, AUPR with ImageNet-O
as the positive class (robench.report.calibration.aupr).

Spec: `imagenet-o:ODIR+imagenet:VALDIR` — the in-distribution pairing is part of the spec, so one clean cell holds
both sides (ImageNet-O samples first, sample ids `imagenet-o/<wnid>/<file>`, then the val samples of the 200
classes, `imagenet-val/<wnid>/<file>`). A spec without the pairing, an ODIR without exactly the 200 wnid folders,
or a VALDIR lacking one of the 200 class folders is a one-line error before anything is written.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from robench.errors import RobenchError

PAIR = "+imagenet:"
OOD_PREFIX, IND_PREFIX = "imagenet-o/", "imagenet-val/"


def split_pair(arg: str | None) -> tuple[Path, Path]:
    """(ImageNet-O dir, ImageNet val dir) of an imagenet-o spec's argument."""
    if not arg or PAIR not in arg:
        raise RobenchError(f"imagenet-o:{arg or ''} needs its in-distribution pairing: --data "
                           "imagenet-o:ODIR+imagenet:VALDIR (ImageNet val, scored against ImageNet-O for AUPR)")
    odir, _, val = arg.partition(PAIR)
    if not odir or not val:
        raise RobenchError(f"imagenet-o:{arg}: give both directories, imagenet-o:ODIR+imagenet:VALDIR")
    return Path(odir), Path(val)


def check_o_folders(root: Path, wnids) -> None:
    if not root.is_dir():
        raise RobenchError(f"imagenet-o directory not found: {root}")
    have = {p.name for p in root.iterdir() if p.is_dir()}
    missing, extra = [w for w in wnids if w not in have], sorted(have - set(wnids))
    if missing or extra:
        raise RobenchError(f"imagenet-o directory {root} is not the released 200-wnid folder: {len(missing)} of "
                           f"its 200 wnid folders missing" + (f" (e.g. {missing[0]})" if missing else "")
                           + (f", {len(extra)} other folders (e.g. {extra[0]})" if extra else ""))


def val_items(root: Path, index: dict[str, int]) -> list[tuple[str, int]]:
    """(relative path, label) of the ImageNet val images of the classes in index."""
    from robench.data.imagenet import IMAGE_EXTS

    missing = [w for w in index if not (root / w).is_dir()]
    if missing:
        raise RobenchError(f"imagenet val directory {root} lacks {len(missing)} of the 200 ImageNet-O classes' "
                           f"folders (e.g. {missing[0]})")
    items = [(f"{w}/{p.name}", y) for w, y in index.items() for p in sorted((root / w).iterdir())
             if p.suffix.lower() in IMAGE_EXTS]
    if not items:
        raise RobenchError(f"imagenet val directory {root} holds no images of the 200 ImageNet-O classes")
    return sorted(items)


class Paired(Dataset):
    """ImageNet-O images then in-distribution images, items (x, label, index)."""

    def __init__(self, ood, ind):
        self.parts = (ood, ind)
        self.sample_ids = [OOD_PREFIX + s for s in ood.sample_ids] + [IND_PREFIX + s for s in ind.sample_ids]
        self.transform = ood.transform
        self.labels = list(ood.labels) + list(ind.labels)  # from the folder index (robench.data.specs.known_labels)

    def __len__(self):
        return len(self.parts[0]) + len(self.parts[1])

    def __getitem__(self, i):
        n0 = len(self.parts[0])
        x, y, _ = self.parts[0][i] if i < n0 else self.parts[1][i - n0]
        return x, y, i


def load(spec, transform, wnids, strict: bool):
    """The paired dataset and its content digest parts."""
    from robench.data.fingerprint import tree_digest
    from robench.data.imagenet import ImageFolderDataset, imagenet_root, scan_class_folders

    odir, vdir = split_pair(spec.arg)
    check_o_folders(odir, wnids)
    index = {w: i for i, w in enumerate(wnids)}
    vroot = imagenet_root(vdir)
    if not vroot.is_dir():
        raise RobenchError(f"imagenet val directory not found: {vroot}")
    o_items, v_items = scan_class_folders(odir, index, "imagenet-o"), val_items(vroot, index)
    ood = ImageFolderDataset(odir, o_items, transform, 200, strict=strict)
    ind = ImageFolderDataset(vroot, v_items, transform, 200, strict=strict)
    return Paired(ood, ind), (tree_digest(odir, o_items, spec.hash), tree_digest(vroot, v_items, spec.hash))


def is_ood(sample_ids) -> list[bool]:
    """Which sample ids of an imagenet-o cell are ImageNet-O images (the rest: in-distribution)."""
    return [str(s).startswith(OOD_PREFIX) for s in sample_ids]
