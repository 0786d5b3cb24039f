"""Output paths checked before any work: every `--out`, `--grid`, `--summary`... must be creatable and writable.

Nothing is created here: a check that fails leaves the file system as it was, and one that passes guarantees
that the command can later make the directories it needs and write the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from robench.errors import RobenchError


def _existing_ancestor(path: Path, what: str, shown) -> Path:
    """The nearest existing ancestor of path; an error when a component on the way is a regular file."""
    p = path.absolute()
    for parent in [p, *p.parents]:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                if parent == p:
                    return parent
                raise RobenchError(f"{what} {shown} is not writable: {parent} is a file, not a directory")
            return parent
    return Path(p.anchor)


def check_dir(path, what: str = "output directory", _shown=None) -> Path:
    """A directory that exists and is writable, or that can be created (its nearest existing ancestor is a
    writable directory)."""
    path = Path(path)
    shown = path if _shown is None else _shown
    base = _existing_ancestor(path, what, shown)
    if base == path.absolute() and not base.is_dir():
        raise RobenchError(f"{what} {shown} is not writable: {path} is a file, not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise RobenchError(f"{what} {shown} is not writable ({base} is read-only)")
    return path


def check_file(path, what: str = "output file", overwrite: bool = True) -> Path:
    """A file that can be written: not a directory, its directory creatable and writable; when overwrite is
    False, an existing file is an error that names --force."""
    path = Path(path)
    if path.is_dir():
        raise RobenchError(f"{what} {path} is a directory, not a file")
    if path.exists():
        if not overwrite:
            raise RobenchError(f"{what} {path} already exists (use --force to overwrite it)")
        if not os.access(path, os.W_OK):
            raise RobenchError(f"{what} {path} is not writable")
    check_dir(path.parent, what, _shown=path)
    return path
