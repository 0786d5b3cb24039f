"""The QUEST toy experiment: data generator, model, grid outputs, CLI."""

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from robench.diag.toy import (RUN_COLUMNS, ToyConfig, ToyModel, make_toy_data, toy_experiment, train_toy,
                              wilson)
from robench.errors import RobenchError

TINY = ToyConfig(n_train=64, n_test=64, steps=4, batch=16, log_every=2, width=8)


def test_data_shapes_labels_and_biased_fraction():
    cfg = ToyConfig()
    d = make_toy_data(4000, cfg, seed=3)
    assert d["tokens"].shape == (4000, cfg.N, cfg.D + cfg.C)
    onehot = d["tokens"][..., cfg.D:]
    assert torch.all(onehot.sum(-1) == 1) and set(onehot.unique().tolist()) == {0.0, 1.0}
    rows = torch.arange(4000)
    assert torch.equal(onehot[rows, d["pos"]].argmax(-1), d["label"])  # the label is the answer token's one-hot
    assert abs(d["biased"].float().mean().item() - 0.5) < 0.03
    assert abs(d["pos"].float().mean().item() - (cfg.N - 1) / 2) < 0.3  # answer position roughly uniform
    assert not make_toy_data(500, cfg, seed=3, p_biased=0.0)["biased"].any()
    assert make_toy_data(500, cfg, seed=3, p_biased=1.0)["biased"].all()


def test_answer_token_statistics():
    cfg = ToyConfig()
    d = make_toy_data(6000, cfg, seed=5)
    x = d["tokens"][..., : cfg.D]
    rows = torch.arange(len(x))
    answer = x[rows, d["pos"]]
    b = cfg.bias_vector()
    assert b.norm().item() == pytest.approx(cfg.bias_norm)
    biased, robust = answer[d["biased"]], answer[~d["biased"]]
    assert torch.allclose(biased.mean(0), b, atol=0.05)
    assert torch.allclose(biased.var(0), torch.full((cfg.D,), cfg.bias_var), atol=0.02)
    var = robust.var(0)
    assert torch.allclose(var[: cfg.sigma_dims], torch.full((cfg.sigma_dims,), cfg.sigma_var), rtol=0.15)
    assert torch.allclose(var[cfg.sigma_dims:], torch.ones(cfg.D - cfg.sigma_dims), atol=0.12)
    assert torch.all(robust.mean(0).abs() < 4 * robust.std(0) / math.sqrt(len(robust)))
    mask = torch.ones(x.shape[:2], dtype=torch.bool)
    mask[rows, d["pos"]] = False
    others = x[mask]
    assert others.mean(0).abs().max() < 0.03 and (others.var(0) - 1).abs().max() < 0.05


def test_generator_is_deterministic_per_seed():
    cfg = ToyConfig()
    a, b, c = (make_toy_data(50, cfg, seed=s) for s in (1, 1, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["tokens"], c["tokens"])


@pytest.mark.parametrize("variant", ["standard", "qnorm", "qknorm", "quest"])
def test_model_is_one_self_attention_layer_over_linear_maps_of_the_tokens(variant):
    torch.manual_seed(0)
    cfg = ToyConfig()
    model = ToyModel(variant, cfg)
    if variant == "qknorm":  # non-trivial LayerNorm affine parameters
        for p in (*model.attn.q_norm.parameters(), *model.attn.k_norm.parameters()):
            p.data.uniform_(0.5, 1.5)
    d = make_toy_data(8, cfg, seed=0)
    seq = d["tokens"]
    q, k, v = (seq @ model.attn.qkv.weight.T + model.attn.qkv.bias).split(cfg.width, dim=-1)
    raw_k = k
    if variant == "standard":
        logits = q @ k.mT / math.sqrt(cfg.width)
    elif variant == "quest":  # unit keys, no scale
        logits = q @ (k / k.norm(dim=-1, keepdim=True)).mT
    elif variant == "qnorm":
        logits = (q / q.norm(dim=-1, keepdim=True)) @ k.mT
    else:
        qn, kn = model.attn.q_norm, model.attn.k_norm
        k = raw_k = F.layer_norm(k, (cfg.width,), kn.weight, kn.bias, kn.eps)  # QKNorm's key is the LN output
        logits = F.layer_norm(q, (cfg.width,), qn.weight, qn.bias, qn.eps) @ k.mT / math.sqrt(cfg.width)
    out = model.attn.proj(logits.softmax(dim=-1) @ v).mean(dim=1)  # mean over tokens
    with torch.no_grad():
        assert torch.allclose(model(seq), model.head(out), atol=1e-5)
        assert torch.allclose(model.answer_key_norm(seq, d["pos"]), raw_k[torch.arange(8), d["pos"]].norm(dim=-1),
                              atol=1e-5)


def test_robust_signal_is_learnable_without_the_shortcut():
    cfg = ToyConfig(p_biased=0.0, steps=150, n_train=1024, n_test=512)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the grid's workers; avoids thread thrashing on a loaded machine
    try:
        r = train_toy("quest", 0, 1e-2, 0.0, cfg)
    finally:
        torch.set_num_threads(threads)
    assert r["test_acc"] > 0.5  # chance is 1/C = 0.125


def test_train_is_deterministic_and_reports_a_trace():
    r1, r2 = (train_toy("quest", 0, 1e-2, 0.0, TINY) for _ in range(2))
    for k in ("test_acc", "biased_acc", "final_loss"):
        assert r1[k] == r2[k]
    assert r1["trace"] == r2["trace"] and [t[0] for t in r1["trace"]] == [0, 2, 4]
    assert r1["success"] == (r1["test_acc"] >= TINY.success_acc)
    assert train_toy("quest", 1, 1e-2, 0.0, TINY)["final_loss"] != r1["final_loss"]


def test_tiny_grid_writes_csv_and_plot(tmp_path):
    res = toy_experiment(tmp_path, ["standard", "quest"], seeds=2, lrs=[1e-2], wds=[0.0, 0.1], cfg=TINY, workers=1)
    runs = pd.read_csv(tmp_path / "toy_runs.csv")
    assert list(runs.columns) == RUN_COLUMNS and len(runs) == 8
    assert set(runs["variant"]) == {"standard", "quest"} and set(runs["wd"]) == {0.0, 0.1}
    trace = pd.read_csv(tmp_path / "toy_trace.csv")
    assert len(trace) == 8 * 3 and {"step", "key_norm_biased", "key_norm_unbiased"} <= set(trace.columns)
    table = res["table"]
    assert list(table["runs"]) == [4, 4]
    for r in table.itertuples():
        assert r.ci_low <= r.success_rate <= r.ci_high
    png = (tmp_path / "toy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_wilson_interval():
    lo, hi = wilson(5, 10)
    assert lo < 0.5 < hi and lo == pytest.approx(1 - hi)
    assert wilson(0, 20)[0] == 0.0 and wilson(20, 20)[1] == 1.0
    assert all(math.isnan(v) for v in wilson(0, 0))


def test_bad_variant_is_a_clear_error(tmp_path):
    with pytest.raises(RobenchError, match="unknown attention variant 'qest'.*quest"):
        toy_experiment(tmp_path, ["qest"], seeds=1, lrs=[1e-3], wds=[0.0], cfg=TINY, workers=1)


def test_cli_toy(tmp_path, capsys):
    from robench.cli import main

    with pytest.raises(SystemExit) as e:
        main(["toy", "--variants", "standard,quest", "--seeds", "1", "--lrs", "1e-2", "--wds", "0", "--steps", "3",
              "--workers", "1", "--out", str(tmp_path)])
    assert e.value.code == 0
    assert "quest" in capsys.readouterr().out
    assert (tmp_path / "toy.png").exists() and len(pd.read_csv(tmp_path / "toy_runs.csv")) == 2
    with pytest.raises(SystemExit) as e:
        main(["toy", "--lrs", "fast", "--out", str(tmp_path)])
    assert e.value.code == 2
