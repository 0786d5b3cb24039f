"""Every recipe of README "Extending robench", followed as written: a user's own module registers an attack kind and a
corruption that `robench eval` then runs from suite TOMLs; an attention variant registered the same way is a model
`create_model` builds and `robench models` lists; an attack kind saved inside robench/attack/ registers with no
other edit; a data format is one FORMATS entry and a model source one SOURCES row, each run through `robench
eval`."""

from __future__ import annotations

import json
import os
import re
import textwrap
from pathlib import Path

import pytest
import torch

from robench.attack import get_kind, kind_names, unregister_kind
from robench.corrupt import registry as corruption_registry

def readme_attack_kind() -> str:
    """The complete attack kind README's "Adding an attack kind" shows (the test runs exactly that code)."""
    text = (Path(__file__).parents[1] / "README.md").read_text()
    section = text[text.index("**Adding an attack kind**"):]
    return section[section.index("```python\n") + len("```python\n"):section.index("```\n\n")]


USER_CORRUPTION = '''
"""A user's corruption, outside robench."""
from robench.corrupt import corruption


@corruption("user_invert", family="digital")
def user_invert(x, p, draws, **_):
    return p * (1 - x) + (1 - p) * x
'''

# kinds that break the invariants: the core rejects their batches (AttackInvariantError, one line from the CLI)
BAD_KINDS = '''
import torch

from robench.attack import AttackKind, AttackSpec, register_kind

for name, make in (("user-far", lambda x, eps: x + 2 * eps), ("user-nan", lambda x, eps: x + float("nan"))):
    register_kind(AttackKind(name, parse=lambda table, common, where: AttackSpec(**common), label=lambda s: name,
                             attack=lambda f, x, labels, eps, spec, seeds, ctx, make=make: make(x, eps), order=21))
'''


@pytest.fixture
def user_extensions(tmp_path, monkeypatch):
    (tmp_path / "user_ext.py").write_text(readme_attack_kind() + USER_CORRUPTION)
    (tmp_path / "user_bad.py").write_text(BAD_KINDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    importlib.import_module("user_ext")
    importlib.import_module("user_bad")
    yield tmp_path
    for name in ("noise", "user-far", "user-nan"):
        unregister_kind(name)
    corruption_registry.unregister("user_invert")
    import sys

    sys.modules.pop("user_ext", None)
    sys.modules.pop("user_bad", None)


def test_user_attack_and_corruption_run_through_robench_eval(user_extensions, run_cli):
    tmp = user_extensions
    assert get_kind("noise").order == 20 and "noise" in kind_names()
    assert len([ln for ln in readme_attack_kind().splitlines() if ln.strip()]) <= 25  # "about 20 lines"
    attacks = tmp / "noise.toml"
    attacks.write_text(textwrap.dedent("""
        description = "a user attack kind"
        [[attack]]
        name = "noise"
        kind = "noise"
        eps = ["8/255", "128/255"]
        [[attack]]
        name = "noise-2"
        kind = "noise"
        draw = 2
        eps = ["128/255"]
    """))
    corruptions = tmp / "invert.toml"
    corruptions.write_text('name = "invert"\nparams = "cifar"\nmodules = ["user_ext"]\n'
                           '[corruptions.user_invert]\nseverity = [0.2, 0.4, 0.6, 0.8, 1.0]\n')
    code, _, err = run_cli("eval", "--model", "demo-standard", "--data", "digits", "--limit", "24",
                           "--attack", attacks, "--corruptions", corruptions, "--severity", "5",
                           "--out", tmp / "res", "-q")
    assert code == 0, err
    from robench.run.store import Store

    res = Store(tmp / "res").results()
    noise = res[res.attack == "noise"].sort_values("eps")
    assert len(noise) == 2 and noise.value.iloc[1] < noise.value.iloc[0]  # 128/255 of sign noise hurts
    assert (res.attack == "noise-2").sum() == 1
    cells = res[res.attack.str.startswith("noise")]
    assert cells.value.max() <= res[res.threat == "clean"].value.iloc[0] + 1e-9  # gated: never above clean
    cor = res[res["threat"] == "corruption"].set_index("corruption")
    assert list(cor.index) == ["user_invert"] and cor.loc["user_invert", "category"] == "digital"
    assert len(Store(tmp / "res").outcomes(int(cor.loc["user_invert", "cell_id"]))) == 24


def test_readme_noise_kind_refuses_l2_and_unknown_keys(user_extensions):
    from robench.attack import load_attack_suite
    from robench.errors import RobenchError

    suite = user_extensions / "bad.toml"
    suite.write_text('[[attack]]\nkind = "noise"\nnorm = "L2"\n')
    with pytest.raises(RobenchError, match="sign noise is an L-inf attack"):
        load_attack_suite(str(suite))
    suite.write_text('[[attack]]\nkind = "noise"\ndraws = 2\n')
    with pytest.raises(RobenchError, match="unknown attack key 'draws'.*did you mean: draw"):
        load_attack_suite(str(suite))


@pytest.mark.parametrize("kind, message", [("user-far", "Linf perturbation .* exceeds eps"),
                                           ("user-nan", "adversarial batch has non-finite values")])
def test_kind_breaking_the_invariants_is_rejected_by_the_core(user_extensions, run_cli, kind, message):
    """A kind that returns images outside the eps ball (or NaN) does not get a result: one line, exit 1."""
    suite = user_extensions / f"{kind}.toml"
    suite.write_text(f'[[attack]]\nname = "bad"\nkind = "{kind}"\neps = ["8/255"]\n')
    code, _, err = run_cli("eval", "--model", "demo-standard", "--data", "digits", "--limit", "8",
                           "--attack", suite, "--out", user_extensions / "res", "-q")
    assert code == 1 and "Traceback" not in err
    line, = [ln for ln in err.splitlines() if ln.startswith("robench: error:")]
    assert re.search(f"bad: {message}", line), err


@pytest.fixture
def toy_variant():
    from robench.zoo.attention import ATTENTION_VARIANTS, VARIANT_PARAMS, VariantAttention, register_attention

    @register_attention("toy-temp", params={"temp": "heads"})
    class ToyTemperature(VariantAttention):
        """softmax(t_h q kᵀ / √d): a learnable temperature per head (init 1)."""

        def __init__(self, dim, num_heads=8, **kwargs):
            super().__init__(dim, num_heads=num_heads, **kwargs)
            self.temp = torch.nn.Parameter(torch.ones(num_heads))

        def attention_inputs(self, x):
            q, k, v = self.qkv_heads(x)
            return q * self.temp.view(1, -1, 1, 1).to(q.dtype), k, v, self.scale

    yield ToyTemperature
    ATTENTION_VARIANTS.pop("toy-temp")
    VARIANT_PARAMS.pop("attn.temp")


def test_registered_attention_variant_is_a_model(toy_variant):
    from robench.zoo.catalog import catalog
    from robench.zoo.registry import create_model, model_info

    kw = dict(num_classes=5, depth=2, embed_dim=32, num_heads=4, img_size=32, patch_size=8)
    toy, std = create_model("deit-tiny-toy-temp", **kw), create_model("deit-tiny-standard", **kw)
    assert model_info("vit-small-toy-temp").variant == "toy-temp"
    assert isinstance(toy.net.blocks[1].attn, toy_variant)
    assert toy.info.params == std.info.params + 2 * 4  # one temperature per head and block
    missing = toy.net.load_state_dict(std.net.state_dict(), strict=False).missing_keys
    assert missing == ["blocks.0.attn.temp", "blocks.1.attn.temp"]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(toy(x), std(x))  # temperature 1 is standard attention
        toy.net.blocks[0].attn.temp.fill_(3.0)
        assert (toy(x) - std(x)).abs().max() > 1e-4
    # `robench models` (the torch-free catalog) lists it with the same parameter count as the built model
    row, = [r for r in catalog() if r["name"] == "deit-tiny-toy-temp"]
    info = model_info("deit-tiny-toy-temp")
    from robench.zoo.registry import count_params

    assert row["params"] == count_params(info)
    assert json.dumps(row["variant"]) == '"toy-temp"'


def test_a_kind_module_inside_robench_registers_without_another_edit(tmp_path):
    """Inside the package an attack kind is one module too: robench/attack/__init__.py imports every module of its
    folder, so a new file there is registered with no list to edit (README's kind, saved as robench/attack/*.py)."""
    import subprocess
    import sys

    import robench.attack

    folder = Path(robench.attack.__file__).parent
    if not os.access(folder, os.W_OK):
        pytest.skip(f"{folder} is not writable")
    module = folder / "zz_test_readme_noise_kind.py"
    module.write_text(readme_attack_kind())
    try:
        r = subprocess.run([sys.executable, "-c", "import robench.attack as a; print(' '.join(a.kind_names()))"],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
    finally:
        module.unlink()
        for cached in (folder / "__pycache__").glob("zz_test_readme_noise_kind.*"):
            cached.unlink()
    assert r.returncode == 0, r.stderr
    assert "noise" in r.stdout.split() and "pgd" in r.stdout.split()


# ---- data format and model source recipes (README "Extending robench"): one entry in the module's table -----------
def _npy_format():
    """A new data format as README's recipe has it: a reader and one DataFormat entry (added to FORMATS below)."""
    import numpy as np

    from robench.data.fingerprint import file_digest
    from robench.data.formats import DataFormat
    from robench.data.specs import EvalData, TensorData, fingerprint

    def read(spec, model_info, strict):  # DIR/x.npy (N, 3, H, W) uint8, DIR/y.npy (N,) labels
        x, y = np.load(spec.path / "x.npy"), np.load(spec.path / "y.npy")
        ids = [f"x.npy/{i}" for i in range(len(y))]
        return EvalData(TensorData(torch.from_numpy(x).float() / 255, y.tolist(), 10), "npy10", f"npy10:{spec.path}",
                        10, ids, fingerprint("npy10", file_digest(spec.path / "x.npy"), file_digest(spec.path / "y.npy")))

    return DataFormat("npy10", "npy10:DIR", "DIR/x.npy uint8 images, DIR/y.npy labels (10 classes)", 10, read)


def test_a_new_data_format_is_one_formats_entry(tmp_path, run_cli, monkeypatch):
    import numpy as np

    from robench.data.digits import digits_tensors
    from robench.data.formats import FORMATS
    from robench.run import Store
    from robench.zoo.registry import create_model

    monkeypatch.setitem(FORMATS, "npy10", _npy_format())
    x, y, _ = digits_tensors("test")
    x8 = (x[:24] * 255).round().to(torch.uint8)
    (tmp_path / "d").mkdir()
    np.save(tmp_path / "d" / "x.npy", x8.numpy()), np.save(tmp_path / "d" / "y.npy", y[:24].numpy())
    code, _, err = run_cli("eval", "-m", "demo-quest", "-d", f"npy10:{tmp_path / 'd'}", "-q", "--out", tmp_path / "o")
    assert code == 0, err
    with torch.no_grad():
        want = (create_model("demo-quest").eval()(x8.float() / 255).argmax(1) == y[:24]).float().mean().item()
    res = Store(tmp_path / "o").results()
    assert res.dataset.tolist() == ["npy10"] and res.n.tolist() == [24]
    assert res.value.iloc[0] == pytest.approx(want)


def test_a_new_model_source_is_one_sources_row(tmp_path, run_cli, monkeypatch):
    """A source as README's recipe has it: an adapter (entry) -> RobenchModel and one Source row. Without `describe`
    it is user code: nothing else (resolve, the weights check, the runner) needs to know about it."""
    from robench.data.digits import digits_tensors
    from robench.run import Store
    from robench.zoo import sources

    def tiny(width: int):
        torch.manual_seed(width)
        return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(width), torch.nn.Flatten(),
                                   torch.nn.Linear(3 * width * width, 10))

    def from_tiny(entry):
        return sources._wrap(tiny(int(entry.name[5:])), entry, 10, code_sha256=None)

    row = sources.Source("tiny", "tiny:WIDTH", lambda ref: isinstance(ref, str) and ref.startswith("tiny:"), from_tiny)
    monkeypatch.setattr(sources, "SOURCES", (row, *sources.SOURCES))
    code, _, err = run_cli("eval", "-m", "tiny:4", "-d", "digits", "--mean", "none", "-q", "--out", tmp_path)
    assert code == 0, err
    x, y, _ = digits_tensors("test")
    with torch.no_grad():
        want = (tiny(4)(x).argmax(1) == y).float().mean().item()
    res = Store(tmp_path).results()
    assert res.model.tolist() == ["tiny:4"] and res.value.iloc[0] == pytest.approx(want)
