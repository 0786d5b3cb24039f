"""Running model code that robench did not write (a file, a module, an entry point): import it, call its factory,
read its input normalisation. Every failure of that code is one RobenchError line naming the file and line.

Isolation: research model files often register their classes with timm's `@register_model` under timm's own names
(`deit_tiny_patch16_224`), which overwrites timm's registry for the whole process. Importing and building user code
runs inside `isolated_timm_registry()`, which restores timm's registry afterwards, so robench's own names
(`deit-tiny-elliptical`, `timm:NAME`) keep building timm's architectures in the same run.

Normalisation of user code (`user_normalization`), in this order:
  1. --mean/--std (`--mean none`: the model takes [0, 1] images);
  2. the module's cfg (`pretrained_cfg`, else `default_cfg`) when it has mean and std AND either names its weights
     (a non-empty `url`, `hf_hub_id` or `file`: timm's pretrained configs) or holds values that are not one of
     timm's generic constants (timm.data.constants: ImageNet default, Inception 0.5/0.5, CLIP, DPN), i.e. values
     the model's authors chose;
  3. a cfg that is only timm's template (generic values, no weights named: e.g. `default_cfg = _cfg()` copied from
     timm's vision_transformer, mean = std = 0.5) is an error asking for --mean/--std or --mean none;
  4. no cfg at all: none (the model takes [0, 1] images, as AutoAttack's and RobustBench's models do).
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import sys
import sysconfig
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from robench.errors import RobenchError, suggest

WEIGHT_KEYS = ("url", "hf_hub_id", "file")  # a cfg with one of these set describes identified weights
NO_NORM = "none"  # --mean none: the model takes [0, 1] images
_ROBENCH = Path(__file__).resolve().parents[1]  # robench's and Python's own frames are not where user code failed
_STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()


# ---- isolation ---------------------------------------------------------------------------------------------------
@contextmanager
def isolated_timm_registry():
    """timm's model registry (entry points, pretrained cfgs, tags) as it was before, whatever the code inside
    registers or overwrites. The containers are restored in place (other modules hold references to them)."""
    from timm.models import _registry as reg

    saved = []
    for name, obj in vars(reg).items():
        if name.startswith("__"):
            continue
        if isinstance(obj, dict):
            saved.append((obj, {k: copy.copy(v) if isinstance(v, (set, list, dict)) else v for k, v in obj.items()}))
        elif isinstance(obj, set):
            saved.append((obj, set(obj)))
    try:
        with warnings.catch_warnings():  # "Overwriting <name> in registry": moot, the registry is restored below
            warnings.filterwarnings("ignore", message=r"Overwriting \S+ in registry")
            yield
    finally:
        for obj, before in saved:
            obj.clear()
            obj.update(before)


@contextmanager
def on_path(folder: Path, first: bool = True):
    """`folder` on sys.path while user code is imported and built (first: for a model file's sibling imports;
    last: the current directory for package.module:factory, after installed packages)."""
    folder = str(folder)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder) if first else sys.path.append(folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


# ---- failures ----------------------------------------------------------------------------------------------------
def failure(e: BaseException, path: Path | None = None) -> str:
    """One line about an exception raised by user code: 'ZeroDivisionError: division by zero (models.py line 3)'."""
    import traceback

    text = (str(e).strip().splitlines() or [""])[0][:200]
    if isinstance(e, SystemExit):
        text = f"the code called sys.exit({e.code!r})"
    where = ""
    if isinstance(e, SyntaxError) and e.lineno:
        where = f" ({Path(e.filename or '?').name} line {e.lineno})"
    else:  # the last frame in that file (in user code at all, when the file is not known)
        frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith("<")
                  and (Path(f.filename).resolve() == path.resolve() if path is not None
                       else not ({_ROBENCH, _STDLIB} & set(Path(f.filename).resolve().parents)))]
        if frames:
            where = f" ({Path(frames[-1].filename).name} line {frames[-1].lineno})"
    return f"{type(e).__name__}: {text}{where}" if text else f"{type(e).__name__}{where}"


def attr(obj, name: str, what: str):
    cur = obj
    for part in name.split("."):
        if not hasattr(cur, part):
            names = [n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None))]
            raise RobenchError(f"{what} has no attribute '{name}'" + suggest(name, names)
                               + (f"; it defines: {', '.join(names[:8])}" if names else ""))
        cur = getattr(cur, part)
    return cur


# ---- import and build --------------------------------------------------------------------------------------------
def import_file(path: Path, module_name: str):
    """Execute a model file as module `module_name` (registered in sys.modules: dataclasses and pickling need it)."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise RobenchError(f"cannot import model file {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # SystemExit: a file calling sys.exit() must not end robench silently
        sys.modules.pop(module_name, None)
        raise RobenchError(f"importing model file {path} failed: {failure(e, path)}") from None
    return module


def import_module(where: str, ref: str):
    """Import package.module `where` as `python -m` would find it: installed packages and PYTHONPATH first, then
    the current directory."""
    cwd = Path.cwd()
    try:
        with on_path(cwd, first=False):
            return importlib.import_module(where)
    except ImportError as e:
        raise RobenchError(f"cannot import module '{where}' for --model {ref} ({failure(e)}); looked on sys.path "
                           f"and in the current directory {cwd}: set PYTHONPATH to the folder holding the package"
                           ) from None
    except (Exception, SystemExit) as e:
        raise RobenchError(f"importing module '{where}' failed: {failure(e)}") from None


def call_factory(factory, ref: str, args: dict, path: Path | None) -> nn.Module:
    """factory(**args) -> the nn.Module (an nn.Module object is used as it is); weights seeded for reproducibility."""
    if isinstance(factory, nn.Module):
        if args:
            raise RobenchError(f"{ref} is an nn.Module object: it takes no model arguments ({', '.join(args)})")
        return factory
    if not callable(factory):
        raise RobenchError(f"{ref} is a {type(factory).__name__}, not a class or function returning an nn.Module")
    shown = ", ".join(f"{k}={v!r}" for k, v in args.items())
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # without a checkpoint the (random) weights are the same every time
            net = factory(**args)
    except (Exception, SystemExit) as e:
        raise RobenchError(f"building {ref}({shown}) failed: {failure(e, path)}") from None
    if not isinstance(net, nn.Module):
        raise RobenchError(f"{ref}({shown}) returned a {type(net).__name__}, not a torch.nn.Module")
    return net


# ---- normalisation -----------------------------------------------------------------------------------------------
def _generic_norms() -> list[tuple[tuple, tuple]]:
    """timm's generic (mean, std) constants: what its cfg templates (`_cfg`) fill in for any model."""
    from timm.data import constants as c

    names = [k[:-5] for k in vars(c) if k.endswith("_MEAN") and hasattr(c, k[:-5] + "_STD")]
    return [(tuple(getattr(c, n + "_MEAN")), tuple(getattr(c, n + "_STD"))) for n in names]


def _close(a, b) -> bool:
    return len(a) == len(b) and all(abs(float(x) - float(y)) < 1e-6 for x, y in zip(a, b))


def _is_none(v) -> bool:
    return (isinstance(v, str) and v.strip().lower() == NO_NORM) or (isinstance(v, (list, tuple)) and not v)


def _module_cfg(net: nn.Module) -> tuple[str | None, dict]:
    for name in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(net, name, None)
        if isinstance(cfg, dict) and cfg:
            return name, cfg
    return None, {}


def user_normalization(net: nn.Module, entry) -> tuple[list | None, list | None, str, dict]:
    """(mean, std, where they come from, the module's cfg) for user code, by the rule in the module docstring.
    The source is one of '--mean/--std', '--mean none', 'pretrained_cfg', 'default_cfg', 'none'."""
    name, cfg = _module_cfg(net)
    if _is_none(entry.mean) or _is_none(entry.std):
        return None, None, "--mean none", cfg
    if (entry.mean is None) != (entry.std is None):
        raise RobenchError(f"model {entry.display}: --mean and --std go together: give both (or --mean none)")
    if entry.mean is not None:
        return [float(v) for v in entry.mean], [float(v) for v in entry.std], "--mean/--std", cfg
    mean, std = cfg.get("mean"), cfg.get("std")
    if name is None or mean is None or std is None:
        return None, None, "none", cfg
    names_weights = any(cfg.get(k) for k in WEIGHT_KEYS)
    if names_weights or not any(_close(mean, m) and _close(std, s) for m, s in _generic_norms()):
        return [float(v) for v in mean], [float(v) for v in std], name, cfg
    shown = lambda v: ",".join(f"{float(x):g}" for x in v)  # noqa: E731
    raise RobenchError(
        f"model {entry.display}: its only normalisation is timm's generic {name} (mean {shown(mean)}, std "
        f"{shown(std)}, naming no weights), not necessarily what its weights were trained with: give "
        "--mean/--std (ImageNet: --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225), or --mean none for a model "
        "that takes [0, 1] images (Python: mean=..., std=...)")
