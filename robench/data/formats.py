"""Every data format robench reads, one entry each in `FORMATS`: spec syntax, reader, class count, class mask of
200-class subsets, pre-rendered or not, default corruption suite, leaderboard placement.

A data spec is `FORMAT:DIR` (`digits[:split]` needs no directory). `parse_data(text)` parses it once into a
`DataSpec`; `load_clean(spec, model_info, ...)` / `load_corrupted(spec, corruption, severity, ...)` give an
`EvalData` (items: x float [3, H, W] in [0, 1], label, sample index) whose fingerprint is the data's content
(robench.data.fingerprint: sha256 of single files, relative path + label + size + mtime of every file of an image
tree, or its sha256 with `data_hash="content"`), never its absolute path. Adding a format = one reader function and
one `DataFormat` entry here (plus its test).

Layouts (as released):
    imagenet:DIR          DIR/<wnid>/*.JPEG (ImageNet val, or a root holding val/)
    imagenet-c:DIR        DIR/<corruption>/<severity 1-5>/<wnid>/*.JPEG (pre-rendered, 224x224)
    imagenet-a:DIR        DIR/<wnid>/*.jpg, 200 classes (logits restricted to them, as the authors evaluate)
    imagenet-r:DIR        DIR/<wnid>/*.jpg, 200 classes (likewise)
    imagenet-o:ODIR+imagenet:VALDIR  ODIR/<wnid>/*.jpg, 200 wnid folders (OOD), paired with ImageNet val VALDIR
                          (its 200 classes; logits restricted to them): robench.data.imagenet_o
    imagenet-sketch:DIR   DIR/<wnid>/*.JPEG (or DIR/sketch/<wnid>/...), 1000 classes
    imagenet-v2:DIR       DIR/<class index 0..999>/*.jpeg (e.g. imagenetv2-matched-frequency-format-val/)
    cifar10:DIR           DIR/test_batch or DIR/cifar-10-batches-py/test_batch (python pickle, no code unpickled)
    cifar100:DIR          DIR/test or DIR/cifar-100-python/test (python pickle, fine labels)
    cifar10-c:DIR         DIR/<corruption>.npy (5 severities x 10 000 images) + DIR/labels.npy (pre-rendered)
    cifar100-c:DIR        the same layout for CIFAR-100-C
    folder:DIR            DIR/<class>/* with DIR/classes.txt (line i = class folder of class i)
    digits[:split]        the demo's handwritten digits (test, train or all), bundled
"""

from __future__ import annotations

# The readers import their modules (robench.data.imagenet / specs / corrupted: torch, PIL) inside their functions
# on purpose: this table is read by the CLI's help and the leaderboard, where importing it takes 0.03 s instead of
# ~1.5 s with torch (measured on the 2-core CI machine).
import pickle
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from robench.errors import RobenchError, suggest

if TYPE_CHECKING:  # robench.data.specs imports torch: the readers import it when they run
    from robench.data.specs import EvalData


@dataclass(frozen=True)
class DataFormat:
    name: str
    syntax: str  # e.g. "cifar10:DIR"
    about: str
    num_classes: int  # label space of the data
    load: Callable | None = None  # (DataSpec, model_info, strict) -> EvalData; None for pre-rendered sets
    load_corruption: Callable | None = None  # (DataSpec, corruption, severity, strict) -> EvalData (pre-rendered)
    class_subset: str | None = None  # file of the wnids of a subset of ImageNet-1k: logits restricted to them
    dataset: str | None = None  # name in the store (default: the format's name); pre-rendered sets: the clean set's
    default_suite: str | None = None  # corruption suite of the format's images (parameters, pre-rendered names)
    column: str | None = None  # leaderboard: metrics of this dataset become <column>_acc... in the `row` row
    row: str | None = None
    needs_dir: bool = True
    check_arg: Callable | None = None  # (arg) -> None: checks of the spec's argument at parse time (raises)

    @property
    def prerendered(self) -> bool:
        return self.load_corruption is not None

    @property
    def model_classes(self) -> int:
        """How many logits the model must output (1000 for the 200-class ImageNet subsets)."""
        return 1000 if self.class_subset else self.num_classes

    def class_mask(self) -> list[int] | None:
        """ImageNet-1k indices of the subset's classes, in label order (None: all of the model's classes)."""
        return subset_indices(self.class_subset) if self.class_subset else None


@dataclass(frozen=True)
class DataSpec:
    text: str
    format: DataFormat
    arg: str | None
    hash: str | None = None  # image trees' fingerprint: "stat" or "content" (None: $ROBENCH_DATA_HASH, else stat)

    @property
    def path(self) -> Path:
        return Path(self.arg)

    def __str__(self):
        return self.text


def parse_data(spec) -> DataSpec:
    """Parse a data spec once (a DataSpec passes through)."""
    if isinstance(spec, DataSpec):
        return spec
    if not isinstance(spec, str) or not spec:
        raise RobenchError(f"data spec must be a string like cifar10:DIR, got {spec!r}")
    kind, _, arg = spec.partition(":")
    fmt = FORMATS.get(kind)
    if fmt is None:
        raise RobenchError(f"unknown data spec '{spec}'" + suggest(kind, FORMATS) + "; formats: "
                           + ", ".join(f.syntax for f in FORMATS.values()))
    if fmt.needs_dir and not arg:
        raise RobenchError(f"data spec '{spec}' needs a directory: {fmt.syntax}")
    if fmt.check_arg is not None:
        fmt.check_arg(arg)
    return DataSpec(spec, fmt, arg or None)


def with_hash(spec, data_hash: str | None) -> DataSpec:
    """The spec with its image-tree hash mode set ("stat" or "content", robench.data.fingerprint); None: as it is."""
    from dataclasses import replace

    from robench.data.fingerprint import hash_mode

    spec = parse_data(spec)
    return spec if data_hash is None else replace(spec, hash=hash_mode(data_hash))


def load_clean(spec, model_info=None, *, limit: int | None = None, subset=None, seed: int = 0,
               strict: bool = False, data_hash: str | None = None) -> EvalData:
    """The evaluation set of a (non pre-rendered) spec, with the model's eval transform for image folders.
    data_hash: "content" fingerprints image trees by their bytes instead of size and mtime (see with_hash)."""
    from robench.data.specs import select

    spec = with_hash(spec, data_hash)
    fmt = spec.format
    if fmt.prerendered:
        raise RobenchError(f"'{fmt.name}' is a pre-rendered corruption set: evaluate it with --corruptions "
                           f"(e.g. --data {spec} --corruptions {fmt.default_suite})")
    return select(fmt.load(spec, model_info, strict), limit, subset, seed)


def load_corrupted(spec, corruption: str, severity: int, *, limit=None, subset=None, seed: int = 0,
                   strict: bool = False, data_hash: str | None = None) -> EvalData:
    """One (corruption, severity) of a pre-rendered set, read as it is (no resize / crop). Unreadable images are
    skipped and counted (label -1) unless strict."""
    from robench.data.specs import select

    spec = with_hash(spec, data_hash)
    if not spec.format.prerendered:
        raise RobenchError(f"'{spec}' is not a pre-rendered corruption set ("
                           + ", ".join(f.syntax for f in FORMATS.values() if f.prerendered) + ")")
    return select(spec.format.load_corruption(spec, corruption, int(severity), strict), limit, subset, seed)


def dataset_format(dataset: str) -> DataFormat | None:
    """The format whose evaluations are stored under this dataset name (clean sets, not the pre-rendered ones)."""
    for f in FORMATS.values():
        if not f.prerendered and (f.dataset or f.name) == dataset:
            return f
    return None


def leaderboard_placement(dataset: str) -> tuple[str, str | None]:
    """(leaderboard row's dataset, column prefix or None) for a stored dataset name: ImageNet-A results go into
    the ImageNet row as imagenet_a_acc, ...; other datasets keep their own row and plain column names."""
    f = dataset_format(dataset)
    if f is not None and f.column:
        return f.row, f.column
    return dataset, None


def has_mce(dataset: str) -> bool:
    """mCE (relative to AlexNet's ImageNet-C errors) is defined for ImageNet(-C) only."""
    return dataset == "imagenet"


# ---- readers ------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def subset_wnids(name: str) -> tuple[str, ...]:
    import importlib.resources

    text = importlib.resources.files("robench.data").joinpath(name).read_text()
    wnids = tuple(ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#"))
    assert len(wnids) == len(set(wnids)) == 200, (name, len(wnids))
    return wnids


def subset_indices(name: str) -> list[int]:
    from robench.data.imagenet import imagenet_class_index

    index = imagenet_class_index()
    return [index[w] for w in subset_wnids(name)]


def _transform(model_info):
    from robench.data.imagenet import EvalTransform

    size = getattr(model_info, "input_size", None) or (3, 224, 224)
    crop = getattr(model_info, "crop_pct", None) or 0.875
    interp = getattr(model_info, "interpolation", None) or "bicubic"
    return EvalTransform(size[-1], crop, interp)


def _image_folder(spec: DataSpec, root: Path, index: dict, model_info, strict: bool, hint: str = "") -> EvalData:
    from robench.data.fingerprint import tree_digest
    from robench.data.imagenet import ImageFolderDataset, scan_class_folders
    from robench.data.specs import EvalData, fingerprint

    fmt = spec.format
    items = scan_class_folders(root, index, fmt.name, hint=hint)
    ds = ImageFolderDataset(root, items, _transform(model_info), fmt.num_classes, strict=strict)
    t = ds.transform
    fp = fingerprint(fmt.name, tree_digest(root, items, spec.hash), t.size, t.crop_pct, t.interpolation)
    return EvalData(ds, fmt.dataset or fmt.name, f"{fmt.name}:{root}", fmt.num_classes, ds.sample_ids, fp,
                    class_mask=fmt.class_mask(), model_classes=fmt.model_classes)


def _within(root: Path, *names: str) -> Path:
    """root itself, or root/<name> when given the folder above the release's top folder."""
    return next((root / n for n in names if (root / n).is_dir()), root)


def _imagenet(spec, model_info, strict):
    from robench.data.imagenet import imagenet_class_index, imagenet_root

    return _image_folder(spec, imagenet_root(spec.path), imagenet_class_index(), model_info, strict)


def _imagenet_subset(spec, model_info, strict):
    wnids = subset_wnids(spec.format.class_subset)
    root = _within(spec.path, spec.format.name)
    return _image_folder(spec, root, {w: i for i, w in enumerate(wnids)}, model_info, strict,
                         hint=f"{spec.format.name} has the 200 wnid folders of its release")


def _imagenet_o(spec, model_info, strict):
    from robench.data import imagenet_o
    from robench.data.specs import EvalData, fingerprint

    fmt = spec.format
    ds, digests = imagenet_o.load(spec, _transform(model_info), subset_wnids(fmt.class_subset), strict)
    t = ds.transform
    fp = fingerprint(fmt.name, *digests, t.size, t.crop_pct, t.interpolation)
    return EvalData(ds, fmt.name, f"{fmt.name}:{spec.arg}", fmt.num_classes, ds.sample_ids, fp,
                    class_mask=fmt.class_mask(), model_classes=fmt.model_classes)


def _imagenet_o_arg(arg):
    from robench.data.imagenet_o import split_pair

    split_pair(arg)


def _imagenet_sketch(spec, model_info, strict):
    from robench.data.imagenet import imagenet_class_index

    return _image_folder(spec, _within(spec.path, "sketch", "data/sketch"), imagenet_class_index(), model_info,
                         strict)


def _imagenet_v2(spec, model_info, strict):
    return _image_folder(spec, spec.path, {str(i): i for i in range(1000)}, model_info, strict,
                         hint="imagenet-v2 class folders are named by class index, 0 to 999")


def _folder(spec, model_info, strict):
    from robench.data.imagenet import read_class_list

    root = spec.path
    if not root.is_dir():
        raise RobenchError(f"folder directory not found: {root}")
    classes_file = next((root / n for n in ("classes.txt", "classes.tsv") if (root / n).is_file()), None)
    if classes_file is None:
        raise RobenchError(f"folder:{root} needs a classes file (classes.txt: one class folder name per line, "
                           "line i = class index i)")
    index = {c: i for i, c in enumerate(read_class_list(classes_file))}
    fmt = DataFormat("folder", "folder:DIR", "", len(index))
    return _image_folder(DataSpec(spec.text, fmt, spec.arg, spec.hash), root, index, model_info, strict)


def _digits(spec, model_info, strict):
    from robench.data.digits import digits_tensors
    from robench.data.specs import EvalData, TensorData, fingerprint

    split = spec.arg or "test"
    if split not in ("train", "test", "all"):
        raise RobenchError(f"unknown digits split '{split}' (train, test, all)")
    x, y, ids = digits_tensors(split)
    return EvalData(TensorData(x, y, 10), f"digits-{split}", f"digits:{split}", 10, list(ids),
                    fingerprint("digits", split, len(ids)))


class _RestrictedUnpickler(pickle.Unpickler):
    """CIFAR's python batches are pickles of dicts of numpy arrays: allow only what they need (`_codecs.encode`
    turns text into bytes in protocol-2 pickles written by Python 3)."""

    ALLOWED = {("_codecs", "encode"), ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("copyreg", "_reconstructor"), ("builtins", "object")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


CIFAR_PICKLES = {"cifar10": ("cifar-10-batches-py", "test_batch", b"labels"),
                 "cifar100": ("cifar-100-python", "test", b"fine_labels")}


def _cifar(spec, model_info, strict):
    import numpy as np
    import torch

    from robench.data.fingerprint import file_digest
    from robench.data.specs import EvalData, TensorData, fingerprint

    fmt, root = spec.format, spec.path
    folder, name, label_key = CIFAR_PICKLES[fmt.name]
    cand = next((c for c in (root / name, root / folder / name) if c.is_file()), None)
    if cand is None:
        raise RobenchError(f"{fmt.name}:{root} has no {name} file (expected the python version: {folder}/{name})")
    try:
        with open(cand, "rb") as f:
            d = _RestrictedUnpickler(f, encoding="bytes").load()
        data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = [int(v) for v in d[label_key]]
    except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError, IndexError) as e:
        raise RobenchError(f"{cand} is not a {fmt.name} python batch ({type(e).__name__}: {e})") from None
    if len(labels) != len(data) or (labels and not 0 <= min(labels) <= max(labels) < fmt.num_classes):
        raise RobenchError(f"{cand}: {len(data)} images, {len(labels)} labels (must be as many, in 0.."
                           f"{fmt.num_classes - 1})")
    x = torch.from_numpy(data).float().div_(255)
    ids = [f"{name}/{i}" for i in range(len(labels))]
    return EvalData(TensorData(x, labels, fmt.num_classes), fmt.name, f"{fmt.name}:{root}", fmt.num_classes, ids,
                    fingerprint(fmt.name, name, file_digest(cand), len(labels)))


def _prerendered(spec, ds, corruption, severity, content: str) -> EvalData:
    from robench.data.specs import EvalData, IndexItems, fingerprint

    fmt = spec.format
    ids = [str(s) for s in ds.sample_ids]
    return EvalData(IndexItems(ds), fmt.dataset, spec.text, fmt.num_classes, ids,
                    fingerprint(fmt.name, corruption, severity, content, len(ds)))


def _imagenet_c(spec, corruption, severity, strict=False):
    from robench.data.corrupted import ImageNetCFolder
    from robench.data.fingerprint import tree_digest
    from robench.data.imagenet import imagenet_class_index

    ds = ImageNetCFolder(spec.arg, corruption, severity, imagenet_class_index(), strict=strict)
    return _prerendered(spec, ds, corruption, severity, tree_digest(ds.folder, zip(ds.sample_ids, ds.labels),
                                                                    spec.hash))


def _cifar_c(spec, corruption, severity, strict=False):
    from robench.data.corrupted import Cifar10C
    from robench.data.fingerprint import file_digest

    fmt = spec.format
    ds = Cifar10C(spec.arg, corruption, severity, what=fmt.name.upper(), id_prefix=CIFAR_PICKLES[fmt.dataset][1],
                  num_classes=fmt.num_classes)
    content = (file_digest(ds.root / f"{corruption}.npy"), file_digest(ds.root / "labels.npy"))
    return _prerendered(spec, ds, corruption, severity, content)


def _formats(*fmts: DataFormat) -> dict[str, DataFormat]:
    return {f.name: f for f in fmts}


FORMATS = _formats(
    DataFormat("imagenet", "imagenet:DIR", "ImageNet-1k val, DIR/<wnid>/*.JPEG", 1000, _imagenet,
               default_suite="imagenet-c"),
    DataFormat("imagenet-c", "imagenet-c:DIR", "ImageNet-C, DIR/<corruption>/<severity>/<wnid>/*.JPEG", 1000,
               load_corruption=_imagenet_c, dataset="imagenet", default_suite="imagenet-c"),
    DataFormat("imagenet-a", "imagenet-a:DIR", "ImageNet-A, DIR/<wnid>/*.jpg (200 classes)", 200, _imagenet_subset,
               class_subset="imagenet_a_wnids.txt", column="imagenet_a", row="imagenet"),
    DataFormat("imagenet-r", "imagenet-r:DIR", "ImageNet-R, DIR/<wnid>/*.jpg (200 classes)", 200, _imagenet_subset,
               class_subset="imagenet_r_wnids.txt", column="imagenet_r", row="imagenet"),
    DataFormat("imagenet-o", "imagenet-o:ODIR+imagenet:VALDIR", "ImageNet-O, ODIR/<wnid>/*.jpg (200 wnid folders), "
               "detected against ImageNet val VALDIR (its 200 classes)", 200, _imagenet_o,
               class_subset="imagenet_o_wnids.txt", column="imagenet_o", row="imagenet", check_arg=_imagenet_o_arg),
    DataFormat("imagenet-sketch", "imagenet-sketch:DIR", "ImageNet-Sketch, DIR/<wnid>/*.JPEG", 1000,
               _imagenet_sketch, column="imagenet_sketch", row="imagenet"),
    DataFormat("imagenet-v2", "imagenet-v2:DIR", "ImageNetV2, DIR/<class index>/*.jpeg", 1000, _imagenet_v2,
               column="imagenet_v2", row="imagenet"),
    DataFormat("cifar10", "cifar10:DIR", "CIFAR-10 python pickle, DIR/cifar-10-batches-py/test_batch", 10, _cifar,
               default_suite="cifar10-c"),
    DataFormat("cifar100", "cifar100:DIR", "CIFAR-100 python pickle, DIR/cifar-100-python/test", 100, _cifar,
               default_suite="cifar10-c"),
    DataFormat("cifar10-c", "cifar10-c:DIR", "CIFAR-10-C, DIR/<corruption>.npy + labels.npy", 10,
               load_corruption=_cifar_c, dataset="cifar10", default_suite="cifar10-c"),
    DataFormat("cifar100-c", "cifar100-c:DIR", "CIFAR-100-C, DIR/<corruption>.npy + labels.npy", 100,
               load_corruption=_cifar_c, dataset="cifar100", default_suite="cifar10-c"),
    DataFormat("folder", "folder:DIR", "DIR/<class>/* with DIR/classes.txt", 0, _folder),
    DataFormat("digits", "digits[:split]", "the demo's handwritten digits (bundled)", 10, _digits,
               default_suite="cifar10-c", needs_dir=False),
)

SPEC_HELP = ", ".join(f.syntax for f in FORMATS.values())
