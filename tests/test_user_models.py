"""Models from user code (a .py file, a module, an entry point, an nn.Module object), through the CLI and the API:
same per-sample outcomes as calling the model and pyautoattack directly; bad inputs are one line, exit 2."""

import importlib.util
import json
import pickle
import re
import sqlite3
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import robench
from robench.run import Store


# AutoAttack's own example layout (pyautoattack/examples/resnet.py): BasicBlock, ResNet, ResNet18(); here narrow
# (width) so the test is fast.
MODEL_FILE = '''
import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super(BasicBlock, self).__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class ResNet(nn.Module):
    def __init__(self, block, num_blocks, num_classes=10, width=64):
        super(ResNet, self).__init__()
        self.in_planes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(block, width, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 2 * width, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, num_blocks[3], stride=2)
        self.linear = nn.Linear(8 * width, num_classes)

    def _make_layer(self, block, planes, num_blocks, stride):
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.avg_pool2d(out, 4)
        return self.linear(out.view(out.size(0), -1))


def ResNet18(num_classes=10, width=64):
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, width=width)


def TupleNet():
    class T(nn.Module):
        def forward(self, x):
            return x.mean((2, 3)), x
    return T()


def not_a_model():
    return {"weights": 1}


def Seven():
    return ResNet18(num_classes=7, width=4)
'''

SUITE = '''
[[attack]]
name = "aa-test"
kind = "autoattack"
version = "custom"
norm = "Linf"
eps = ["2/255"]
params = { attacks = ["apgd-ce", "apgd-t"], n_iter = 5, n_restarts = 1, n_target_classes = 3 }
'''
ATTACKS = ["apgd-ce", "apgd-t"]
N = 12


def import_file(path: Path):
    spec = importlib.util.spec_from_file_location(f"user_models_{abs(hash(str(path)))}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write_cifar10(root: Path, x_uint8: np.ndarray, labels) -> Path:
    """The released python layout: root/cifar-10-batches-py/test_batch, a pickled dict with bytes keys."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    batch = {b"batch_label": b"testing batch 1 of 1", b"labels": [int(v) for v in labels],
             b"data": x_uint8.reshape(len(x_uint8), -1), b"filenames": [f"img_{i}.png".encode() for i in
                                                                          range(len(x_uint8))]}
    with open(d / "test_batch", "wb") as f:
        pickle.dump(batch, f, protocol=2)
    return d


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """models.py + a saved state_dict (model_test.pt) + a CIFAR-10 pickle whose labels make outcomes non-trivial."""
    tmp = tmp_path_factory.mktemp("user")
    (tmp / "models.py").write_text(MODEL_FILE)
    mod = import_file(tmp / "models.py")
    torch.manual_seed(3)
    net = mod.ResNet18(width=4)
    with torch.no_grad():  # batch-norm statistics of real activations (so eval mode matters), a sensitive head
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        net.train()
        net(torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(9)))
        torch.nn.init.normal_(net.linear.weight, std=1.0)
        torch.nn.init.zeros_(net.linear.bias)
    torch.save(net.state_dict(), tmp / "model_test.pt")
    net.eval()
    g = torch.Generator().manual_seed(0)  # smooth random images (8-bit, as CIFAR stores them)
    lo = torch.nn.functional.interpolate(torch.rand(N, 3, 4, 4, generator=g), size=32, mode="bilinear")
    x8 = (lo * 255).round().to(torch.uint8).numpy()
    x = torch.from_numpy(x8).float() / 255
    with torch.no_grad():
        y = net(x).argmax(1)
    y[:3] = (y[:3] + 1) % 10  # three clean-misclassified samples
    data = write_cifar10(tmp / "cifar", x8, y.tolist())
    (tmp / "aa.toml").write_text(SUITE)
    return dict(tmp=tmp, net=net, x=x, y=y, data=data, mod=mod)


def store_outcomes(out: Path) -> dict:
    """{threat or attack: (params, per-sample correct list)} of a store with one model."""
    db = sqlite3.connect(out / "robench.sqlite")
    rows = db.execute("SELECT c.cell_id, c.threat, c.attack, c.params_json FROM cells c").fetchall()
    res = {}
    for cid, threat, attack, params in rows:
        o = db.execute("SELECT sample, correct FROM outcomes WHERE cell_id=? ORDER BY sample", (cid,)).fetchall()
        assert [s for s, _ in o] == list(range(N))
        res[attack or threat] = (json.loads(params), [bool(c) for _, c in o])
    db.close()
    return res


def direct_autoattack(net, x, y, attack_params: dict, eps: float) -> list[bool]:
    """pyautoattack called directly: the cell's seed is the documented derivation from (global seed, sample
    index, cell), one AutoAttack seed per block of samples."""
    from pyautoattack import AutoAttack

    from robench.attack.autoattack import autoattack_seed
    from robench.run.store import params_hash
    from robench.seeding import sample_seeds

    seeds = sample_seeds(0, range(len(x)), "attack", "aa-test", params_hash(attack_params))
    aa = AutoAttack(net, norm="Linf", eps=eps, version="custom", attacks=ATTACKS, seed=autoattack_seed(seeds))
    aa.apgd.n_iter = aa.apgd_targeted.n_iter = 5
    aa.apgd.n_restarts = aa.apgd_targeted.n_restarts = 1
    aa.apgd_targeted.n_target_classes = 3
    _, y_adv = aa.run_standard_evaluation(x, y, batch_size=len(x))
    return (y_adv == y).tolist()


def test_user_file_model_cli_and_api_equal_direct_pyautoattack(setup, tmp_path, run_cli):
    s = setup
    model_ref = f"{s['tmp'] / 'models.py'}:ResNet18"
    out_cli = tmp_path / "cli"
    code, _, err = run_cli("eval", "--model", model_ref, "--model-arg", "width=4", "--checkpoint",
                           s["tmp"] / "model_test.pt", "--data", f"cifar10:{s['data']}", "--attack",
                           s["tmp"] / "aa.toml", "--eps", "2/255", "--device", "cpu", "--out", out_cli, "-q")
    assert code == 0, err
    cli = store_outcomes(out_cli)
    clean_direct = (s["net"](s["x"]).argmax(1) == s["y"]).tolist()
    assert cli["clean"][1] == clean_direct
    params = cli["aa-test"][0]
    assert params["eps"] == pytest.approx(2 / 255)
    direct = direct_autoattack(s["net"], s["x"], s["y"], params["attack_params"], 2 / 255)
    assert cli["aa-test"][1] == direct
    # the outcome is not trivial: some samples survive, some clean-correct ones are broken
    assert any(direct) and sum(direct) < sum(clean_direct)
    # provenance: the model file's hash, args and (absent) normalisation define the cells
    assert params["model"]["args"] == {"width": 4} and params["model"]["normalization"] == "none"
    m = Store(out_cli).db.execute("SELECT name, arch, variant, checkpoint_sha256 FROM models").fetchone()
    from robench.zoo.checkpoint import file_sha256

    assert m == (model_ref, "ResNet", "custom", file_sha256(s["tmp"] / "model_test.pt"))

    # the same through the Python API, by reference (with a store) and as an nn.Module object (in memory)
    out_api = tmp_path / "api"
    df = robench.evaluate(model_ref, f"cifar10:{s['data']}", model_args={"width": 4},
                          checkpoint=s["tmp"] / "model_test.pt", attacks=str(s["tmp"] / "aa.toml"), eps="2/255",
                          device="cpu", out=out_api)
    api = store_outcomes(out_api)
    assert api["clean"][1] == clean_direct and api["aa-test"][1] == direct
    assert set(df.threat) == {"clean", "attack"} and set(df.attack.dropna()) == {"aa-test", "probe-large-eps"}

    net = s["mod"].ResNet18(width=4)
    net.load_state_dict(torch.load(s["tmp"] / "model_test.pt", weights_only=True))
    net.train()  # given back as it was
    df2 = robench.evaluate(net, f"cifar10:{s['data']}", attacks=str(s["tmp"] / "aa.toml"), eps="2/255",
                           device="cpu")
    assert net.training and all(p.requires_grad for p in net.parameters())
    got = df2.set_index(df2.attack.fillna(df2.threat)).value
    assert got["clean"] == pytest.approx(sum(clean_direct) / N)
    assert got["aa-test"] == pytest.approx(sum(direct) / N)
    board = robench.leaderboard(df2)
    assert board.loc[0, "clean_acc"] == pytest.approx(sum(clean_direct) / N)


def test_mean_std_normalise_user_models(setup, tmp_path):
    """--mean/--std: the net sees (x - mean) / std; recorded in the cells' parameters."""
    s = setup
    mean, std = [0.9, 0.1, 0.5], [0.1, 0.2, 0.3]
    out = tmp_path / "o"
    df = robench.evaluate(f"{s['tmp'] / 'models.py'}:ResNet18", f"cifar10:{s['data']}", model_args={"width": 4},
                          checkpoint=s["tmp"] / "model_test.pt", mean=mean, std=std, device="cpu", out=out)
    pred = Store(out).outcomes(int(df.cell_id.iloc[0]))["pred"].tolist()
    z = (s["x"] - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert pred == s["net"](z).argmax(1).tolist()
    from robench.run import ModelEntry
    from robench.zoo.sources import build_model

    built = build_model(ModelEntry(f"{s['tmp'] / 'models.py'}:ResNet18", str(s["tmp"] / "model_test.pt"),
                                   args={"width": 4}, mean=mean, std=std))
    with torch.no_grad():
        assert torch.allclose(built(s["x"]), s["net"](z), atol=1e-5)
        assert not torch.allclose(built(s["x"]), s["net"](s["x"]), atol=1e-2)  # the normalisation matters
    params = store_outcomes(out)["clean"][0]
    assert params["model"]["mean"] == mean and params["model"]["normalization"] == "--mean/--std"


def test_package_module_factory_and_entry_point(setup, tmp_path, monkeypatch):
    """`package.module:factory` and a name registered in the robench.models entry-point group."""
    s = setup
    pkg = tmp_path / "site" / "mypkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(MODEL_FILE)
    dist = tmp_path / "site" / "mypkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mypkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[robench.models]\ntiny-resnet = mypkg.nets:ResNet18\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    ckpt = s["tmp"] / "model_test.pt"
    data = f"cifar10:{s['data']}"
    expect = sum((s["net"](s["x"]).argmax(1) == s["y"]).tolist()) / N
    for ref in ("mypkg.nets:ResNet18", "tiny-resnet"):
        df = robench.evaluate(ref, data, model_args={"width": 4}, checkpoint=ckpt, device="cpu")
        assert df.value.iloc[0] == pytest.approx(expect), ref
    from robench.zoo.sources import source_for

    assert [source_for(r).name for r in ("mypkg.nets:ResNet18", "tiny-resnet", "timm:resnet18", "demo-quest",
                                   "a/b.py:C")] == ["python", "plugin", "timm", "registry", "file"]


def test_bad_user_models_and_data_one_line_exit_2_nothing_written(setup, tmp_path, run_cli):
    s = setup
    models = s["tmp"] / "models.py"
    boom = tmp_path / "boom.py"
    boom.write_text("import torch\n\nx = 1\ny = x / 0\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    wnid_v2 = tmp_path / "v2"
    (wnid_v2 / "n01440764").mkdir(parents=True)
    ckpt = s["tmp"] / "model_test.pt"
    data = ["--data", f"cifar10:{s['data']}"]
    w4 = ["--model-arg", "width=4"]
    cases = [
        (["--model", f"{tmp_path / 'nope.py'}:ResNet18", *data], r"model file not found: .*nope\.py"),
        (["--model", f"{models}:ResNet19", *data], r"has no attribute 'ResNet19' \(did you mean: ResNet18"),
        (["--model", f"{boom}:Net", *data], r"importing model file .*boom\.py failed: ZeroDivisionError: "
                                            r"division by zero \(boom\.py line 4\)"),
        (["--model", f"{models}:not_a_model", *data], r"returned a dict, not a torch\.nn\.Module"),
        (["--model", f"{models}:Seven", *data],
         r"returned logits of shape \(2, 7\) for 2 cifar10 images; expected \(2, 10\)"),
        (["--model", f"{models}:ResNet18", "--model-arg", "num_classes=7", "--model-arg", "width=4", *data],
         r"ResNet18 has 7 classes but data cifar10:.* has 10"),
        (["--model", f"{models}:TupleNet", *data], r"returned a tuple, not a tensor of logits"),
        (["--model", f"{models}:ResNet18", "--model-arg", "width", *data], r"--model-arg 'width' does not parse"),
        (["--model", f"{models}:ResNet18", "--model-arg", "width=[4,", *data], r"does not parse: '\[4,' is not"),
        (["--model", f"{models}:ResNet18", "--model-arg", "depth=3", *data],
         r"building .*ResNet18\(depth=3\) failed: TypeError: .*depth"),
        (["--model", "no_such_pkg_xyz.nets:Net", *data], r"cannot import module 'no_such_pkg_xyz.nets' .*No module named 'no_such_pkg_xyz'"),
        (["--model", f"{models}:ResNet18", *w4, "--mean", "0.5,x", *data], r"--mean must be 1 or 3"),
        (["--model", "demo-quest", "--std", "0.5", "--data", "digits"], r"demo-quest normalises its inputs itself"),
        (["--model", f"{models}:ResNet18", *w4, "--checkpoint", ckpt, "--data", f"cifar10:{empty}"],
         r"cifar10:.*empty has no test_batch file"),
        (["--model", f"{models}:ResNet18", *w4, "--data", f"imagenet-v2:{wnid_v2}"],
         r"imagenet-v2 class folder\(s\) not in the class list: n01440764 .*named by class index"),
        (["--model", f"{models}:ResNet18", *w4, "--data", f"cifar100:{s['data']}"], r"cifar100:.* has no test"),
    ]
    for args, msg in cases:
        out = tmp_path / "out"
        code, _, err = run_cli("eval", "--device", "cpu", "--out", out, "-q", *args)
        assert code == 2, (args, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert re.search(msg, err), (msg, err)
        assert not out.exists(), args  # nothing written, not even an empty store


def test_help_names_the_formats_and_the_code_warning(run_cli):
    code, out, _ = run_cli("eval", "--help")
    text = " ".join(out.replace("│", " ").split())
    assert code == 0
    for fmt in ("imagenet:DIR", "imagenet-c:DIR", "imagenet-a:DIR", "imagenet-r:DIR", "imagenet-sketch:DIR",
                "imagenet-v2:DIR", "cifar10:DIR", "cifar100:DIR", "cifar10-c:DIR", "cifar100-c:DIR", "digits"):
        assert fmt in text, fmt
    assert "RUNS ITS CODE" in text


@pytest.mark.slow
def test_autoattack_example_resnet18_as_released(tmp_path, run_cli):
    """AutoAttack's own example: examples/resnet.py + model_test.pt (a plain CIFAR-10 ResNet-18 state_dict), as
    shipped with pyautoattack; 4 images, the cheap AutoAttack suite."""
    import pyautoattack

    ex = Path(pyautoattack.__file__).parent / "examples"
    if not (ex / "model_test.pt").is_file() or not (ex / "resnet.py").is_file():
        pytest.skip("pyautoattack's examples are not installed")
    mod = import_file(ex / "resnet.py")
    net = mod.ResNet18()
    net.load_state_dict(torch.load(ex / "model_test.pt", weights_only=True, map_location="cpu"))
    net.eval()
    g = torch.Generator().manual_seed(1)
    x8 = torch.randint(0, 256, (4, 3, 32, 32), generator=g, dtype=torch.uint8).numpy()
    x = torch.from_numpy(x8).float() / 255
    with torch.no_grad():
        y = net(x).argmax(1)
    data = write_cifar10(tmp_path, x8, y.tolist())
    code, _, err = run_cli("eval", "--model", f"{ex / 'resnet.py'}:ResNet18", "--checkpoint", ex / "model_test.pt",
                           "--data", f"cifar10:{data}", "--attack", "autoattack-fast", "--eps", "1/255",
                           "--device", "cpu", "--out", tmp_path / "o", "-q")
    assert code == 0, err
    res = Store(tmp_path / "o").results()
    assert res.set_index("threat").value["clean"] == 1.0
    assert len(res[res.threat == "attack"]) >= 1


def test_plan_file_with_user_model(setup, tmp_path, run_cli):
    """A sweep plan names user code like --model does: args, checkpoint, normalisation as [[models]] keys."""
    s = setup
    plan = tmp_path / "plan.toml"
    plan.write_text(textwrap.dedent(f'''
        data = "cifar10:{s['data']}"
        device = "cpu"
        out = "{tmp_path / 'out'}"
        [[models]]
        name = "{s['tmp'] / 'models.py'}:ResNet18"
        args = {{ width = 4 }}
        checkpoint = "{s['tmp'] / 'model_test.pt'}"
        mean = 0.5
        std = 0.25
        label = "tiny"
    '''))
    code, _, err = run_cli("sweep", plan, "-q")
    assert code == 0, err
    res = Store(tmp_path / "out").results()
    z = (s["x"] - 0.5) / 0.25
    assert res.model.tolist() == ["tiny"]
    assert res.value.iloc[0] == pytest.approx((s["net"](z).argmax(1) == s["y"]).float().mean().item())
    plan.write_text(plan.read_text().replace("args = { width = 4 }", 'args = "width=4"'))
    code, _, err = run_cli("sweep", plan, "-q")
    assert code == 2 and "`args` must be a table of keyword arguments" in err


def test_normalisation_from_timm_pretrained_cfg():
    """A timm module passed as an object keeps timm's normalisation (declared in its pretrained_cfg)."""
    import timm

    from robench.run import ModelEntry
    from robench.zoo.sources import build_model

    net = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    model = build_model(ModelEntry("r10", module=net))
    cfg = net.pretrained_cfg
    assert model.info.mean == tuple(cfg["mean"]) and model.info.provenance["normalization"] == "pretrained_cfg"
    from robench.zoo.sources import state_sha256

    assert model.info.input_size == tuple(cfg["input_size"])
    assert model.info.checkpoint_sha256 == state_sha256(net) and re.fullmatch(r"[0-9a-f]{64}",
                                                                              model.info.checkpoint_sha256)
    x = torch.rand(2, 3, 64, 64)
    z = (x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x), net(z))
