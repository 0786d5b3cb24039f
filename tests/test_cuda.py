"""GPU checks (pytest -m cuda; every test is skipped without CUDA): counter-based draws CPU == GPU, the engine's
outcomes on CUDA == CPU, attention variants on CUDA == CPU, bf16 hits confirmed in fp32, compile (CUDA graphs
with fixed shapes) == eager, and a whole `robench eval` on CUDA == CPU fp32."""


import pandas as pd
import pytest
import torch

from robench.attack import make_spec, run_attack
from robench.attack.draws import row_keys, uniform, uniform_start
from robench.zoo.registry import create_model

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def tiny(variant="standard", seed=0):
    torch.manual_seed(seed)
    return create_model(f"deit-tiny-{variant}", num_classes=10, depth=2, embed_dim=32, num_heads=2, img_size=32,
                        patch_size=8)


def test_draws_cpu_equal_gpu():
    seeds = [3, 2 ** 62 + 1, 99, 12345]
    assert torch.equal(uniform(row_keys(seeds, "start", 1, "cpu"), 3000),
                       uniform(row_keys(seeds, "start", 1, "cuda"), 3000).cpu())
    a = uniform_start(row_keys(seeds, "start", 0, "cpu"), (3, 8, 8), "Linf", torch.float32)
    b = uniform_start(row_keys(seeds, "start", 0, "cuda"), (3, 8, 8), "Linf", torch.float32)
    assert torch.equal(a, b.cpu())
    a = uniform_start(row_keys(seeds, "start", 0, "cpu"), (3, 8, 8), "L2", torch.float64)
    b = uniform_start(row_keys(seeds, "start", 0, "cuda"), (3, 8, 8), "L2", torch.float64)
    assert torch.allclose(a, b.cpu(), rtol=1e-12, atol=1e-14)  # log/cos: equal up to the last ulps


@pytest.mark.parametrize("norm,eps", [("Linf", (1 / 255, 4 / 255, 16 / 255)), ("L2", (0.1, 0.5))])
def test_engine_cuda_equals_cpu_float64(norm, eps):
    model = tiny().double()
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    spec = make_spec("pgd", norm=norm, eps=eps, steps=5, random_start=True)
    cpu = run_attack(model, x, y, spec, list(range(16)))
    for kw in (dict(), dict(compact_every=0), dict(strict=True)):
        gpu = run_attack(model.cuda(), x.cuda(), y.cuda(), spec, list(range(16)), **kw)
        model.cpu()
        assert torch.equal(gpu.robust.cpu(), cpu.robust) and torch.equal(gpu.adv_pred.cpu(), cpu.adv_pred), kw


@pytest.mark.parametrize("variant", ["standard", "quest", "qnorm", "qknorm", "qknorm-hs", "qknorm-ds",
                                     "elliptical", "elliptical-quest"])
def test_attention_variant_cuda_equals_cpu(variant):
    model = tiny(variant).eval()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
        out = model.cuda()(x.cuda()).cpu()
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)
    xg = x.cuda().requires_grad_(True)
    model(xg).logsumexp(1).sum().backward()
    xc = x.clone().requires_grad_(True)
    model.cpu()(xc).logsumexp(1).sum().backward()
    assert torch.allclose(xg.grad.cpu(), xc.grad, atol=1e-4, rtol=1e-3)


def test_bf16_hits_confirmed_on_cuda():
    from tests.test_attack_engine import NearTie

    m = NearTie().eval().cuda()
    x = torch.full((4, 3, 4, 4), 0.5, device="cuda")
    y = torch.ones(4, dtype=torch.long, device="cuda")
    spec = make_spec("pgd", eps=(1e-4,), steps=3)
    fp32 = run_attack(m, x, y, spec, [0, 1, 2, 3])
    bf16 = run_attack(m, x, y, spec, [0, 1, 2, 3], amp_dtype=torch.bfloat16)
    assert torch.equal(bf16.robust, fp32.robust) and bf16.info["rejected_hits"][0] >= 4


@pytest.mark.slow
def test_compile_and_cuda_graphs_equal_eager_on_cuda():
    model = tiny().cuda().eval()
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(2)).cuda()
    with torch.no_grad():
        y = model(x).argmax(1)
    spec = make_spec("pgd", eps=(2 / 255, 8 / 255), steps=4)
    eager = run_attack(model, x, y, spec, list(range(16)))
    for kw in (dict(compile=True), dict(compile=True, compact_every=0)):  # the second uses CUDA graphs
        out = run_attack(model, x, y, spec, list(range(16)), **kw)
        assert torch.equal(out.robust, eager.robust) and torch.equal(out.adv_pred, eager.adv_pred), kw


def _outcomes(out) -> pd.DataFrame:
    from robench.run import Store

    return Store(out, readonly=True).query("SELECT c.threat, c.attack, c.eps, c.corruption, c.severity, o.sample, "
                                           "o.correct FROM outcomes o JOIN cells c USING(cell_id) "
                                           "ORDER BY c.cell_id, o.sample")


@pytest.mark.slow
def test_eval_on_cuda_equals_cpu_fp32(tmp_path, run_cli):
    """A whole `robench eval` (clean, corruptions, FGSM/PGD) on CUDA gives the CPU's per-sample outcomes, up to
    the documented tolerance: at most 1 % of the outcomes differ (float32 kernels differ between devices, so a
    sample on a decision boundary may flip; see docs/performance.md)."""
    args = ["eval", "--model", "demo-quest", "--data", "digits", "--limit", "128", "--corruptions", "cifar10-c",
            "--corruption", "gaussian_noise", "--corruption", "fog", "--attack", "pgd", "-q"]
    code, _, err = run_cli(*args, "--device", "cpu", "--out", tmp_path / "cpu")
    assert code == 0, err
    code, _, err = run_cli(*args, "--device", "cuda", "--out", tmp_path / "cuda")
    assert code == 0, err
    a, b = _outcomes(tmp_path / "cpu"), _outcomes(tmp_path / "cuda")
    assert len(a) == len(b) and (a.drop(columns="correct") == b.drop(columns="correct")).all().all()
    assert (a.correct != b.correct).mean() <= 0.01
