"""Data content fingerprints: what the samples ARE, never where they live (no absolute path enters them).

- Single-file formats (CIFAR pickles, CIFAR-C `.npy` and `labels.npy`): the sha256 of the file's bytes.
- Image trees (imagenet, imagenet-c/-a/-r/-sketch/-v2, folder): every evaluated file's relative path and label,
  with its size and modification time in nanoseconds (hash mode "stat", the default: a 50 000-image tree costs a
  fraction of a second, see benchmarks/fingerprint.py), or the sha256 of its bytes (hash mode "content": moving or
  copying a tree without keeping mtimes keeps its identity; every image is read once).

The hash mode comes from the data spec (`DataSpec.hash`, e.g. `load_clean(..., data_hash="content")`), else from
the environment variable ROBENCH_DATA_HASH (`stat` or `content`), else "stat".

File digests are cached in memory for the life of the process, keyed by (absolute path, size, mtime_ns, ctime_ns,
inode): a run (one process) reads each file at most once, however many corruptions, severities or cells use it,
and a file replaced or rewritten in place gets a new key (ctime changes on every write, even when mtime is set back). (No on-disk cache: nothing is written outside the store, and a cold
content hash of ImageNet val is seconds, not minutes.)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from robench.errors import RobenchError

HASH_MODES = ("stat", "content")
HASH_ENV = "ROBENCH_DATA_HASH"
_CHUNK = 1 << 20

_digests: dict[tuple, str] = {}


def hash_mode(mode: str | None = None) -> str:
    """The hash mode for image trees: `mode` if given, else $ROBENCH_DATA_HASH, else "stat"."""
    where = "data hash mode"
    if mode is None:
        mode, where = os.environ.get(HASH_ENV) or "stat", f"${HASH_ENV}"
    if mode not in HASH_MODES:
        raise RobenchError(f"{where} must be one of {', '.join(HASH_MODES)}, got {mode!r}")
    return mode


def _key(path: Path, st: os.stat_result) -> tuple:
    return (str(path.absolute()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def file_digest(path) -> str:
    """sha256 of the file's bytes (hex), cached by (absolute path, size, mtime_ns, ctime_ns, inode)."""
    path = Path(path)
    try:
        st = path.stat()
        key = _key(path, st)
        if key not in _digests:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
            _digests[key] = h.hexdigest()
    except OSError as e:
        raise RobenchError(f"cannot read {path} ({type(e).__name__}: {e.strerror or e})") from None
    return _digests[key]


def _file_token(path: Path, mode: str) -> str:
    try:
        if mode == "content":
            return file_digest(path)
        st = path.stat()
        return f"{st.st_size}:{st.st_mtime_ns}"
    except (OSError, RobenchError):
        return "unreadable"  # gone or unreadable: the sweep skips it; its state is still part of the identity


def tree_digest(root, items, mode: str | None = None) -> str:
    """Digest of the files root/<rel> of items [(rel, label), ...]: relative path, label and, per the hash mode,
    size + mtime_ns ("stat") or the sha256 of the bytes ("content"). Independent of where root is."""
    mode = hash_mode(mode)
    root = Path(root)
    h = hashlib.sha256(mode.encode())
    for rel, label in items:
        h.update(f"\n{rel}\t{label}\t{_file_token(root / rel, mode)}".encode())
    return f"{mode}:{h.hexdigest()}"
