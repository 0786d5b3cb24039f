"""Where models come from: one adapter per source, each turning a plan's ModelEntry into a RobenchModel (the
module, which takes [0, 1] images, plus its ModelInfo: input size, classes, normalisation, provenance).

    SOURCE      --model                     builds
    module      (an nn.Module object)       the object itself (robench.evaluate)
    timm        timm:NAME                   timm.create_model(NAME) with timm's normalisation
    file        path/to/models.py:Attr      Attr(**args) from a Python file (RUNS THAT FILE'S CODE)
    python      package.module:factory      factory(**args) from an importable module (runs its code)
    registry    NAME                        a registered robench model (`robench models`)
    plugin      NAME                        an entry point NAME in group `robench.models` -> class or factory

Attr / factory is a class or callable returning an nn.Module (or an nn.Module object). Checkpoints always go
through robench.zoo.checkpoint (safetensors / torch.load(weights_only=True)): weights never run code, but a
model *file* is code the user chose to run (robench.zoo.usercode imports it, isolated from timm's registry). The
input normalisation of user code follows robench.zoo.usercode.user_normalization and is recorded in provenance.
The weights' identity (info.checkpoint_sha256) follows one rule for every source (`_weights`). Constructor
arguments and the class count merge in one place (`model_args`).
Adding a source = one adapter and one SOURCES row here (plus its test); a source that can describe a model
before building it gives `describe`, and only such models must have weights before the run starts.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from robench.errors import RobenchError, suggest
from robench.zoo.checkpoint import file_sha256, load_into, load_state_dict
from robench.zoo.registry import (_EXTRA, RANDOM_INIT_SHA, ModelInfo, RobenchModel, _split_name, create_model,
                                  model_info, model_names)
from robench.zoo.usercode import (attr, call_factory, failure, import_file, import_module, isolated_timm_registry,
                                  on_path, user_normalization)

ENTRY_POINT_GROUP = "robench.models"


@dataclass(frozen=True)
class Source:
    name: str
    syntax: str
    match: Callable[[object], bool]
    build: Callable  # (entry) -> RobenchModel
    describe: Callable | None = None  # (name) -> ModelInfo before building (classes, input size, shipped weights);
    # None: user code, described once built (its weights are whatever its code builds or loads)


def build_model(entry) -> RobenchModel:
    """The model of a plan entry (robench.zoo.entry.ModelEntry), in eval mode, with its provenance in .info.
    An entry whose `module` is already a RobenchModel (built before, e.g. by `robench inspect`) is used as it is."""
    ref = entry.module if entry.module is not None else entry.name
    if isinstance(ref, RobenchModel):
        return ref.eval()
    src = source_for(ref)
    model = src.build(entry)
    model.info.source = src.name
    return model.eval()


def source_for(ref) -> Source:
    """The first source that takes this reference (a name / ref string or an nn.Module object)."""
    for src in SOURCES:
        if src.match(ref):
            return src
    raise RobenchError(f"unknown model '{ref}'" + suggest(str(ref), _known_names())
                       + "; give " + ", ".join(s.syntax for s in SOURCES if s.name != "module"))


def check_entry(entry):
    """Before anything is built: the model's static info (None for user code, known only once built), or a
    one-line RobenchError when a model would silently get random weights or its checkpoint is missing. The one
    place that knows which sources need weights (run.resolve asks here)."""
    if entry.random_init and entry.checkpoint:
        raise RobenchError(f"model {entry.display}: both a checkpoint ({entry.checkpoint}) and random_init given; "
                           "choose one")
    if entry.checkpoint and not Path(entry.checkpoint).is_file():
        raise RobenchError(f"checkpoint not found: {entry.checkpoint} (for model {entry.display})")
    src = source_for(entry.module if entry.module is not None else entry.name)
    if src.describe is None:
        return None
    info = src.describe(entry.name)
    if not entry.checkpoint and not entry.random_init and not info.default_checkpoint:
        raise RobenchError(f"model {entry.display} has no weights: pass --checkpoint PATH (or set it in "
                           "robench.toml [checkpoints]), or --random-init to evaluate random weights on purpose "
                           "(plan: random_init = true)")
    return info


def model_args(entry) -> tuple[dict, int | None]:
    """The entry's constructor arguments (--model-arg, plan `args`) and its class count, merged here only:
    `num_classes` may come from the entry (plan key, API) or from --model-arg; both, and different, is an error."""
    args = dict(entry.args or {})
    n = args.get("num_classes")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise RobenchError(f"model {entry.display}: num_classes must be a positive integer, got {n!r}")
    if n is not None and entry.num_classes is not None and n != entry.num_classes:
        raise RobenchError(f"model {entry.display}: num_classes given twice with different values "
                           f"({entry.num_classes} and --model-arg num_classes={n})")
    return args, n if n is not None else entry.num_classes


# ---- registry and timm -------------------------------------------------------------------------------------------
def _from_registry(entry) -> RobenchModel:
    if entry.mean is not None or entry.std is not None:
        raise RobenchError(f"--mean/--std set the normalisation of user models; {entry.name} normalises its inputs "
                           "itself (robench models shows how)")
    args, n_classes = model_args(entry)
    overrides = {k: v for k, v in args.items() if k != "num_classes"}
    model = create_model(entry.name, num_classes=n_classes, checkpoint=entry.checkpoint,
                         checkpoint_key=entry.checkpoint_key, random_init=entry.random_init, **overrides)
    info = model.info
    ckpt = entry.checkpoint or (None if entry.random_init else info.default_checkpoint)
    info.checkpoint = str(ckpt) if ckpt else None
    info.checkpoint_sha256 = file_sha256(ckpt) if ckpt else RANDOM_INIT_SHA
    if args:  # timm overrides change the model: part of its identity
        info.provenance = {"args": args}
    return model


def _is_registered(ref) -> bool:
    if not isinstance(ref, str) or ":" in ref:
        return False
    if ref in _EXTRA:
        return True
    try:
        _split_name(ref)
        return True
    except KeyError:
        return False


def _known_names() -> list[str]:
    return model_names(include_aliases=True) + sorted(_entry_points())


# ---- user code: files, modules, entry points, objects ------------------------------------------------------------
def _split_ref(ref) -> tuple[str, str] | None:
    if not isinstance(ref, str) or ":" not in ref or ref.startswith("timm:"):
        return None
    where, _, attr = ref.rpartition(":")
    return (where, attr) if where and attr else None


def _is_file_ref(ref) -> bool:
    s = _split_ref(ref)
    return s is not None and (s[0].endswith(".py") or "/" in s[0] or "\\" in s[0])


def _is_module_ref(ref) -> bool:
    s = _split_ref(ref)
    return s is not None and not _is_file_ref(ref) and all(p.isidentifier() for p in s[0].split("."))


def _from_file(entry) -> RobenchModel:
    where, name = _split_ref(entry.name)
    path = Path(where).expanduser()
    if not path.is_file():
        raise RobenchError(f"model file not found: {path} (from --model {entry.name})")
    args, n_classes = model_args(entry)
    module_name = "robench_user_model_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    with isolated_timm_registry(), on_path(path.resolve().parent):
        module = import_file(path, module_name)
        net = call_factory(attr(module, name, f"model file {path}"), entry.name, args, path)
    return _wrap(net, entry, n_classes, code_sha256=file_sha256(path))


def _from_module(entry) -> RobenchModel:
    where, name = _split_ref(entry.name)
    args, n_classes = model_args(entry)
    with isolated_timm_registry():
        module = import_module(where, entry.name)
        net = call_factory(attr(module, name, f"module {where}"), entry.name, args, _module_file(module))
    return _wrap(net, entry, n_classes, code_sha256=_file_hash(_module_file(module)))


def _entry_points() -> dict:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _is_plugin(ref) -> bool:
    return isinstance(ref, str) and ":" not in ref and ref in _entry_points()


def _from_plugin(entry) -> RobenchModel:
    ep = _entry_points()[entry.name]
    args, n_classes = model_args(entry)
    with isolated_timm_registry():
        try:
            factory = ep.load()
        except (Exception, SystemExit) as e:
            raise RobenchError(f"loading entry point '{entry.name}' ({ep.value}, group {ENTRY_POINT_GROUP}) "
                               f"failed: {failure(e)}") from None
        module = sys.modules.get(ep.value.partition(":")[0])
        net = call_factory(factory, entry.name, args, _module_file(module))
    return _wrap(net, entry, n_classes, code_sha256=_file_hash(_module_file(module)),
                 extra={"entry_point": ep.value})


def _from_object(entry) -> RobenchModel:
    if entry.args:
        raise RobenchError("model arguments apply to models built by robench, not to an nn.Module object")
    return _wrap(entry.module, entry, entry.num_classes, code_sha256=None)


def _module_file(module) -> Path | None:
    f = getattr(module, "__file__", None)
    return Path(f) if f else None


def _file_hash(path: Path | None) -> str | None:
    return file_sha256(path) if path is not None and path.is_file() else None


def state_sha256(net: nn.Module) -> str:
    """A hash of a module's weights (names, dtypes, shapes, values): the identity of weights built or loaded by
    user code itself (no checkpoint file). Plain lowercase hex, like a checkpoint file's sha256."""
    h = hashlib.sha256()
    for k, v in sorted(net.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _weights(net: nn.Module, entry, info: ModelInfo) -> None:
    """Load the checkpoint, if any, and set the weights' identity (info.checkpoint_sha256), one rule for every
    source: the checkpoint file's sha256; else the random-init marker when random weights were asked for; else
    the sha256 of the built state (the code built or loaded them itself), with a notice saying so."""
    if entry.checkpoint:
        state, _ = load_state_dict(entry.checkpoint, key=entry.checkpoint_key)
        load_into(net, state, info, entry.checkpoint)
        info.checkpoint, info.checkpoint_sha256 = str(entry.checkpoint), file_sha256(entry.checkpoint)
    elif entry.random_init:
        info.checkpoint_sha256 = RANDOM_INIT_SHA
    else:
        info.checkpoint_sha256 = state_sha256(net)
        info.notes.append(f"model {entry.display}: no --checkpoint: its weights are whatever its code builds or "
                          f"loads (weights sha256 {info.checkpoint_sha256[:12]}); pass --checkpoint to load a file, "
                          "or --random-init if they are random on purpose")


def _wrap(net, entry, num_classes: int | None, code_sha256: str | None, extra: dict | None = None) -> RobenchModel:
    if not isinstance(net, nn.Module):
        raise RobenchError(f"model {entry.display} is a {type(net).__name__}, not a torch.nn.Module")
    mean, std, norm_from, cfg = user_normalization(net, entry)
    size, crop, interp = cfg.get("input_size"), cfg.get("crop_pct"), cfg.get("interpolation")
    info = ModelInfo(name=entry.name, arch=type(net).__name__, variant="custom", timm_name="",
                     input_size=tuple(size) if size else None, mean=tuple(mean) if mean else None,
                     std=tuple(std) if std else None, interpolation=interp or "bicubic", crop_pct=crop or 0.875,
                     num_classes=num_classes, params=sum(p.numel() for p in net.parameters()))
    _weights(net, entry, info)
    info.provenance = {"ref": entry.name if entry.module is None else f"<{type(net).__module__}."
                       f"{type(net).__qualname__} object>", "code_sha256": code_sha256, "args": entry.args or {},
                       "mean": mean, "std": std, "normalization": norm_from, **(extra or {})}
    return RobenchModel(net, info)


SOURCES = (
    Source("module", "an nn.Module object (Python API)", lambda ref: isinstance(ref, nn.Module), _from_object),
    Source("timm", "timm:NAME", lambda ref: isinstance(ref, str) and ref.startswith("timm:"), _from_registry,
           describe=model_info),
    Source("file", "path/to/models.py:Class", _is_file_ref, _from_file),
    Source("python", "package.module:factory", _is_module_ref, _from_module),
    Source("registry", "NAME (robench models)", _is_registered, _from_registry, describe=model_info),
    Source("plugin", f"NAME (entry point of group {ENTRY_POINT_GROUP})", _is_plugin, _from_plugin),
)
