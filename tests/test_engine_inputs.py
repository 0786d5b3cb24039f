"""Hostile inputs of the plan and the engine (issue 21): each is one `robench: error:` line, exit 2, nothing
written; models that break the per-batch checks or raise mid-run are named with the cell and the batch, the run
is marked failed and its finished chunks are kept."""

import re

import pytest
import torch

import robench
from robench.errors import RobenchError
from robench.run import Store

MODELS = '''
import torch
from torch import nn


class Base(nn.Module):
    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 10)
        self.calls = 0
        self.fail_at = None  # forward call that raises

    def logits(self, x):
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise ValueError("boom inside forward")
        return self.fc(self.pool(x).flatten(1))

    def forward(self, x):
        return self.logits(x)


class WideAfter2(Base):  # right shape for the two-image check only
    def forward(self, x):
        out = self.logits(x)
        return out if len(x) <= 2 else torch.cat([out, out[:, :1]], 1)


class TrainsItself(Base):
    def forward(self, x):
        self.train()
        return self.logits(x)


class NoGrad(Base):
    def forward(self, x):
        with torch.no_grad():
            return self.logits(x)


class RaisesLater(Base):
    def forward(self, x):
        if len(x) > 2:
            raise RuntimeError("shapes do not match for batch > 2")
        return self.logits(x)
'''


def _tree(root):
    return {str(p.relative_to(root)): (p.is_dir(), 0 if p.is_dir() else p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*")}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("engine-bad")
    (d / "models.py").write_text(MODELS)
    plan = 'data = "digits"\nlimit = 8\nout = "{out}"\n{extra}\n[[models]]\nname = "demo-standard"\n'
    (d / "diag.toml").write_text(plan.format(out=d / "p1", extra="diagnostics = true\ndiagnostics_limit = -1"))
    (d / "workers.toml").write_text(plan.format(out=d / "p2", extra="workers = -2"))
    (d / "eps.toml").write_text(plan.format(out=d / "p3", extra='eps = ["2/255"]'))
    (d / "ckpts.toml").write_text("checkpoints = 5\n")
    return d


EVAL = ["eval", "-m", "demo-quest", "-d", "digits", "--limit", "8"]
USER = ["eval", "-q", "-m", "{d}/models.py:{cls}", "-d", "digits", "--limit", "8", "--batch-size", "4"]
BAD_INPUTS = [
    (["sweep", "{d}/diag.toml"], r"diagnostics_limit must be >= 1 \(got -1\)"),
    (["sweep", "{d}/workers.toml"], r"workers must be >= 0"),
    (["sweep", "{d}/eps.toml"], r"--eps \(plan: eps\) sets the eps of attacks: give --attack too"),
    ([*EVAL, "--config", "{d}/ckpts.toml", "--out", "{d}/r0"], r"`checkpoints` must be a table of name = path"),
    ([*EVAL, "--seed", "99999999999999999999999", "--out", "{d}/r1"], r"seed must be an integer in 0\.\."),
    ([*EVAL, "--seed", "-1", "--out", "{d}/r1"], r"seed must be an integer in 0\.\."),
    ([*EVAL, "--eps", "8/255", "--out", "{d}/r2"], r"--eps .* give --attack too"),
    ([*EVAL, "--corruption", "fog", "--out", "{d}/r3"], r"--corruption .* give --corruptions too"),
    ([*EVAL, "--std", "inf", "--mean", "0.5", "--out", "{d}/r4"], r"--std values must be finite numbers in \(0, 1\]"),
    ([*EVAL, "--mean", "nan", "--std", "0.5", "--out", "{d}/r5"], r"--mean values must be finite"),
    ([*EVAL, "--mean", "125,122,114", "--std", "60,60,60", "--out", "{d}/r6"], r"not 0-255 units"),
    ([*EVAL, "--mean", "0.5,0.5", "--std", "0.2", "--out", "{d}/r7"], r"--mean must be 1 or 3 .*numbers"),
    ([*USER, "--mean", "0.5", "--out", "{d}/r8"], r"--mean and --std go together"),
    ([*USER, "--std", "0.5", "--out", "{d}/r9"], r"--mean and --std go together"),
    ([*USER, "--out", "{d}/r10"], r"model .*WideAfter2 returned logits of shape \(4, 11\) for a batch of 4 images; "
     r"expected \(4, 10\) \(cell clean, batch of samples 0\.\.3\)"),
    ([*USER, "--out", "{d}/r11"], r"model .*TrainsItself put net in training mode during its forward.*"
     r"\(cell clean, batch of samples 0\.\.3\)"),
    ([*USER, "--out", "{d}/r12"], r"model .*RaisesLater failed on cell clean, batch of samples 0\.\.3: RuntimeError: "
     r"shapes do not match"),
    ([*USER, "-a", "fgsm", "--out", "{d}/r13"], r"model .*NoGrad failed on cell fgsm Linf, batch of samples \d+\.\.\d+: "
     r"RuntimeError: .*does its forward run under torch\.no_grad\(\)"),
]
CLASSES = {10: "WideAfter2", 11: "TrainsItself", 12: "RaisesLater", 13: "NoGrad", 8: "Base", 9: "Base"}


@pytest.mark.parametrize("args,msg", BAD_INPUTS, ids=[" ".join(a[-3:]) for a, _ in BAD_INPUTS])
def test_bad_input_one_line_exit_2_nothing_written(world, run_cli, args, msg):
    out = args[-1]
    cls = CLASSES.get(int(out.rsplit("/r", 1)[1]), "Base") if "/r" in out else "Base"
    before = _tree(world)
    code, text, err = run_cli(*[a.format(d=world, cls=cls) for a in args])
    assert code == 2, (args, text, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("robench: error: "), err
    assert "Traceback" not in err + text
    assert re.search(msg, lines[0]), (msg, lines[0])
    assert _tree(world) == before  # the first chunk failed: no outcome, so the store is removed again


def test_mean_none_is_no_normalisation(world, tmp_path, run_cli):
    code, text, err = run_cli("eval", "-m", f"{world}/models.py:Base", "-d", "digits", "--limit", "8", "--mean",
                              "none", "--out", tmp_path / "o", "--json")
    assert code == 0, err
    params = Store(tmp_path / "o").cells().params_json.iloc[0]
    assert '"mean": [0.0, 0.0, 0.0]' in params and '"std": [1.0, 1.0, 1.0]' in params


def _load(world, name):
    import importlib.util

    spec = importlib.util.spec_from_file_location("engine_bad_models", world / "models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, name)()


def test_a_model_failing_mid_run_keeps_its_chunks_and_resumes(world, tmp_path):
    net = _load(world, "Base")
    net.fail_at = 4  # call 1: the two-image check; 2, 3: chunks 0 and 1; 4: chunk 2 raises
    kw = dict(limit=32, batch_size=8, device="cpu", out=tmp_path / "s", label="net")
    (tmp_path / "robench.toml").write_text("chunk_size = 8\n")  # 8 samples per chunk: 4 chunks
    with pytest.raises(RobenchError, match=r"model net failed on cell clean, batch of samples 16\.\.23: ValueError: "
                                           r"boom inside forward"):
        robench.evaluate(net, "digits", config=tmp_path / "robench.toml", **kw)
    s = Store(tmp_path / "s")
    assert s.runs().status.tolist() == ["failed"]
    cid = int(s.cells().cell_id.iloc[0])
    assert s.done_chunks(cid) == {0, 1}
    s.close()
    net.fail_at, net.calls = None, 0
    df = robench.evaluate(net, "digits", config=tmp_path / "robench.toml", **kw)
    assert net.calls == 1 + 2  # the check, then only the two chunks that were missing
    assert df.n.iloc[0] == 32 and Store(tmp_path / "s").runs().status.tolist() == ["failed", "done"]


def test_evaluate_names_a_tensor_given_as_data_without_printing_it():
    x = torch.zeros(64, 3, 32, 32)
    with pytest.raises(RobenchError) as e:
        robench.evaluate(torch.nn.Identity(), x)
    msg = str(e.value)
    assert "got a Tensor of shape (64, 3, 32, 32)" in msg and len(msg.splitlines()) == 1 and len(msg) < 200
