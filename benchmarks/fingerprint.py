"""Time the data fingerprint of a large image tree: cold (first in the process) and warm (again, same process), in
both hash modes ("stat": relative path, label, size, mtime_ns of every file; "content": sha256 of every file).

    python benchmarks/fingerprint.py [--files 50000] [--size 2048]

Generates N small files (default 50 000 of 2 KiB, ~100 MB, in 100 class folders) in a temporary directory, then
calls what `load_clean("folder:DIR")` calls. The OS page cache is warm for every timing after the generation
(a truly cold disk adds its read time to the content mode only).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robench.data import fingerprint as fpmod  # noqa: E402
from robench.data.imagenet import scan_class_folders  # noqa: E402


def make_tree(root: Path, n: int, size: int, classes: int = 100) -> dict:
    index = {}
    for c in range(classes):
        (root / f"c{c:03d}").mkdir()
        index[f"c{c:03d}"] = c
    for i in range(n):
        (root / f"c{i % classes:03d}" / f"{i:06d}.png").write_bytes(os.urandom(size))
    (root / "classes.txt").write_text("\n".join(index) + "\n")
    return index


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=50_000)
    ap.add_argument("--size", type=int, default=2048)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        t_make, index = timed(lambda: make_tree(root, a.files, a.size))
        print(f"generated {a.files} files of {a.size} B in {t_make:.1f} s")
        t_scan, items = timed(lambda: scan_class_folders(root, index, "folder"))
        print(f"scan (listing, as every load does):   {t_scan:6.2f} s")
        for mode in ("stat", "content"):
            fpmod._digests.clear()
            cold, fp = timed(lambda: fpmod.tree_digest(root, items, mode))
            warm, fp2 = timed(lambda: fpmod.tree_digest(root, items, mode))
            assert fp == fp2
            print(f"fingerprint {mode:7s}  cold {cold:6.2f} s   warm {warm:6.2f} s")


if __name__ == "__main__":
    main()
