"""The CI regression gate on the demo zoo: an unchanged model passes, a degraded checkpoint fails (exit 1)."""

import pytest
import torch
from safetensors.torch import save_file

from robench.run import ModelEntry, Plan, export, run_plan
from robench.run.store import Store
from robench.zoo.registry import create_model


def gate_plan(out, checkpoint=None):
    return Plan(models=[ModelEntry("demo-quest", checkpoint=checkpoint, label="demo-quest")], data="digits:test",
                limit=160, corruptions=["cifar10-c"], corruption_names=["fog"], severities=[3], attacks=["fgsm"],
                eps=[2 / 255], out=str(out), quiet=True, sanity_probe=False)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    d = tmp_path_factory.mktemp("gate")
    run_plan(gate_plan(d / "base"))
    return export(Store(d / "base"), d / "baseline.csv"), d


def test_unchanged_model_passes(baseline, run_cli):
    csv, d = baseline
    run_plan(gate_plan(d / "same"))
    code, out, err = run_cli("check", "--baseline", csv, "--store", d / "same")
    assert code == 0, out + err
    assert "regression" not in out.lower().replace("no regression", "")


def test_degraded_checkpoint_fails(baseline, run_cli):
    csv, d = baseline
    net = create_model("demo-quest").net
    g = torch.Generator().manual_seed(0)
    noised = {k: v + 0.35 * v.std() * torch.randn(v.shape, generator=g) if v.ndim > 1 else v
              for k, v in net.state_dict().items()}
    save_file(noised, str(d / "noised.safetensors"))
    run_plan(gate_plan(d / "noised", checkpoint=str(d / "noised.safetensors")))
    code, out, err = run_cli("check", "--baseline", csv, "--store", d / "noised")
    assert code == 1, out + err
    assert "regression" in out
