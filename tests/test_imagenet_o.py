"""ImageNet-O detection (issue 24.3): a constructed release (200 wnid folders, a few generated images) paired with an
ImageNet val fixture gives the AUPR that scikit-learn's average_precision_score gives on the same anomaly scores
(-max softmax over the 200 classes, ImageNet-O positive); bad layouts and a missing pairing are one-line errors,
exit 2, nothing written."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import robench
from robench.data.formats import FORMATS, load_clean, parse_data
from robench.data.imagenet import imagenet_wnids
from robench.data.imagenet_o import is_ood
from robench.errors import RobenchError

O_WNIDS = FORMATS["imagenet-o"].class_mask


def images(folder, n, seed):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (36, 44, 3), dtype=np.uint8)).save(folder / f"{seed}_{i}.jpg")


def fixture(tmp_path, o_labels=(0, 5, 17, 199), val_labels=(0, 3, 5, 150, 199)):
    wn, mask = imagenet_wnids(), O_WNIDS()
    for i, m in enumerate(mask):
        (tmp_path / "o" / wn[m]).mkdir(parents=True)
        (tmp_path / "val" / wn[m]).mkdir(parents=True)
    (tmp_path / "val" / wn[0]).mkdir()  # a val class that is not one of the 200: never read
    images(tmp_path / "val" / wn[0], 2, seed=999)
    for k, label in enumerate(o_labels):
        images(tmp_path / "o" / wn[mask[label]], 2, seed=k)
    for k, label in enumerate(val_labels):
        images(tmp_path / "val" / wn[mask[label]], 3, seed=100 + k)
    return f"imagenet-o:{tmp_path / 'o'}+imagenet:{tmp_path / 'val'}"


class Brightness(nn.Module):
    """1000 logits that depend on the image (its channel means), so confidences differ per image."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(3, 1000, generator=g) * 8)
        self.b = nn.Parameter(torch.randn(1000, generator=g))

    def forward(self, x):
        return x.mean(dim=(2, 3)) @ self.w + self.b


def test_wnid_list_is_200_imagenet_classes():
    mask = O_WNIDS()
    assert len(mask) == len(set(mask)) == 200 and mask == sorted(mask)
    assert imagenet_wnids()[mask[0]] == "n01443537"  # goldfish: the release's first folder


def test_paired_data_and_aupr_equal_sklearn(tmp_path):
    skm = pytest.importorskip("sklearn.metrics")
    spec = fixture(tmp_path)
    data = load_clean(spec)
    ood = np.array(is_ood(data.sample_ids))
    assert ood.sum() == 8 and (~ood).sum() == 15 and ood[:8].all()  # ImageNet-O first, then val of the 200 classes
    assert data.num_classes == 200 and data.model_classes == 1000 and data.class_mask == O_WNIDS()
    model = Brightness()
    out = tmp_path / "store"
    res = robench.evaluate(model, spec, label="b", device="cpu", out=out)
    assert res.dataset.iloc[0] == "imagenet-o"
    # the oracle: the model's logits restricted to the 200 classes, max softmax, sklearn AP with OOD positive
    x = torch.stack([data.dataset[i][0] for i in range(len(data))])
    with torch.no_grad():
        msp = torch.softmax(model(x)[:, data.class_mask].double(), 1).max(1).values.numpy()
    want = skm.average_precision_score(ood.astype(int), -msp)
    board = robench.leaderboard(out)
    assert board.loc[0, "imagenet_o_aupr"] == pytest.approx(want, abs=1e-6)
    assert 0 < want < 1 and not any(c.startswith("imagenet_o_acc") for c in board.columns)


def test_bad_layouts_are_one_line_errors(tmp_path):
    with pytest.raises(RobenchError, match="needs its in-distribution pairing"):
        parse_data(f"imagenet-o:{tmp_path}")
    spec = fixture(tmp_path)
    wn, mask = imagenet_wnids(), O_WNIDS()
    (tmp_path / "o" / wn[mask[42]]).rename(tmp_path / "o_removed")
    with pytest.raises(RobenchError, match="1 of its 200 wnid folders missing"):
        load_clean(spec)
    (tmp_path / "o_removed").rename(tmp_path / "o" / wn[mask[42]])
    (tmp_path / "val" / wn[mask[7]]).rmdir()
    with pytest.raises(RobenchError, match="lacks 1 of the 200 ImageNet-O classes"):
        load_clean(spec)


@pytest.mark.parametrize("case", ["no_pairing", "no_folders"])
def test_cli_exit_2_and_nothing_written(tmp_path, case):
    (tmp_path / "o" / "n01443537").mkdir(parents=True)
    (tmp_path / "val").mkdir()
    data = f"imagenet-o:{tmp_path / 'o'}" + ("" if case == "no_pairing" else f"+imagenet:{tmp_path / 'val'}")
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "robench", "eval", "--model", "demo-standard", "--data", data,
                        "--out", str(out)], capture_output=True, text=True)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert ("in-distribution pairing" if case == "no_pairing" else "200-wnid folder") in p.stderr
    assert not out.exists()
