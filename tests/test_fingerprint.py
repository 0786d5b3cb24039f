"""Data fingerprints follow what the samples are, not where they live: replacing a file in place changes them,
moving or copying a dataset does not, and the --limit / --subset selection is part of them."""

from __future__ import annotations

import os
import pickle
import shutil

import numpy as np
import pytest
from PIL import Image

import robench
from robench.data.fingerprint import HASH_ENV
from robench.data.formats import load_clean, load_corrupted
from robench.errors import RobenchError
from robench.run import Store


def cifar(root, seed, n=6):
    rng = np.random.default_rng(seed)
    batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": [i % 10 for i in range(n)]}
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "test_batch", "wb") as f:
        pickle.dump(batch, f, protocol=2)
    return root


def tree(root, n_per_class=2, seed=0):
    rng = np.random.default_rng(seed)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    (root / "classes.txt").write_text("cat\ndog\n")
    return root


def test_cifar_replaced_in_place_changes_fingerprint_moved_keeps_it(tmp_path):
    a = cifar(tmp_path / "a", seed=0)
    fp = load_clean(f"cifar10:{a}").fingerprint
    shutil.copytree(a, tmp_path / "b")
    assert load_clean(f"cifar10:{tmp_path / 'b'}").fingerprint == fp  # same bytes elsewhere: same identity
    cifar(a, seed=1)  # other images, same count, same labels, same path
    assert load_clean(f"cifar10:{a}").fingerprint != fp


def test_cifar_c_npy_and_labels_are_part_of_the_fingerprint(tmp_path):
    n = 3
    imgs = np.random.default_rng(0).integers(0, 256, (5 * n, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "fog.npy", imgs)
    np.save(tmp_path / "labels.npy", np.array([0, 1, 2] * 5))
    fp = load_corrupted(f"cifar10-c:{tmp_path}", "fog", 2).fingerprint
    assert load_corrupted(f"cifar10-c:{tmp_path}", "fog", 3).fingerprint != fp  # severity
    np.save(tmp_path / "labels.npy", np.array([2, 1, 0] * 5))
    fp_labels = load_corrupted(f"cifar10-c:{tmp_path}", "fog", 2).fingerprint
    assert fp_labels != fp
    imgs[n] ^= 1  # one pixel row of severity 2 changed
    np.save(tmp_path / "fog.npy", imgs)
    assert load_corrupted(f"cifar10-c:{tmp_path}", "fog", 2).fingerprint not in (fp, fp_labels)


def test_image_tree_touch_and_replace_change_fingerprint_copy_keeps_it(tmp_path):
    root = tree(tmp_path / "a")
    spec = f"folder:{root}"
    fp = load_clean(spec).fingerprint
    assert load_clean(spec).fingerprint == fp  # stable
    shutil.copytree(root, tmp_path / "b")  # copytree keeps mtimes: the same tree elsewhere
    assert load_clean(f"folder:{tmp_path / 'b'}").fingerprint == fp
    img = root / "dog" / "1.png"
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # touched
    fp_touched = load_clean(spec).fingerprint
    assert fp_touched != fp
    shutil.copy(root / "cat" / "0.png", img)  # replaced by another image
    assert load_clean(spec).fingerprint not in (fp, fp_touched)
    (root / "classes.txt").write_text("dog\ncat\n")  # labels swapped: other samples
    assert load_clean(spec).fingerprint not in (fp, fp_touched)


def test_content_hash_on_request(tmp_path, monkeypatch):
    root = tree(tmp_path / "a")
    shutil.copytree(root, tmp_path / "b", copy_function=shutil.copyfile)  # a copy with new mtimes
    other = f"folder:{tmp_path / 'b'}"
    assert load_clean(f"folder:{root}").fingerprint != load_clean(other).fingerprint  # stat mode sees the mtimes
    fp = load_clean(f"folder:{root}", data_hash="content").fingerprint
    assert load_clean(other, data_hash="content").fingerprint == fp
    monkeypatch.setenv(HASH_ENV, "content")
    assert load_clean(other).fingerprint == fp
    img = tmp_path / "b" / "cat" / "0.png"
    st = img.stat()
    shutil.copy(tmp_path / "b" / "cat" / "1.png", img)
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size? same mtime: only the bytes tell
    assert load_clean(other).fingerprint != fp
    monkeypatch.setenv(HASH_ENV, "md5")
    with pytest.raises(RobenchError, match=f"\\${HASH_ENV} must be one of stat, content"):
        load_clean(other)
    with pytest.raises(RobenchError, match="data hash mode must be one of"):
        load_clean(other, data_hash="fast")


def test_imagenet_c_tree_fingerprint(tmp_path):
    from robench.data.imagenet import imagenet_wnids

    wn = imagenet_wnids()
    rng = np.random.default_rng(0)
    for s in (1, 2):
        d = tmp_path / "c" / "fog" / str(s) / wn[3]
        d.mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
    spec = f"imagenet-c:{tmp_path / 'c'}"
    fp = load_corrupted(spec, "fog", 1).fingerprint
    assert load_corrupted(spec, "fog", 2).fingerprint != fp
    shutil.move(tmp_path / "c", tmp_path / "moved")
    assert load_corrupted(f"imagenet-c:{tmp_path / 'moved'}", "fog", 1).fingerprint == fp  # moved: same
    img = tmp_path / "moved" / "fog" / "1" / wn[3] / "0.png"
    img.write_bytes(img.read_bytes() + b"\0")  # appended to: size and mtime change
    assert load_corrupted(f"imagenet-c:{tmp_path / 'moved'}", "fog", 1).fingerprint != fp


def test_selection_is_part_of_the_fingerprint(tmp_path):
    root = cifar(tmp_path / "a", seed=0, n=10)
    spec = f"cifar10:{root}"
    full = load_clean(spec).fingerprint
    l4 = load_clean(spec, limit=4).fingerprint
    assert len({full, l4, load_clean(spec, limit=5).fingerprint, load_clean(spec, limit=4, seed=1).fingerprint}) == 4
    sub = tmp_path / "subset.txt"
    sub.write_text("test_batch/1\ntest_batch/2\n")
    s12 = load_clean(spec, subset=sub).fingerprint
    sub.write_text("test_batch/1\ntest_batch/3\n")
    assert s12 not in (full, l4, load_clean(spec, subset=sub).fingerprint)


def test_replaced_cifar_is_recomputed_not_reused(tmp_path):
    """The store reuses a cell only for the same samples: replacing test_batch in place (same count) recomputes."""
    from torch import nn

    class Mean(nn.Module):  # predicts from the image: different images, different predictions
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch_linspace())

        def forward(self, x):
            return x.flatten(1).mean(1, keepdim=True) * self.w

    root = cifar(tmp_path / "a", seed=0, n=8)
    out = tmp_path / "store"
    first = robench.evaluate(Mean(), f"cifar10:{root}", label="m", device="cpu", out=out)
    cifar(root, seed=5, n=8)
    second = robench.evaluate(Mean(), f"cifar10:{root}", label="m", device="cpu", out=out)
    assert first.cell_id.iloc[0] != second.cell_id.iloc[0]  # a new cell, not the old one reused
    assert len(Store(out).results()) == 2


def torch_linspace():
    import torch

    return torch.linspace(-5, 5, 10)
