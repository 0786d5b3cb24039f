"""Output paths checked before any work, and the one place output files are written.

check_dir / check_file: every `--out`, `--grid`, `--summary`... must be creatable and writable. The check creates
and removes a probe file in the nearest existing directory (os.access alone says yes to root under /proc or on a
read-only mount) and restores that directory's times: a check that fails leaves the file system as it was.
write_file / write_text / make_dir / atomic_write: the writes themselves; an OS error becomes one RobenchError line
(atomic_write: a temporary file beside the target, then one rename, so readers never see half a file).
"""

from __future__ import annotations

import os
import time
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
    try:
        probe_dir(base)
    except RobenchError as e:
        raise RobenchError(f"{what} {shown} is not writable ({e})") from None
    return path


def probe_dir(directory) -> Path:
    """Create and remove a probe file in an existing directory (restoring its access and modification times);
    RobenchError when that fails."""
    directory = Path(directory)
    try:
        st = directory.stat()
        probe = directory / f".robench-write-test-{os.getpid()}-{time.time_ns()}"
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
        os.unlink(probe)
        os.utime(directory, ns=(st.st_atime_ns, st.st_mtime_ns))
    except OSError as e:
        raise RobenchError(f"cannot create a file in {directory}: {e.strerror or e}") from None
    return directory


def make_dir(path, what: str = "output directory") -> Path:
    """mkdir -p, an OS error as one line."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RobenchError(f"cannot create {what} {path}: {e.strerror or e}") from None
    return path


def write_file(path, write, what: str = "output file", append: bool = False) -> Path:
    """Write path all at once: `write(tmp)` fills path.tmp beside it, which then replaces path (readers never see
    a half-written file; a failed write leaves the old one and no tmp file). append=True: `write(path)` appends in
    place. Any OS error is one RobenchError line naming the file."""
    path = Path(path)
    make_dir(path.parent, f"directory of {what}")
    tmp = path if append else path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        if not append:
            os.replace(tmp, path)
    except OSError as e:
        if not append:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise RobenchError(f"cannot write {what} {path}: {e.strerror or e}") from None
    return path


def write_text(path, text: str, what: str = "output file", append: bool = False) -> Path:
    """write_file for text (UTF-8)."""
    def put(p):
        with open(p, "a" if append else "w", encoding="utf-8") as f:
            f.write(text)

    return write_file(path, put, what, append)


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


def atomic_write(path, write) -> Path:
    """Write a file all at once: `write(tmp)` fills path.tmp beside it, which then replaces path (readers never see
    a half-written file; a failed write leaves the old one). An OS error is one RobenchError line naming the file
    (as robench.paths.write_file, which the commands use; this one serves the layers below paths)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        tmp.replace(path)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise RobenchError(f"cannot write {path}: {e.strerror or e}") from None
    return path
