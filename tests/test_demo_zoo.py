"""The demo zoo: digits data (fixed stratified split), shipped demo-<variant> checkpoints, deterministic training."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from robench.data.digits import NUM_TEST, NUM_TRAIN, digits_dataset, digits_tensors, split_indices
from robench.data.digits import test_indices as recorded_test_indices
from robench.errors import RobenchError
from robench.zoo.demo import DEMO_VARIANTS, demo_checkpoint, demo_model_names
from robench.zoo.checkpoint import load_state_dict
from robench.zoo.registry import create_model, model_info, model_names


def test_split_is_fixed_stratified_and_disjoint():
    from sklearn.datasets import load_digits

    y = load_digits().target
    train, test = split_indices("train"), split_indices("test")
    assert (len(train), len(test)) == (NUM_TRAIN, NUM_TEST) == (1257, 540)
    assert not set(train) & set(test) and sorted(train + test) == list(range(1797))
    per_class, test_per_class = np.bincount(y), np.bincount(y[test], minlength=10)
    assert np.all(np.abs(test_per_class - 0.3 * per_class) <= 1)  # stratified: 30% of every class
    # the recorded split is the one sklearn made (provenance); the file, not sklearn, is what robench reads
    from sklearn.model_selection import train_test_split

    _, te = train_test_split(np.arange(len(y)), test_size=0.3, stratify=y, random_state=0)
    assert sorted(te.tolist()) == list(recorded_test_indices())


def test_digits_tensors_and_dataset():
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y, ids = digits_tensors("test")
    assert x.shape == (540, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.9
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    idx = [int(s.split("/")[-1]) for s in ids]
    assert idx == split_indices("test") and all(s.startswith("digits/test/") for s in ids)
    assert torch.equal(y, torch.as_tensor(d.target[idx]))
    # the 32x32 image is the 8x8 scan (÷16) upsampled: 4x4 average pooling gives a slightly blurred scan back
    small = F.avg_pool2d(x[:, :1], 4)[:, 0].flatten()
    orig = torch.as_tensor(d.images[idx] / 16.0, dtype=torch.float32).flatten()
    assert torch.corrcoef(torch.stack([small, orig]))[0, 1] > 0.95 and abs(small.mean() - orig.mean()) < 0.01
    x[0] += 1  # copies: the cache is not modified
    assert digits_tensors("test")[0].max() <= 1

    ds = digits_dataset("train")
    assert len(ds) == 1257 and ds.num_classes == 10 and list(ds.class_names) == [str(i) for i in range(10)]
    xi, yi, sid = ds[0]
    assert xi.shape == (3, 32, 32) and isinstance(yi, int) and sid == "digits/train/0000"
    all_ids = digits_dataset("all").ids
    assert len(all_ids) == 1797 and all_ids[10] == "digits/test/0010"  # ids name the sample's own split
    with pytest.raises(RobenchError, match="unknown digits split"):
        digits_tensors("val")


def test_demo_models_are_registered():
    names = model_names()
    assert set(demo_model_names()) <= set(names)
    for v in ("standard", "quest", "qnorm", "qknorm", "elliptical", "elliptical-quest"):
        info = model_info(f"demo-{v}")
        assert info.variant == v and info.input_size == (3, 32, 32) and info.num_classes == 10


@pytest.mark.parametrize("variant", DEMO_VARIANTS)
def test_shipped_checkpoint_loads_and_is_accurate(variant):
    path = demo_checkpoint(variant)
    assert path.is_file() and path.stat().st_size < 2_000_000
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["variant"] == variant and meta["model"] == f"demo-{variant}" and meta["num_classes"] == "10"
    model = create_model(f"demo-{variant}")  # loads the shipped weights by itself
    assert model.info.params < 500_000
    x, y, _ = digits_tensors("test")
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc >= 0.90
    assert abs(acc - float(meta["test_acc"])) < 1e-3  # the recorded accuracy is what it scores


def test_checkpoint_of_another_variant_is_refused():
    with pytest.raises(RobenchError, match="variant"):
        create_model("demo-standard", checkpoint=demo_checkpoint("quest"))


def test_short_training_is_deterministic(tmp_path):
    from robench.zoo.train_demo import train_demo

    kw = dict(variants=["elliptical-quest", "qknorm-ds"], epochs=1, train_subset=96)
    acc1 = train_demo(out_dir=tmp_path / "a", **kw)
    acc2 = train_demo(out_dir=tmp_path / "b", **kw)
    assert acc1 == acc2 and set(acc1) == {"elliptical-quest", "qknorm-ds"}
    for v in acc1:
        a, b = (tmp_path / d / f"demo-{v}.safetensors" for d in "ab")
        (sa, ma), (sb, mb) = load_state_dict(a), load_state_dict(b)  # (header key order varies, so not bytes)
        assert ma == mb and sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
        model = create_model(f"demo-{v}", checkpoint=a)  # a written checkpoint loads into the registered model
        assert model.info.num_classes == 10
    fresh = create_model("demo-elliptical-quest", checkpoint=tmp_path / "a" / "demo-elliptical-quest.safetensors")
    shipped = create_model("demo-elliptical-quest")
    assert not torch.equal(fresh.net.head.weight, shipped.net.head.weight)


def test_train_demo_rejects_bad_input(tmp_path):
    from robench.zoo.train_demo import train_demo

    with pytest.raises(RobenchError, match="unknown demo variant 'qest'.*quest"):
        train_demo(["qest"], out_dir=tmp_path)
    with pytest.raises(RobenchError, match="epochs"):
        train_demo(["quest"], out_dir=tmp_path, epochs=0)


def test_cli_train_demo(tmp_path, capsys):
    from robench.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train-demo", "--variants", "qnorm", "--epochs", "1", "--out", str(tmp_path)])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "demo-qnorm" in out and "%" in out
    assert create_model("demo-qnorm", checkpoint=tmp_path / "demo-qnorm.safetensors").info.num_classes == 10
    with pytest.raises(SystemExit) as e:
        main(["train-demo", "--variants", "qnrom", "--out", str(tmp_path)])
    assert e.value.code == 2 and "did you mean" in capsys.readouterr().err
