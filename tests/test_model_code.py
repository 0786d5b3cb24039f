"""Research model code evaluated as its authors evaluate it (issue 20; 19.5; 21): normalisation only from values the
authors set, isolation from timm's registry, one weights identity, checkpoint keys fitted, DeiT's eval crop, user
code that exits or is not found, files that are not checkpoints."""

import re
import sqlite3
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn

from robench.errors import RobenchError
from robench.run import ModelEntry, Store
from robench.zoo.sources import build_model, state_sha256

DIGITS = ["--data", "digits", "--limit", "8", "--device", "cpu"]

# A DeiT-style research file, as the DeiT / Elliptical repositories write it: a VisionTransformer subclass whose
# factory copies timm's generic `_cfg()` (mean = std = 0.5, no url) into `default_cfg`. Tiny (32x32 digits).
DEIT_FILE = '''
import torch
from timm.models.vision_transformer import VisionTransformer, _cfg


class MyViT(VisionTransformer):
    pass


def generic(**kw):
    model = MyViT(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=10, **kw)
    model.default_cfg = _cfg()
    return model


def own_cfg():
    model = MyViT(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=10)
    model.pretrained_cfg = dict(mean=(0.4914, 0.4822, 0.4465), std=(0.247, 0.243, 0.261), input_size=(3, 32, 32))
    return model


def named_weights():
    model = MyViT(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=10)
    model.default_cfg = _cfg(url="https://example.org/deit_tiny_trained.pth")
    return model


def bare():
    return MyViT(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=10)
'''


@pytest.fixture()
def deit_file(tmp_path):
    f = tmp_path / "deit_models.py"
    f.write_text(DEIT_FILE)
    return f


def one_line_exit_2(code, err, pattern):
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(pattern, err), (pattern, err)


# ---- 1. normalisation --------------------------------------------------------------------------------------------
def test_generic_timm_cfg_is_an_error_asking_for_mean_std(deit_file, tmp_path, run_cli):
    out = tmp_path / "out"
    code, _, err = run_cli("eval", "--model", f"{deit_file}:generic", *DIGITS, "--out", out, "-q")
    one_line_exit_2(code, err, r"only normalisation is timm's generic default_cfg \(mean 0\.5,0\.5,0\.5.*give "
                               r"--mean/--std .*--mean 0\.485,0\.456,0\.406 --std 0\.229,0\.224,0\.225.*--mean none")
    assert not out.exists()


def test_mean_std_given_runs_and_names_its_source(deit_file, tmp_path, run_cli):
    out = tmp_path / "out"
    code, _, err = run_cli("eval", "--model", f"{deit_file}:generic", "--mean", "0.485,0.456,0.406", "--std",
                           "0.229,0.224,0.225", *DIGITS, "--out", out)
    assert code == 0, err
    assert "(from --mean/--std)" in err
    params = sqlite3.connect(out / "robench.sqlite").execute("SELECT params_json FROM cells").fetchone()[0]
    assert '"normalization": "--mean/--std"' in params and "0.485" in params


def test_authors_pretrained_cfg_is_used_and_said(deit_file, tmp_path, run_cli):
    out = tmp_path / "out"
    code, _, err = run_cli("eval", "--model", f"{deit_file}:own_cfg", *DIGITS, "--out", out)
    assert code == 0, err
    assert re.search(r"mean \[0\.4914, 0\.4822, 0\.4465\] std \[0\.247, 0\.243, 0\.261\] \(from pretrained_cfg\)", err)
    model = build_model(ModelEntry(f"{deit_file}:own_cfg"))
    assert model.info.mean == (0.4914, 0.4822, 0.4465) and model.info.provenance["normalization"] == "pretrained_cfg"
    x = torch.rand(2, 3, 32, 32)
    z = (x - torch.tensor(model.info.mean).view(1, 3, 1, 1)) / torch.tensor(model.info.std).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.net(z))


def test_default_cfg_naming_weights_no_cfg_and_mean_none(deit_file):
    m = build_model(ModelEntry(f"{deit_file}:named_weights"))  # names its weights: timm's values are theirs
    assert m.info.mean == (0.5, 0.5, 0.5) and m.info.provenance["normalization"] == "default_cfg"
    m = build_model(ModelEntry(f"{deit_file}:bare"))  # no cfg at all: [0, 1] images, as RobustBench models
    assert m.info.mean is None and m.info.provenance["normalization"] == "none"
    m = build_model(ModelEntry(f"{deit_file}:generic", mean="none", std=None))
    assert m.info.mean is None and m.info.provenance["normalization"] == "--mean none"
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m.net(x))
    with pytest.raises(RobenchError, match="--mean and --std go together"):
        build_model(ModelEntry(f"{deit_file}:generic", mean=[0.5] * 3))


# ---- 2. isolation from timm's registry -----------------------------------------------------------------------------
HIJACK_FILE = '''
import torch
from torch import nn
from timm.models import register_model


class NotDeiT(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.fc = nn.Linear(3, num_classes)
        self.pretrained_cfg = dict(mean=(0.1, 0.2, 0.3), std=(0.3, 0.2, 0.1))

    def forward(self, x):
        return self.fc(x.mean((2, 3)))


@register_model
def deit_tiny_patch16_224(pretrained=False, **kwargs):  # timm's name, as research repositories do
    return NotDeiT()
'''


def test_user_file_cannot_hijack_robench_names(tmp_path, run_cli):
    from timm.models import VisionTransformer, model_entrypoint

    from robench.zoo.attention import EllipticalAttention

    f = tmp_path / "hijack.py"
    f.write_text(HIJACK_FILE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        user = build_model(ModelEntry(f"{f}:deit_tiny_patch16_224"))
    assert not [w for w in caught if "Overwriting" in str(w.message)]  # moot noise: the registry is restored
    assert type(user.net).__name__ == "NotDeiT"
    assert model_entrypoint("deit_tiny_patch16_224").__module__ == "timm.models.deit"  # restored
    ours = build_model(ModelEntry("deit-tiny-elliptical", random_init=True,
                                  args=dict(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2)))
    assert isinstance(ours.net, VisionTransformer) and ours.info.variant == "elliptical"
    assert all(isinstance(b.attn, EllipticalAttention) for b in ours.net.blocks)
    # both in one command: each builds what its name says
    out = tmp_path / "out"
    code, _, err = run_cli("eval", "--model", f"{f}:deit_tiny_patch16_224", "--model", "demo-elliptical", *DIGITS,
                           "--out", out, "-q")
    assert code == 0, err
    archs = dict(sqlite3.connect(out / "robench.sqlite").execute("SELECT label, arch FROM models").fetchall())
    assert archs == {f"{f}:deit_tiny_patch16_224": "NotDeiT", "demo-elliptical": "demo-vit"}


def test_registry_replaced_outside_robench_is_refused():
    """Code imported before robench could isolate it (the Python API): robench's names refuse to build it."""
    from timm.models import register_model

    from robench.zoo.registry import create_model
    from robench.zoo.usercode import isolated_timm_registry

    with isolated_timm_registry(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fake = type(sys)("fake_research_models")
        sys.modules["fake_research_models"] = fake

        def vit_tiny_patch16_224(pretrained=False, **kw):
            return nn.Linear(1, 1)

        vit_tiny_patch16_224.__module__ = "fake_research_models"
        register_model(vit_tiny_patch16_224)
        with pytest.raises(RobenchError, match=r"timm's model 'vit_tiny_patch16_224' was replaced .*fake_research"):
            create_model("vit-tiny-quest", random_init=True, img_size=32, patch_size=8, embed_dim=16, depth=1,
                         num_heads=2)
    sys.modules.pop("fake_research_models", None)
    create_model("vit-tiny-quest", random_init=True, img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2)


# ---- 3. weights identity, num_classes ----------------------------------------------------------------------------
def test_user_code_weights_identity_and_notice(deit_file, tmp_path, run_cli):
    out = tmp_path / "out"
    code, _, err = run_cli("eval", "--model", f"{deit_file}:own_cfg", *DIGITS, "--out", out)
    assert code == 0, err
    notice = [ln for ln in err.splitlines() if "no --checkpoint: its weights are whatever its code builds" in ln]
    assert len(notice) == 1, err
    sha = sqlite3.connect(out / "robench.sqlite").execute("SELECT checkpoint_sha256 FROM models").fetchone()[0]
    assert re.fullmatch(r"[0-9a-f]{64}", sha)
    assert sha == state_sha256(build_model(ModelEntry(f"{deit_file}:own_cfg")).net)
    # other weights from the same code (another seed inside the factory): another identity, another 8-hex prefix
    other = tmp_path / "other.py"
    other.write_text(DEIT_FILE.replace("def own_cfg():\n", "def own_cfg():\n    torch.manual_seed(5)\n"))
    sha2 = build_model(ModelEntry(f"{other}:own_cfg")).info.checkpoint_sha256
    assert re.fullmatch(r"[0-9a-f]{64}", sha2) and sha2[:8] != sha[:8]


def test_random_init_user_code_is_flagged(deit_file, tmp_path, run_cli):
    out = tmp_path / "out"
    code, _, err = run_cli("eval", "--model", f"{deit_file}:own_cfg", "--random-init", *DIGITS, "--out", out, "-q")
    assert code == 0, err
    assert "RANDOM weights" in err
    store = Store(out)
    assert store.models().checkpoint_sha256.tolist() == ["random-init-seed0"]
    assert "random-init" in store.flags().flag.tolist()
    m = build_model(ModelEntry(f"{deit_file}:own_cfg", random_init=True))
    assert m.info.random_init and not build_model(ModelEntry(f"{deit_file}:own_cfg")).info.random_init


def test_num_classes_model_arg_on_registered_and_timm_models(tmp_path, run_cli):
    m = build_model(ModelEntry("timm:resnet10t", random_init=True, args={"num_classes": 10}))
    assert m.info.num_classes == 10 and m(torch.rand(1, 3, 64, 64)).shape == (1, 10)
    m = build_model(ModelEntry("demo-quest", args={"num_classes": 10}, num_classes=10))
    assert m.info.num_classes == 10
    with pytest.raises(RobenchError, match=r"num_classes given twice with different values \(5 and .*=10\)"):
        build_model(ModelEntry("demo-quest", args={"num_classes": 10}, num_classes=5))
    code, _, err = run_cli("eval", "--model", "demo-quest", "--model-arg", "num_classes=10", *DIGITS,
                           "--out", tmp_path / "ok", "-q")
    assert code == 0, err
    out = tmp_path / "bad"
    code, _, err = run_cli("eval", "--model", "demo-quest", "--random-init", "--model-arg", "num_classes=7", *DIGITS,
                           "--out", out, "-q")
    assert code == 2 and "Traceback" not in err, err  # (the engine's random-init warning may come first)
    assert [ln for ln in err.splitlines() if "error" in ln] == [
        "robench: error: model demo-quest has 7 classes but data digits has 10"]
    assert not out.exists()


# ---- 4. checkpoint keys ------------------------------------------------------------------------------------------
WRAPPER_FILE = '''
import torch
from torch import nn


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


class Normalized(nn.Module):
    """The usual way to add input normalisation: the backbone kept as self.net."""
    def __init__(self):
        super().__init__()
        self.net = Backbone()
        self.register_buffer("mu", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))

    def forward(self, x):
        return self.net(x - self.mu)
'''


def test_checkpoint_keys_fit_before_any_prefix_is_stripped(tmp_path):
    f = tmp_path / "wrap.py"
    f.write_text(WRAPPER_FILE)
    torch.manual_seed(1)
    ns = {}
    exec(compile(WRAPPER_FILE, str(f), "exec"), ns)
    trained = ns["Normalized"]()
    torch.save(trained.state_dict(), tmp_path / "own.pt")  # keys net.conv.weight, ...: its own state_dict
    torch.save({"model": {f"module.{k}": v for k, v in trained.state_dict().items()}}, tmp_path / "ddp.pt")
    torch.save(trained.net.state_dict(), tmp_path / "backbone.pt")
    torch.save({f"net.{k}": v for k, v in trained.net.state_dict().items()}, tmp_path / "wrapped_backbone.pt")
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        want = trained(x)
        for ck in ("own.pt", "ddp.pt"):
            m = build_model(ModelEntry(f"{f}:Normalized", str(tmp_path / ck), mean="none"))
            torch.testing.assert_close(m(x), want)
        m = build_model(ModelEntry(f"{f}:Backbone", str(tmp_path / "wrapped_backbone.pt"), mean="none"))
        torch.testing.assert_close(m(x), trained.net(x))  # `net.` stripped: that is what makes it fit
    with pytest.raises(RobenchError, match=r"does not fit .*missing keys: mu, net\.conv\.bias"):
        build_model(ModelEntry(f"{f}:Normalized", str(tmp_path / "backbone.pt"), mean="none"))


# ---- 5. DeiT's eval crop -----------------------------------------------------------------------------------------
def test_deit_evaluates_with_its_authors_crop(run_cli):
    import json

    import timm

    from robench.data.imagenet import EvalTransform
    from robench.zoo.registry import model_info

    deit, vit = model_info("deit-small-quest"), model_info("vit-tiny-quest")
    assert deit.crop_pct == 0.875  # DeiT's datasets.py: Resize(int(224 / 0.875)) = 256, CenterCrop(224)
    assert vit.crop_pct == timm.get_pretrained_cfg("vit_tiny_patch16_224").crop_pct
    assert deit.crop_pct != timm.get_pretrained_cfg("deit_small_patch16_224").crop_pct  # not timm's 0.9
    from PIL import Image

    img = Image.new("RGB", (400, 300))
    t = EvalTransform(224, deit.crop_pct, deit.interpolation)
    assert tuple(t(img).shape) == (3, 224, 224)
    code, out, _ = run_cli("models", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["deit-base-elliptical"]["crop_pct"] == 0.875 and rows["vit-base-quest"]["crop_pct"] == vit.crop_pct
    code, out, _ = run_cli("models", "--variant", "elliptical")
    line = next(ln for ln in out.splitlines() if "deit-tiny-elliptical" in ln)
    assert "0.875 (256->224)" in line


# ---- 6. hostile inputs -------------------------------------------------------------------------------------------
def test_text_file_named_pt_is_not_a_checkpoint(deit_file, tmp_path, run_cli):
    bad = tmp_path / "weights.pt"
    bad.write_text(".")  # torch.load: IndexError: pop from empty list
    code, _, err = run_cli("convert", bad, tmp_path / "o.safetensors")
    one_line_exit_2(code, err, r"not a checkpoint: .*weights\.pt is neither a safetensors file nor a torch\.save")
    out = tmp_path / "out"
    code, _, err = run_cli("eval", "--model", f"{deit_file}:own_cfg", "--checkpoint", bad, *DIGITS, "--out", out,
                           "-q")
    one_line_exit_2(code, err, r"not a checkpoint")
    assert not out.exists() and not (tmp_path / "o.safetensors").exists()


def test_plain_pickle_refused_without_torch_warning(tmp_path):
    import pickle

    from robench.zoo.checkpoint import load_state_dict

    p = tmp_path / "plain.pt"
    with open(p, "wb") as fh:
        pickle.dump({"w": [1.0, 2.0]}, fh, protocol=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RobenchError):
            load_state_dict(p)
    assert [str(w.message) for w in caught] == []


def test_sys_exit_in_model_code_is_one_line(tmp_path, run_cli):
    at_import = tmp_path / "exits.py"
    at_import.write_text("import sys\n\nsys.exit(3)\n")
    in_factory = tmp_path / "exits_later.py"
    in_factory.write_text("import sys\n\n\ndef Net():\n    sys.exit(3)\n")
    for ref, pat in ((f"{at_import}:Net", r"importing model file .*exits\.py failed: SystemExit: the code called "
                                          r"sys\.exit\(3\) \(exits\.py line 3\)"),
                     (f"{in_factory}:Net", r"building .*exits_later\.py:Net\(\) failed: SystemExit: .*sys\.exit\(3\) "
                                           r"\(exits_later\.py line 5\)")):
        out = tmp_path / "out"
        code, _, err = run_cli("eval", "--model", ref, *DIGITS, "--out", out, "-q")
        one_line_exit_2(code, err, pat)
        assert not out.exists()


def test_package_module_factory_found_in_the_current_directory(deit_file, tmp_path, monkeypatch):
    pkg = tmp_path / "cwd" / "research_pkg_zoo"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(DEIT_FILE)
    monkeypatch.chdir(tmp_path / "cwd")
    before = list(sys.path)
    try:
        m = build_model(ModelEntry("research_pkg_zoo.nets:own_cfg"))
        assert type(m.net).__name__ == "MyViT" and m.info.source == "python"
        assert sys.path == before  # the current directory is looked in, not left on sys.path
        with pytest.raises(RobenchError, match=r"cannot import module 'no_such_zoo_pkg\.nets' .*current directory "
                                               r".*set PYTHONPATH"):
            build_model(ModelEntry("no_such_zoo_pkg.nets:Net"))
    finally:
        for name in [n for n in sys.modules if n.startswith("research_pkg_zoo")]:
            sys.modules.pop(name)


def test_no_dead_names_in_sources():
    import robench.zoo.sources as sources

    assert not hasattr(sources, "MODEL_HELP")


def test_deit_style_file_with_readme_values_equals_robench_deit(tmp_path):
    """README's example line for a DeiT-style research file (generic `_cfg()`, ImageNet mean/std given) gives the
    logits of robench's deit-tiny-standard on the same weights; without --mean/--std it is refused."""
    from safetensors.torch import save_file

    from robench.zoo.registry import create_model

    shape = dict(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2)
    ours = create_model("deit-tiny-standard", random_init=True, num_classes=10, **shape)
    with torch.no_grad():
        for p in ours.parameters():  # away from timm's init, so that a wrong normalisation shows
            p.add_(torch.randn_like(p) * 0.2)
    save_file({k: v.contiguous() for k, v in ours.net.state_dict().items()}, str(tmp_path / "w.safetensors"))
    f = tmp_path / "deit_file.py"
    f.write_text(textwrap.dedent('''
        from functools import partial
        from torch import nn
        from timm.models.vision_transformer import VisionTransformer, _cfg


        def deit_tiny_patch16_224(**kw):
            m = VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=10,
                                  qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))
            m.default_cfg = _cfg()
            return m
    '''))
    ref, ck = f"{f}:deit_tiny_patch16_224", str(tmp_path / "w.safetensors")
    theirs = build_model(ModelEntry(ref, ck, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]))
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ours2 = create_model("deit-tiny-standard", checkpoint=ck, **shape)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours2(x), atol=1e-5, rtol=1e-5)
        half = ours2.net((x - 0.5) / 0.5)  # what the generic cfg would have fed it
        assert not torch.allclose(half, ours2(x), atol=1e-3)
    with pytest.raises(RobenchError, match="only normalisation is timm's generic default_cfg"):
        build_model(ModelEntry(ref, ck))
