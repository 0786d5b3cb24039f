"""Safe checkpoint loading: safetensors, or torch.load(weights_only=True) with a tiny allow-list. Never unpickles code.

Accepted: `.safetensors`; `.pth/.pt/.bin` holding a state dict, possibly nested under 'model' / 'state_dict' /
'model_ema' (DeiT training-script format: {'model', 'optimizer', 'epoch', 'args'} with `args` an
argparse.Namespace). Keys are loaded as they are; a known wrapper prefix (`module.` of DDP, `_orig_mod.` of
torch.compile, `net.` / `model.` of wrappers) is stripped only when that is what makes them fit the model
(`fit_keys`), so a wrapper that keeps its backbone as `self.net` loads its own state_dict().
"""

from __future__ import annotations

import argparse
import pickle
import warnings
from pathlib import Path

import torch
from torch import nn

from robench.data.fingerprint import file_digest
from robench.errors import RobenchError
from robench.zoo.attention import VARIANT_PARAMS

NEST_KEYS = ("model", "state_dict", "model_ema", "module")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # training wrappers (DDP, torch.compile): `convert` drops them
FIT_PREFIXES = WRAPPER_PREFIXES + ("net.", "model.")  # tried at load time, only when stripping makes keys fit
# Harmless types found in training checkpoints (plain attribute bags, no code runs on load).
SAFE_GLOBALS = [argparse.Namespace]


def file_sha256(path) -> str:
    """sha256 of a checkpoint or model file: robench.data.fingerprint's digest, cached by the file's stat, so a
    checkpoint named for several models or builds is read once."""
    return file_digest(path)


def read_checkpoint(path) -> tuple[object, dict]:
    """The raw object stored in a checkpoint file and its metadata (safetensors header metadata or {})."""
    path = Path(path)
    if not path.exists():
        raise RobenchError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise RobenchError(f"checkpoint is a directory, not a file: {path}")
    if path.suffix == ".safetensors" or _is_safetensors(path):
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                return {k: f.get_tensor(k) for k in f.keys()}, meta
        except Exception as e:  # SafetensorError and friends
            raise RobenchError(f"not a valid safetensors checkpoint (truncated or corrupt): {path} ({_first_line(e)})") from None
    _check_container(path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's "Detected pickle protocol ..." noise before our one line
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Weights only load failed" in msg or "Unsupported global" in msg or "not an allowed global" in msg:
            bad = _unsupported_global(msg)
            raise RobenchError(
                f"refused to load {path}: it needs arbitrary code to unpickle{f' ({bad})' if bad else ''}; "
                "if you trust it, load it yourself and save its state dict with safetensors "
                "(safetensors.torch.save_file), then use that file or `robench convert`") from None
        raise RobenchError(f"not a valid checkpoint (truncated or corrupt): {path} ({_first_line(e)})") from None
    except Exception as e:  # RuntimeError, EOFError, BadZipFile, IndexError ("pop from empty list"), ...
        raise RobenchError(f"not a valid checkpoint (truncated or corrupt): {path} ({_first_line(e)})") from None
    return obj, {}


def _check_container(path: Path) -> None:
    """torch.save writes a zip archive (torch >= 1.6) or a pickle of protocol >= 2 (first byte 0x80); anything
    else (a text file named .pt, an HTML error page) is not a checkpoint: said in one line before torch.load."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise RobenchError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    if not head:
        raise RobenchError(f"not a checkpoint: {path} is empty")
    if not (head == b"PK\x03\x04" or head[:1] == b"\x80"):  # zip local header / pickle PROTO >= 2
        raise RobenchError(f"not a checkpoint: {path} is neither a safetensors file nor a torch.save file (zip or "
                           f"pickle); it starts with {head!r}")


def _is_safetensors(path: Path) -> bool:
    # safetensors files start with an 8-byte little-endian header length, then '{'
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        return len(head) == 9 and head[8:9] == b"{"
    except OSError:
        return False


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:160]


def _unsupported_global(msg: str) -> str:
    import re

    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", msg)
    return f"global {m.group(1)}" if m else ""


def extract_state_dict(obj, key: str | None = None, path="checkpoint") -> dict[str, torch.Tensor]:
    """Find the state dict inside a loaded checkpoint object and strip wrapper prefixes."""
    if not isinstance(obj, dict):
        raise RobenchError(f"not a checkpoint: {path} holds a {type(obj).__name__}, not a state dict")
    if key is not None:
        if key not in obj:
            raise RobenchError(f"checkpoint {path} has no entry '{key}' (top-level keys: {', '.join(map(str, list(obj)[:8]))})")
        obj = obj[key]
    elif not _is_state_dict(obj):
        for k in NEST_KEYS:
            if k in obj and isinstance(obj[k], dict) and _is_state_dict(obj[k]):
                obj = obj[k]
                break
    if not isinstance(obj, dict) or not _is_state_dict(obj):
        raise RobenchError(f"not a checkpoint: {path} holds no state dict of tensors "
                           f"(top-level keys: {', '.join(map(str, list(obj)[:8])) if isinstance(obj, dict) else '-'})")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def strip_prefixes(state: dict, prefixes=FIT_PREFIXES) -> list[dict]:
    """`state` and its versions with each leading prefix that ALL keys share removed, in turn
    (`module._orig_mod.x` -> `_orig_mod.x` -> `x`)."""
    out = [state]
    while True:
        cur = out[-1]
        p = next((p for p in prefixes if cur and all(k.startswith(p) for k in cur)), None)
        if p is None:
            return out
        out.append({k[len(p):]: v for k, v in cur.items()})


def fit_keys(state: dict, own_keys) -> dict:
    """The keys as they are when they fit the model; else the prefix-stripped version that fits it best (more of
    the model's keys found), if stripping helps at all."""
    own = set(own_keys)
    best, hit = state, len(own & set(state))
    for cand in strip_prefixes(state)[1:]:
        if len(own & set(cand)) > hit:
            best, hit = cand, len(own & set(cand))
    return best


def find_key(state: dict, key: str):
    """state[key], looking through known wrapper prefixes (to read e.g. the head's shape before building)."""
    return next((c[key] for c in strip_prefixes(state) if key in c), None)


def _is_state_dict(d: dict) -> bool:
    return bool(d) and all(isinstance(k, str) for k in d) and sum(isinstance(v, torch.Tensor) for v in d.values()) >= max(1, len(d) // 2)


def load_state_dict(path, key: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    obj, meta = read_checkpoint(path)
    return extract_state_dict(obj, key=key, path=path), meta


def _few(keys, n=4) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def _variant_hint(keys) -> set[str]:
    return {v for k in keys for p, v in VARIANT_PARAMS.items() if k.endswith(p)}


def load_into(net: nn.Module, state: dict[str, torch.Tensor], info, path="checkpoint") -> None:
    """Strict load with errors that say what is wrong (shapes, missing/unexpected keys, wrong variant). Keys are
    matched as they are, or with a known wrapper prefix stripped when that makes them fit (fit_keys)."""
    own = net.state_dict()
    state = fit_keys(state, own)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    variant = getattr(info, "variant", "?")
    if missing and _variant_hint(missing):
        raise RobenchError(f"checkpoint {path} lacks the parameters of variant '{variant}' ({_few(missing, 2)}): "
                           "it was trained with another attention variant; pick the matching --model")
    if unexpected and _variant_hint(unexpected):
        other = "/".join(sorted(_variant_hint(unexpected)))
        raise RobenchError(f"checkpoint {path} holds parameters of variant '{other}' ({_few(unexpected, 2)}) "
                           f"that model '{info.name}' (variant '{variant}') lacks; pick the matching --model")
    for k, v in state.items():
        if k in own and tuple(own[k].shape) != tuple(v.shape):
            bad = [k2 for k2, v2 in state.items() if k2 in own and tuple(own[k2].shape) != tuple(v2.shape)]
            raise RobenchError(f"checkpoint {path} does not fit model '{info.name}': shape mismatch at {k}: "
                               f"checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                               + (f" ({len(bad)} mismatched keys in all)" if len(bad) > 1 else ""))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_few(unexpected)}")
        raise RobenchError(f"checkpoint {path} does not fit model '{info.name}': " + "; ".join(parts))
    net.load_state_dict(state, strict=True)


def guess_variant(state: dict) -> str:
    hint = _variant_hint(state)
    if "qknorm-hs" in hint:
        return "qknorm-hs"
    if "qknorm-ds" in hint:
        return "qknorm-ds"
    return hint.pop() if len(hint) == 1 else "unknown"
