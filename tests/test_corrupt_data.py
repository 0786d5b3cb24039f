"""Pre-rendered ImageNet-C / CIFAR-10-C readers and the `robench corrupt` command, on tiny synthetic folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from robench.cli import main
from robench.data.corrupted import Cifar10C, ImageNetCFolder
from robench.errors import RobenchError

CLASSES = {"n01440764": 0, "n01443537": 1, "n15075141": 999}


def _imagenet_c(root, corruption="fog", severities=(1, 2), wnids=("n15075141", "n01443537"), size=224):
    rng = np.random.default_rng(0)
    for s in severities:
        for w in wnids:
            d = root / corruption / str(s) / w
            d.mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f"ILSVRC_{w}.png")
    return root


def test_imagenet_c_reads_images_as_they_are(tmp_path):
    root = _imagenet_c(tmp_path)
    ds = ImageNetCFolder(root, "fog", 2, CLASSES)
    assert len(ds) == 2
    x, y, sid = ds[0]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32  # never resized or cropped
    assert (y, sid) == (1, "n01443537/ILSVRC_n01443537.png")  # label from the class list, not folder order
    assert ds[1][1] == 999
    raw = np.array(Image.open(root / "fog" / "2" / "n01443537" / "ILSVRC_n01443537.png"))
    assert torch.equal((x * 255).round().to(torch.uint8), torch.from_numpy(raw).permute(2, 0, 1))


def test_imagenet_c_keeps_other_sizes(tmp_path):
    ds = ImageNetCFolder(_imagenet_c(tmp_path, size=64), "fog", 1, CLASSES)
    assert ds[0][0].shape == (3, 64, 64)


@pytest.mark.parametrize("corruption, severity, wnids, match", [
    ("frost", 1, ("n01443537",), "no 'frost'"),
    ("fgo", 1, ("n01443537",), "did you mean: fog"),
    ("fog", 3, ("n01443537",), "no severity 3"),
    ("fog", 1, ("n99999999",), "not in the class list"),
    ("fog", 6, ("n01443537",), "severity"),
])
def test_imagenet_c_errors(tmp_path, corruption, severity, wnids, match):
    root = _imagenet_c(tmp_path, wnids=wnids)
    with pytest.raises(RobenchError, match=match):
        ImageNetCFolder(root, corruption, severity, CLASSES)


def test_cifar10_c_severity_blocks(tmp_path):
    n = 4
    data = np.zeros((5 * n, 32, 32, 3), dtype=np.uint8)
    for s in range(5):
        data[s * n:(s + 1) * n] = 10 * (s + 1) + np.arange(n)[:, None, None, None]
    np.save(tmp_path / "snow.npy", data)
    np.save(tmp_path / "labels.npy", np.tile(np.arange(n), 5).astype(np.uint8))
    ds = Cifar10C(tmp_path, "snow", 3)
    assert len(ds) == n
    x, y, sid = ds[2]
    assert x.shape == (3, 32, 32) and y == 2 and sid == "test_batch/2"
    assert round(x[0, 0, 0].item() * 255) == 32  # severity 3 block, image 2
    with pytest.raises(RobenchError, match="no 'fog'"):
        Cifar10C(tmp_path, "fog", 1)
    (tmp_path / "labels.npy").unlink()
    with pytest.raises(RobenchError, match="labels.npy"):
        Cifar10C(tmp_path, "snow", 1)


def test_corrupt_command_renders_and_draws_a_grid(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(src / "a.png")
    Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(src / "b.jpg")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(["corrupt", str(src), "--out", str(out), "--corruption", "fog", "--corruption", "contrast",
              "--severity", "1", "--severity", "5", "--grid", str(tmp_path / "grid.png")])
    assert e.value.code == 0
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert files == [f"{c}/{s}/{n}.png" for c in ("contrast", "fog") for s in (1, 5) for n in ("a", "b")]
    assert Image.open(out / "fog" / "5" / "a.png").size == (48, 40)
    assert Image.open(tmp_path / "grid.png").size[0] > 100
    assert "wrote 8 images" in capsys.readouterr().out


@pytest.mark.parametrize("args, match", [
    (["--corruption", "fgo"], "did you mean: fog"),
    (["--severity", "0"], "severity"),
    (["--suite", "imagenet-x"], "unknown corruption suite"),
])
def test_corrupt_command_errors(tmp_path, capsys, args, match):
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(img)
    with pytest.raises(SystemExit) as e:
        main(["corrupt", str(img), "--out", str(tmp_path / "o")] + args)
    assert e.value.code == 2
    assert match in capsys.readouterr().err


def test_corrupt_command_rejects_small_and_unreadable_images(tmp_path, capsys):
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((20, 40, 3), dtype=np.uint8)).save(small)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    for path, match in ((small, "at least 32x32"), (bad, "unreadable image")):
        with pytest.raises(SystemExit):
            main(["corrupt", str(path), "--out", str(tmp_path / "o")])
        assert match in capsys.readouterr().err
