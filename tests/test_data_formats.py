"""Every data format reads its released on-disk layout (tiny fixtures built here): labels, counts, class masks of
the 200-class ImageNet subsets, the leaderboard columns of the companion sets."""

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import robench
from robench.data.formats import FORMATS, load_clean, load_corrupted, parse_data
from robench.data.imagenet import imagenet_wnids
from robench.errors import RobenchError
from robench.run import Store

# the first ImageNet-1k indices of each subset, as published in the datasets' evaluation code
# (natural-adv-examples eval.py thousand_k_to_200: 6->0, 11->1, 13->2, ...; imagenet-r eval.py imagenet_r_mask)
IMAGENET_A_FIRST = [6, 11, 13, 15, 17, 22, 23]
IMAGENET_R_FIRST = [1, 2, 4, 6, 8, 9]


def images(folder, n, size=(40, 48), ext="JPEG", seed=0):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"{i}.{ext}")


def labels_of(data):
    return [data.dataset[i][1] for i in range(len(data))]


class Const(nn.Module):
    """Fixed logits whatever the image (one parameter, so it has a device)."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", torch.as_tensor(logits, dtype=torch.float32))
        self.p = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.logits.expand(len(x), -1) + 0 * x.mean() + 0 * self.p


@pytest.mark.parametrize("fmt, first", [("imagenet-a", IMAGENET_A_FIRST), ("imagenet-r", IMAGENET_R_FIRST)])
def test_imagenet_200_class_subsets(tmp_path, fmt, first):
    spec = parse_data(f"{fmt}:{tmp_path / fmt}")
    mask = spec.format.class_mask()
    assert len(mask) == len(set(mask)) == 200 and mask[:len(first)] == first
    assert mask == sorted(mask)  # label order = ImageNet-1k order, as the authors' sorted folders
    wn = imagenet_wnids()
    for label in (0, 3, 199):
        images(tmp_path / fmt / wn[mask[label]], 2, ext="jpg", seed=label)
    (tmp_path / fmt / "README.txt").write_text("release notes")  # the release has one; not a class
    for root in (tmp_path, tmp_path / fmt):  # the dataset folder, or the one above it
        data = load_clean(f"{fmt}:{root}")
        assert labels_of(data) == [0, 0, 3, 3, 199, 199]
        assert data.num_classes == 200 and data.model_classes == 1000 and data.class_mask == mask
        assert data.name == fmt and data.sample_ids[0] == f"{wn[mask[0]]}/0.jpg"
    images(tmp_path / fmt / wn[0], 1)  # tench is in neither subset
    with pytest.raises(RobenchError, match=f"{fmt} class folder.* not in the class list: {wn[0]}"):
        load_clean(f"{fmt}:{tmp_path / fmt}")


def test_subset_logits_restricted_and_leaderboard_columns(tmp_path):
    """A model that prefers tench (not in ImageNet-A) over A's class 3 predicts class 3 on ImageNet-A, as the
    authors evaluate (logits[:, indices_in_1k]); the ImageNet-A accuracy joins the ImageNet row."""
    wn = imagenet_wnids()
    mask = FORMATS["imagenet-a"].class_mask()
    for label in (0, 3, 199):
        images(tmp_path / "a" / wn[mask[label]], 2, seed=label)
    images(tmp_path / "val" / wn[0], 3)
    images(tmp_path / "val" / wn[7], 1)
    logits = torch.zeros(1000)
    logits[0], logits[mask[3]] = 10.0, 5.0
    model = Const(logits)
    out = tmp_path / "store"
    a = robench.evaluate(model, f"imagenet-a:{tmp_path / 'a'}", label="const", device="cpu", out=out)
    assert a.value.iloc[0] == pytest.approx(2 / 6) and a.dataset.iloc[0] == "imagenet-a"
    assert Store(out).outcomes(int(a.cell_id.iloc[0]))["pred"].tolist() == [3] * 6  # 200-class label space
    clean = robench.evaluate(model, f"imagenet:{tmp_path / 'val'}", label="const", device="cpu", out=out)
    assert clean.value.iloc[0] == pytest.approx(3 / 4)
    board = robench.leaderboard(out)
    assert len(board) == 1 and board.loc[0, "dataset"] == "imagenet"
    assert board.loc[0, "clean_acc"] == pytest.approx(3 / 4)
    assert board.loc[0, "imagenet_a_acc"] == pytest.approx(2 / 6)
    assert list(board.columns).index("imagenet_a_acc") == list(board.columns).index("clean_acc") + 1


def test_imagenet_v2_numeric_folders_and_sketch(tmp_path):
    for c in (0, 5, 999):
        images(tmp_path / "v2" / str(c), 1, ext="jpeg", seed=c)
    data = load_clean(f"imagenet-v2:{tmp_path / 'v2'}")
    assert sorted(labels_of(data)) == [0, 5, 999] and data.num_classes == 1000 and data.class_mask is None
    assert {data.sample_ids[i]: labels_of(data)[i] for i in range(3)}["999/0.jpeg"] == 999
    wn = imagenet_wnids()
    images(tmp_path / "sk" / "sketch" / wn[42], 2)
    images(tmp_path / "sk" / "sketch" / wn[900], 1)
    for root in (tmp_path / "sk", tmp_path / "sk" / "sketch"):
        data = load_clean(f"imagenet-sketch:{root}")
        assert labels_of(data) == [42, 42, 900] and data.name == "imagenet-sketch"
        x = data.dataset[0][0]
        assert x.shape == (3, 224, 224) and 0 <= x.min() and x.max() <= 1


def write_pickle(path, obj, protocol=2):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


@pytest.mark.parametrize("fmt, folder, file, key, n_classes", [
    ("cifar10", "cifar-10-batches-py", "test_batch", b"labels", 10),
    ("cifar100", "cifar-100-python", "test", b"fine_labels", 100)])
def test_cifar_python_pickles(tmp_path, fmt, folder, file, key, n_classes):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (5, 3072), dtype=np.uint8)
    labels = [0, n_classes - 1, 3, 7, 1]
    batch = {b"data": x, key: labels, b"filenames": [b"a.png"] * 5}
    if fmt == "cifar100":
        batch[b"coarse_labels"] = [19, 0, 1, 2, 3]  # not the label robench reads
    write_pickle(tmp_path / folder / file, batch)
    for root in (tmp_path, tmp_path / folder):
        data = load_clean(f"{fmt}:{root}")
        assert labels_of(data) == labels and data.num_classes == n_classes and data.name == fmt
        assert torch.equal(data.dataset[1][0], torch.from_numpy(x[1].reshape(3, 32, 32)).float() / 255)
        assert data.sample_ids[4] == f"{file}/4"
    write_pickle(tmp_path / "p4" / folder / file, batch, protocol=4)  # re-saved with Python 3: read as well
    assert labels_of(load_clean(f"{fmt}:{tmp_path / 'p4'}")) == labels


def test_cifar_pickle_never_runs_code(tmp_path):
    flag = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {flag}",)

    write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", {b"data": Evil(), b"labels": [0]})
    with pytest.raises(RobenchError, match="not a cifar10 python batch.*refused global"):
        load_clean(f"cifar10:{tmp_path}")
    assert not flag.exists()


@pytest.mark.parametrize("fmt, clean, id_prefix, n_classes", [("cifar10-c", "cifar10", "test_batch", 10),
                                                               ("cifar100-c", "cifar100", "test", 100)])
def test_cifar_c_npy(tmp_path, fmt, clean, id_prefix, n_classes):
    n = 4
    imgs = np.stack([np.full((32, 32, 3), 10 * s + i, np.uint8) for s in range(5) for i in range(n)])
    np.save(tmp_path / "snow.npy", imgs)
    labels = np.array([[(s + i) % n_classes for i in range(n)] for s in range(5)]).reshape(-1)
    np.save(tmp_path / "labels.npy", labels)
    data = load_corrupted(f"{fmt}:{tmp_path}", "snow", 3)
    assert len(data) == n and data.name == clean and data.num_classes == n_classes
    assert labels_of(data) == [(2 + i) % n_classes for i in range(n)]
    assert data.dataset[1][0][0, 0, 0].item() == pytest.approx(21 / 255)  # severity 3 = rows 2n..3n
    assert data.sample_ids == [f"{id_prefix}/{i}" for i in range(n)]  # pairs with the clean set's ids
    # through the engine: pre-rendered cells under the clean set's name
    logits = torch.zeros(n_classes)
    logits[3] = 1.0
    df = robench.evaluate(Const(logits), f"{fmt}:{tmp_path}", corruption_names=["snow"], severities=[3],
                          device="cpu")
    assert list(df.threat) == ["corruption"] and df.dataset.iloc[0] == clean
    assert df.value.iloc[0] == pytest.approx(sum((2 + i) % n_classes == 3 for i in range(n)) / n)
    with pytest.raises(RobenchError, match="pre-rendered corruption set"):
        load_clean(f"{fmt}:{tmp_path}")


def test_spec_errors():
    with pytest.raises(RobenchError, match="unknown data spec 'imagenet-skech:/x' \\(did you mean: imagenet-sketch"):
        parse_data("imagenet-skech:/x")
    with pytest.raises(RobenchError, match=r"'imagenet-v2' needs a directory: imagenet-v2:DIR"):
        parse_data("imagenet-v2")
    assert parse_data("digits").format.name == "digits"
    for fmt in FORMATS.values():  # every format says how to write it and how many classes it has
        assert fmt.syntax.startswith(fmt.name) and (fmt.num_classes > 0 or fmt.name == "folder")


# ---- hostile inputs (issue 21): one line, exit 2, nothing written; or skipped and counted ---------------------------
def bomb_png(path, side=20000):
    """A tiny PNG claiming side x side pixels (> 2x PIL's MAX_IMAGE_PIXELS): PIL raises DecompressionBombError."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def cifar_c_dir(root, labels):
    root.mkdir(parents=True)
    np.save(root / "fog.npy", np.zeros((5 * 4, 32, 32, 3), np.uint8))
    np.save(root / "labels.npy", np.asarray(labels))
    return root


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    cifar_c_dir(d / "c99", [0, 1, 2, 99])
    cifar_c_dir(d / "cneg", [0, -1, 2, 3])
    cifar_c_dir(d / "c2d", [[0, 1], [2, 3]])
    cifar_c_dir(d / "cfloat", [0.5, 1, 2, 3])
    images(d / "latin" / "0", 1, size=(32, 32), ext="png")
    (d / "latin" / "classes.txt").write_bytes("caf\xe9\n0\n".encode("latin-1"))
    (d / "subset.txt").write_bytes("digits/test/\xe9\n".encode("latin-1"))
    images(d / "bombs" / "0", 1, size=(32, 32), ext="png")
    bomb_png(d / "bombs" / "0" / "bomb.png")
    (d / "bombs" / "classes.txt").write_text("\n".join(str(i) for i in range(10)) + "\n")
    bomb_png(d / "bomb.png")
    for name, sev in [("words", '["a", "b", "c", "d", "e"]'), ("four", "[0.1, 0.2, 0.3, 0.4]"),
                      ("shape", "[0.1, 0.2, 0.3, 0.4, 0.5]"), ("mixed", "[[1, 2], 0.5, [1, 2], [1, 2], [1, 2]]")]:
        (d / f"{name}.toml").write_text(f'name = "{name}"\nparams = "cifar"\n[corruptions.fog]\nseverity = {sev}\n')
    (d / "shadow.toml").write_text('name = "cifar10-c"\nparams = "cifar"\n[corruptions.gaussian_noise]\n'
                                   'severity = [3.0, 3.0, 3.0, 3.0, 3.0]\n')
    return d


def _snapshot(root):
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


EVAL = ["eval", "-m", "demo-standard", "--out", "{d}/out", "-q"]
HOSTILE = [
    (["-d", "cifar10-c:{d}/c99", "--corruption", "fog"], r"labels.npy has label 99: labels must be in 0..9"),
    (["-d", "cifar10-c:{d}/cneg", "--corruption", "fog"], r"labels.npy has label -1: labels must be in 0..9"),
    (["-d", "cifar10-c:{d}/c2d", "--corruption", "fog"], r"labels.npy must hold one integer label per image \(1-D\)"),
    (["-d", "cifar10-c:{d}/cfloat", "--corruption", "fog"], r"labels.npy must hold one integer label per image"),
    (["-d", "folder:{d}/latin"], r"cannot read class list .*classes.txt \(UnicodeDecodeError: .*UTF-8"),
    (["-d", "digits", "--subset", "{d}/subset.txt"], r"cannot read subset file .*subset.txt .*UTF-8"),
    (["-d", "folder:{d}/bombs", "--strict"], r"unreadable image .*bomb.png \(DecompressionBombError\)"),
    (["-d", "digits", "--corruptions", "{d}/words.toml"],
     r"corruption suite .*words.toml: corruptions.fog.severity must hold 5 numbers or 5 lists"),
    (["-d", "digits", "--corruptions", "{d}/four.toml"],
     r"corruption suite .*four.toml: corruptions.fog.severity must list 5 values"),
    (["-d", "digits", "--corruptions", "{d}/shape.toml"],
     r"corruption suite .*shape.toml: corruptions.fog.severity values must each be a list of 2 numbers"),
    (["-d", "digits", "--corruptions", "{d}/mixed.toml"], r"mixed.toml: corruptions.fog.severity must hold 5 numbers"),
    (["-d", "digits", "--corruptions", "{d}/shadow.toml"],
     r"shadow.toml is named 'cifar10-c' like a shipped suite but has other values"),
]


@pytest.mark.parametrize("args, msg", HOSTILE)
def test_hostile_data_one_line_exit_2_nothing_written(hostile, run_cli, args, msg):
    import re

    before = _snapshot(hostile)
    code, out, err = run_cli(*[a.format(d=hostile) for a in EVAL + args])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("robench: error: "), (code, out, err)
    assert re.search(msg, lines[0]), (msg, lines[0])
    assert "Traceback" not in out + err and _snapshot(hostile) == before


def test_decompression_bomb_is_skipped_and_counted_in_eval(hostile, tmp_path, run_cli):
    code, out, err = run_cli("eval", "-m", "demo-standard", "-d", f"folder:{hostile / 'bombs'}", "--out",
                             tmp_path / "res", "-q")
    assert code == 0, err
    assert "Traceback" not in err and "skipping unreadable images" in err and "bomb.png" in err
    res = Store(tmp_path / "res").results()
    clean = res[res.threat == "clean"].iloc[0]
    assert (clean.n, clean.skipped) == (1, 1)  # one image evaluated, the bomb skipped and counted


def test_decompression_bomb_in_robench_corrupt(hostile, tmp_path, run_cli):
    code, out, err = run_cli("corrupt", hostile / "bomb.png", "--out", tmp_path / "o", "--corruption", "fog")
    assert code == 2 and err.strip().count("\n") == 0 and "DecompressionBombError" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_truncated_jpeg_in_imagenet_c_is_skipped_and_counted(tmp_path):
    wn = imagenet_wnids()
    folder = tmp_path / "c" / "fog" / "1" / wn[5]
    images(folder, 3, size=(32, 32))
    data = (folder / "2.JPEG").read_bytes()
    (folder / "2.JPEG").write_bytes(data[:len(data) // 2])  # truncated
    d = load_corrupted(f"imagenet-c:{tmp_path / 'c'}", "fog", 1)
    x, y, _ = d.dataset[2]
    assert y == -1 and x.shape == (3, 32, 32)  # placeholder of the set's size, label -1: skipped and counted
    assert d.dataset[0][1] == 5
    with pytest.raises(RobenchError, match=r"unreadable image .*2.JPEG"):
        load_corrupted(f"imagenet-c:{tmp_path / 'c'}", "fog", 1, strict=True).dataset[2]
    logits = torch.zeros(1000)
    logits[5] = 1.0
    df = robench.evaluate(Const(logits), f"imagenet-c:{tmp_path / 'c'}", corruption_names=["fog"], severities=[1],
                          device="cpu")
    assert df.value.iloc[0] == pytest.approx(1.0) and int(df.skipped.iloc[0]) == 1
