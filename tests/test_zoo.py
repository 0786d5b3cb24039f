"""Model registry, wrapper normalisation, checkpoint loading and conversion, and their error messages."""

import argparse
import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from robench.errors import RobenchError
from robench.zoo.attention import ATTENTION_VARIANTS
from robench.zoo.checkpoint import load_state_dict
from robench.zoo.registry import ARCHS, create_model, model_info

TINY = dict(depth=2, embed_dim=32, num_heads=2, img_size=32, patch_size=8)


def tiny(name="deit-tiny-quest", **kw):
    return create_model(name, **{"num_classes": 10, **TINY, **kw})


def test_names_resolve_to_archs_and_variants():
    assert model_info("deit-quest").arch == "deit-tiny"
    assert model_info("deit-quest").variant == "quest"
    assert model_info("vit-base-elliptical-quest").variant == "elliptical-quest"
    assert model_info("deit-small-qknorm-hs").timm_name == "deit_small_patch16_224"
    for arch in ARCHS:
        for v in ATTENTION_VARIANTS:
            assert model_info(f"{arch}-{v}").variant == v


def test_real_sizes_param_counts():
    """deit-tiny has 5.7M params (DeiT paper); the attention variant adds only its scales."""
    from robench.zoo.registry import count_params

    std = count_params(model_info("deit-tiny-standard"))
    assert 5.6e6 < std < 5.8e6
    assert count_params(model_info("deit-tiny-quest")) == std
    assert count_params(model_info("deit-tiny-qknorm-hs")) == std + 12 * 3  # 12 blocks x 3 heads
    assert count_params(model_info("deit-tiny-qknorm-ds")) == std + 12 * 2 * 64


def test_wrapper_applies_model_normalisation():
    model = tiny("deit-tiny-standard")
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor(model.info.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.info.std).view(1, 3, 1, 1)
    assert model.info.mean == (0.485, 0.456, 0.406)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.net((x - mean) / std))
    assert not model.training
    assert model_info("vit-tiny-standard").mean == (0.5, 0.5, 0.5)


def test_timm_any_model():
    m = create_model("timm:resnet18", num_classes=7)
    assert m.info.variant == "timm"
    assert m(torch.rand(1, 3, 64, 64)).shape == (1, 7)


def test_unknown_name_suggests():
    with pytest.raises(RobenchError, match=r"unknown model 'deit-qest'.*did you mean: deit-quest"):
        model_info("deit-qest")
    with pytest.raises(RobenchError, match="unknown timm model"):
        model_info("timm:resnet5000")


def test_safetensors_roundtrip_infers_num_classes(tmp_path):
    m = tiny(num_classes=7)
    save_file(m.net.state_dict(), str(tmp_path / "m.safetensors"))
    m2 = create_model("deit-tiny-quest", checkpoint=tmp_path / "m.safetensors", **TINY)
    assert m2.info.num_classes == 7
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m2(x))


def _deit_checkpoint(model, path, wrap_module=False):
    sd = model.net.state_dict()
    if wrap_module:
        sd = {f"module.{k}": v for k, v in sd.items()}
    opt = torch.optim.AdamW(model.net.parameters())
    torch.save({"model": sd, "optimizer": opt.state_dict(), "epoch": 299, "scaler": {"scale": 65536.0},
                "args": argparse.Namespace(model="deit_tiny_patch16_224", lr=5e-4, batch_size=128,
                                           data_path="/data", drop_path=0.1, repeated_aug=True)}, path)


def test_deit_format_checkpoint_loads_and_converts(tmp_path, run_cli):
    m = tiny()
    _deit_checkpoint(m, tmp_path / "ck.pth", wrap_module=True)
    m2 = create_model("deit-tiny-quest", checkpoint=tmp_path / "ck.pth", **TINY)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m2(x))
    code, out, err = run_cli("convert", tmp_path / "ck.pth", tmp_path / "ck.safetensors")
    assert code == 0, err
    sd, meta = load_state_dict(tmp_path / "ck.safetensors")
    assert set(sd) == set(m.net.state_dict())
    assert meta["source"] == "ck.pth" and len(meta["source_sha256"]) == 64
    m3 = create_model("deit-tiny-quest", checkpoint=tmp_path / "ck.safetensors", **TINY)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m3(x))


def test_nested_key_choice(tmp_path):
    a, b = tiny(), tiny()
    torch.save({"model": a.net.state_dict(), "model_ema": b.net.state_dict()}, tmp_path / "ck.pth")
    x = torch.rand(1, 3, 32, 32)
    ema = create_model("deit-tiny-quest", checkpoint=tmp_path / "ck.pth", checkpoint_key="model_ema", **TINY)
    with torch.no_grad():
        torch.testing.assert_close(ema(x), b(x))
    with pytest.raises(RobenchError, match="no entry 'ema'"):
        create_model("deit-tiny-quest", checkpoint=tmp_path / "ck.pth", checkpoint_key="ema", **TINY)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_bad_checkpoints_give_one_line_errors(tmp_path, run_cli):
    m = tiny()
    good = tmp_path / "good.pth"
    torch.save(m.net.state_dict(), good)
    evil = tmp_path / "evil.pth"
    torch.save({"model": m.net.state_dict(), "payload": Evil()}, evil)
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(good.read_bytes()[:3000])
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    dot = tmp_path / "dot.pt"  # torch.load raised IndexError: pop from empty list
    dot.write_text(".")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    trunc_st = tmp_path / "trunc.safetensors"
    save_file(m.net.state_dict(), str(trunc_st))
    trunc_st.write_bytes(trunc_st.read_bytes()[:500])
    cases = [
        (tmp_path / "missing.pth", "checkpoint not found"),
        (evil, "refused to load .*arbitrary code"),
        (trunc, "not a valid checkpoint"),
        (text, "not a checkpoint: .*notes.pth is neither a safetensors file nor a torch.save file"),
        (dot, "not a checkpoint: .*dot.pt is neither"),
        (empty, "not a checkpoint: .*empty.pt is empty"),
        (trunc_st, "not a valid safetensors checkpoint"),
    ]
    for path, msg in cases:
        code, out, err = run_cli("convert", path, tmp_path / "out.safetensors")
        assert code == 2, (path, err)
        assert len(err.strip().splitlines()) == 1, err
        assert "Traceback" not in err
        import re
        assert re.search(msg, err), (msg, err)
    assert not (tmp_path / "out.safetensors").exists()


def test_pickle_with_code_never_executes(tmp_path, capsys):
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(RobenchError):
        load_state_dict(evil)
    assert "pwned" not in capsys.readouterr().out


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    m = tiny(embed_dim=48, num_heads=2)
    save_file(m.net.state_dict(), str(tmp_path / "m.safetensors"))
    with pytest.raises(RobenchError, match=r"shape mismatch at \S+: checkpoint \(.*\) vs model \(.*\)"):
        create_model("deit-tiny-quest", checkpoint=tmp_path / "m.safetensors", **TINY)


def test_missing_and_unexpected_keys(tmp_path):
    sd = tiny().net.state_dict()
    sd.pop("blocks.1.mlp.fc2.bias")
    sd["extra.weight"] = torch.zeros(3)
    save_file(sd, str(tmp_path / "m.safetensors"))
    with pytest.raises(RobenchError, match=r"missing keys: blocks.1.mlp.fc2.bias; unexpected keys: extra.weight"):
        create_model("deit-tiny-quest", checkpoint=tmp_path / "m.safetensors", **TINY)


def test_checkpoint_of_another_variant(tmp_path):
    std = tiny("deit-tiny-standard")
    save_file(std.net.state_dict(), str(tmp_path / "std.safetensors"))
    with pytest.raises(RobenchError, match="lacks the parameters of variant 'qknorm-hs'.*qk_scale"):
        create_model("deit-tiny-qknorm-hs", checkpoint=tmp_path / "std.safetensors", **TINY)
    hs = tiny("deit-tiny-qknorm-hs")
    save_file(hs.net.state_dict(), str(tmp_path / "hs.safetensors"))
    with pytest.raises(RobenchError, match="holds parameters of variant 'qknorm-hs'"):
        create_model("deit-tiny-standard", checkpoint=tmp_path / "hs.safetensors", **TINY)


def test_convert_records_variant_and_refuses_wrong_model(tmp_path, run_cli):
    m = tiny("deit-tiny-qnorm")
    torch.save(m.net.state_dict(), tmp_path / "q.pth")
    code, out, err = run_cli("convert", tmp_path / "q.pth", tmp_path / "q.safetensors", "--model", "deit-tiny-qnorm")
    # --model validates by building the full-size model: a tiny checkpoint does not fit it
    assert code == 2 and "shape mismatch" in err
    from robench.zoo.registry import convert_checkpoint

    meta = convert_checkpoint(tmp_path / "q.pth", tmp_path / "q.safetensors")
    assert meta["variant"] == "unknown"  # qnorm has no parameters of its own: nothing to infer from
    save_file(m.net.state_dict(), str(tmp_path / "tagged.safetensors"), metadata={"variant": "qnorm"})
    with pytest.raises(RobenchError, match="saved for variant 'qnorm'"):
        create_model("deit-tiny-quest", checkpoint=tmp_path / "tagged.safetensors", **TINY)


def test_models_command(run_cli):
    code, out, err = run_cli("models", "--json")
    assert code == 0
    rows = json.loads(out)
    names = {r["name"] for r in rows}
    for v in ATTENTION_VARIANTS:
        assert f"deit-tiny-{v}" in names and f"vit-base-{v}" in names
    assert all(r["params"] > 0 for r in rows)
    code, out, _ = run_cli("models")
    assert code == 0 and "elliptical-quest" in out


def test_version_and_help(run_cli):
    import robench

    code, out, _ = run_cli("--version")
    assert code == 0 and robench.__version__ in out
    code, out, _ = run_cli("--help")
    assert code == 0 and "Examples" in out and "robench eval" in out
    code, out, err = run_cli("no-such-command")
    assert code == 2
