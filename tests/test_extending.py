"""Extending robench from outside the package (README "Extending robench"): a user's own module registers an attack
kind and a corruption that `robench eval` then runs from suite TOMLs; an attention variant registered the same way
is a model `create_model` builds and `robench models` lists."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from robench.attack.base import get_kind, unregister_kind
from robench.corrupt import registry as corruption_registry

USER_MODULE = '''
"""A user's extensions, outside robench: one attack kind and one corruption."""
import torch

from robench.attack import AttackResult, AttackSpec
from robench.attack.base import AttackKind, register_kind
from robench.corrupt import corruption


def parse(table, common, params, where):
    return AttackSpec(**common, steps=1, step_size="1*eps", random_start=False, params=params)


def run(f, x0, y, spec, seeds, opts):
    """Shift every pixel by -eps (clipped): deterministic, so robust accuracy can only fall with eps."""
    robust, preds = [], []
    with torch.no_grad():
        pred0 = f(x0).argmax(1)
        for e in spec.eps:
            p = f((x0 - e).clamp(0, 1)).argmax(1)
            robust.append((p == y) & (pred0 == y))
            preds.append(p)
    return AttackResult(torch.stack(robust), torch.stack(preds), torch.zeros(len(y), dtype=torch.bool),
                        {"clean_correct": (pred0 == y).tolist()})


register_kind(AttackKind("user-shift", parse=parse, run=run, label=lambda s: f"shift {s.norm_label}", order=20))


@corruption("user_invert", family="digital")
def user_invert(x, p, draws, **_):
    return p * (1 - x) + (1 - p) * x
'''


@pytest.fixture
def user_extensions(tmp_path, monkeypatch):
    (tmp_path / "user_ext.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    importlib.import_module("user_ext")
    yield tmp_path
    unregister_kind("user-shift")
    corruption_registry.unregister("user_invert")
    import sys

    sys.modules.pop("user_ext", None)


def test_user_attack_and_corruption_run_through_robench_eval(user_extensions, run_cli):
    tmp = user_extensions
    assert get_kind("user-shift").order == 20
    attacks = tmp / "shift.toml"
    attacks.write_text(textwrap.dedent("""
        description = "a user attack kind"
        [[attack]]
        name = "shift"
        kind = "user-shift"
        eps = ["8/255", "128/255"]
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
    shift = res[res.attack == "shift"].sort_values("eps")
    assert len(shift) == 2 and shift.value.iloc[1] <= shift.value.iloc[0] + 1e-9
    cor = res[res["threat"] == "corruption"].set_index("corruption")
    assert list(cor.index) == ["user_invert"] and cor.loc["user_invert", "category"] == "digital"
    assert len(Store(tmp / "res").outcomes(int(cor.loc["user_invert", "cell_id"]))) == 24


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
