"""The QUEST toy experiment: does an attention variant learn the robust signal, or the easy shortcut?

Each sample is a sequence of N tokens; token = [x ∈ R^D ; one-hot answer part ∈ R^C]. Every token carries a random
one-hot; exactly one token, the *answer token* (random position), carries the label. Non-answer tokens have
x ~ N(0, I); the answer token has x ~ N(0, Σ) with Σ ≠ I (the robust signal, present in every sample). With
probability `p_biased` a training sample is *biased*: its answer token's x ~ N(b, 0.1 I) instead (b fixed for the
task), an easy shortcut. Test samples are unbiased. A run *succeeds* when its accuracy on unbiased test samples
reaches `success_acc`, i.e. it learned to find the answer token from Σ, not only from b.

Model: one self-attention layer of the chosen robench variant (robench.zoo.attention, one head) with linear query,
key and value maps of the raw tokens -> mean over tokens -> linear readout to the classes. See docs/toy.md.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from robench.intervals import wilson
from robench.errors import RobenchError, suggest
from robench.paths import check_dir, write_file
from robench.seeding import derive_seed, generator
from robench.zoo.attention import ATTENTION_VARIANTS, attention_layer

TOY_VARIANTS = ("standard", "qnorm", "qknorm", "quest")


@dataclass
class ToyConfig:
    """Task, model and training hyper-parameters of one toy run (the grid varies variant, seed, lr, wd)."""

    D: int = 16             # real part dimension
    C: int = 8              # one-hot answer part dimension (= number of classes)
    N: int = 16             # tokens per sequence
    sigma_dims: int = 4     # Σ = diag(sigma_var on the first sigma_dims dims, 1 elsewhere)
    sigma_var: float = 25.0  # the answer token's variance on those dims (std 5)
    bias_norm: float = 3.0  # ‖b‖; b is a fixed random direction (task seed)
    bias_var: float = 0.1   # biased answer token: x ~ N(b, bias_var I)
    p_biased: float = 0.5
    width: int = 32         # attention (head) width of the q, k, v maps
    n_train: int = 2048
    n_test: int = 2048
    steps: int = 400
    batch: int = 128
    success_acc: float = 0.8
    task_seed: int = 0      # fixes b
    log_every: int = 10

    def bias_vector(self) -> torch.Tensor:
        b = torch.randn(self.D, generator=generator(derive_seed("toy-b", self.task_seed)))
        return b / b.norm() * self.bias_norm


def make_toy_data(n: int, cfg: ToyConfig, *, seed: int, p_biased: float | None = None) -> dict[str, torch.Tensor]:
    """n seeded samples: tokens [n, N, D+C], label [n], answer position [n], biased flag [n] (bool)."""
    p = cfg.p_biased if p_biased is None else p_biased
    g = generator(seed)
    x = torch.randn(n, cfg.N, cfg.D, generator=g)
    classes = torch.randint(cfg.C, (n, cfg.N), generator=g)
    pos = torch.randint(cfg.N, (n,), generator=g)
    biased = torch.rand(n, generator=g) < p
    std = torch.ones(cfg.D)
    std[: cfg.sigma_dims] = math.sqrt(cfg.sigma_var)
    robust = torch.randn(n, cfg.D, generator=g) * std
    shortcut = cfg.bias_vector() + math.sqrt(cfg.bias_var) * torch.randn(n, cfg.D, generator=g)
    rows = torch.arange(n)
    x[rows, pos] = torch.where(biased[:, None], shortcut, robust)
    tokens = torch.cat([x, F.one_hot(classes, cfg.C).float()], dim=-1)
    return {"tokens": tokens, "label": classes[rows, pos], "pos": pos, "biased": biased}


class ToyModel(nn.Module):
    """One robench self-attention layer (1 head) over the raw tokens, mean-pooled, then a linear readout.

    q_i, k_i, v_i are linear (affine) maps of the token vectors [x_i; one-hot_i]; the variant decides the softmax
    operands (robench.zoo.attention). Output: head(mean_i attn(tokens)_i) -> class logits.
    """

    def __init__(self, variant: str, cfg: ToyConfig):
        super().__init__()
        if variant not in ATTENTION_VARIANTS:
            raise RobenchError(f"unknown attention variant '{variant}'" + suggest(variant, ATTENTION_VARIANTS))
        dim = cfg.D + cfg.C
        self.attn = attention_layer(variant)(dim, num_heads=1, attn_head_dim=cfg.width, qkv_bias=True)
        self.head = nn.Linear(dim, cfg.C)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(seq).mean(1))

    @torch.no_grad()
    def answer_key_norm(self, seq: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Key norm of each sample's answer token before any L2 normalisation (QUEST's raw key; QKNorm: after LN)."""
        _, k, _ = self.attn.qkv_heads(seq)
        return k[torch.arange(len(pos)), 0, pos].norm(dim=-1)


def train_toy(variant: str, seed: int, lr: float, wd: float, cfg: ToyConfig | None = None) -> dict:
    """Train one run on CPU. Returns a dict: accuracies, success flag and the key-norm trace over training."""
    cfg = cfg or ToyConfig()
    train = make_toy_data(cfg.n_train, cfg, seed=derive_seed("toy-train", cfg.task_seed, seed))
    test = make_toy_data(cfg.n_test, cfg, seed=derive_seed("toy-test", cfg.task_seed, seed), p_biased=0.0)
    probe = make_toy_data(512, cfg, seed=derive_seed("toy-probe", cfg.task_seed), p_biased=0.5)
    with torch.random.fork_rng():  # seeded init without touching the caller's global RNG
        torch.manual_seed(derive_seed("toy-init", seed))
        model = ToyModel(variant, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    order = generator(derive_seed("toy-order", seed))
    trace = []
    t0 = time.perf_counter()
    for step in range(cfg.steps + 1):
        if step % cfg.log_every == 0 or step == cfg.steps:
            kn = model.answer_key_norm(probe["tokens"], probe["pos"])
            trace.append((step, kn[probe["biased"]].mean().item(), kn[~probe["biased"]].mean().item()))
        if step == cfg.steps:
            break
        idx = torch.randint(cfg.n_train, (cfg.batch,), generator=order)
        loss = F.cross_entropy(model(train["tokens"][idx]), train["label"][idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(test["tokens"]).argmax(-1) == test["label"]).float().mean().item()
        biased = make_toy_data(cfg.n_test, cfg, seed=derive_seed("toy-test-b", cfg.task_seed, seed), p_biased=1.0)
        acc_b = (model(biased["tokens"]).argmax(-1) == biased["label"]).float().mean().item()
        train_acc = (model(train["tokens"]).argmax(-1) == train["label"]).float().mean().item()
    return {"variant": variant, "seed": seed, "lr": lr, "wd": wd, "test_acc": acc, "biased_acc": acc_b,
            "train_acc": train_acc, "final_loss": loss.item(), "success": acc >= cfg.success_acc,
            "seconds": time.perf_counter() - t0, "trace": trace}


def _run(args):
    variant, seed, lr, wd, cfg = args
    torch.set_num_threads(1)
    return train_toy(variant, seed, lr, wd, cfg)


RUN_COLUMNS = ["variant", "seed", "lr", "wd", "test_acc", "biased_acc", "train_acc", "final_loss", "success",
               "key_norm_biased", "key_norm_unbiased", "seconds"]


def check_grid(variants, seeds, lrs, wds) -> None:
    """The grid's values, checked before any work or output: known variants, at least one seed, lr and wd."""
    if not list(variants):
        raise RobenchError("toy grid is empty: give at least one --variants value")
    for v in variants:
        if v not in ATTENTION_VARIANTS:
            raise RobenchError(f"unknown attention variant '{v}'" + suggest(v, ATTENTION_VARIANTS)
                               + f"; variants: {', '.join(ATTENTION_VARIANTS)}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1 or not lrs or not wds:
        raise RobenchError(f"toy grid is empty: need --seeds >= 1 (got {seeds}) and at least one --lrs and --wds "
                           "value")
    if any(not (math.isfinite(float(v)) and float(v) > 0) for v in lrs):
        raise RobenchError(f"--lrs must be finite numbers > 0, got {', '.join(map(str, lrs))}")
    if any(not (math.isfinite(float(v)) and float(v) >= 0) for v in wds):
        raise RobenchError(f"--wds must be finite numbers >= 0, got {', '.join(map(str, wds))}")


def run_toy_grid(variants=TOY_VARIANTS, seeds: int = 5, lrs=(3e-3, 1e-2), wds=(0.0, 0.1), *,
                 cfg: ToyConfig | None = None, workers: int | None = None, progress=None):
    """Train every (variant, seed, lr, wd) run. Returns (runs, traces) DataFrames.

    runs: one row per run (RUN_COLUMNS); traces: variant, seed, lr, wd, step, key_norm_biased, key_norm_unbiased
    (mean raw key norm of the answer token on fixed probe samples, over training). Runs go to `workers` processes
    (default: one per CPU core, at most 4), one torch thread each; results do not depend on `workers`.
    """
    import os

    import pandas as pd

    cfg = cfg or ToyConfig()
    check_grid(variants, seeds, lrs, wds)
    jobs = [(v, s, float(lr), float(wd), cfg) for v in variants for lr in lrs for wd in wds for s in range(seeds)]
    workers = workers or min(4, os.cpu_count() or 1)
    results = []
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            for r in pool.imap(_run, jobs):
                results.append(r)
                if progress:
                    progress(r)
    else:
        threads = torch.get_num_threads()
        try:
            for job in jobs:
                results.append(_run(job))
                if progress:
                    progress(results[-1])
        finally:
            torch.set_num_threads(threads)
    runs, traces = [], []
    for r in results:
        trace = r.pop("trace")
        r["key_norm_biased"], r["key_norm_unbiased"] = trace[-1][1], trace[-1][2]
        runs.append(r)
        traces += [(r["variant"], r["seed"], r["lr"], r["wd"], *t) for t in trace]
    runs = pd.DataFrame(runs)[RUN_COLUMNS]
    traces = pd.DataFrame(traces, columns=["variant", "seed", "lr", "wd", "step", "key_norm_biased",
                                           "key_norm_unbiased"])
    return runs, traces


def success_table(runs):
    """Per variant: runs, successes, success rate with its 95% Wilson interval, mean test accuracies."""
    import pandas as pd

    rows = []
    for variant, g in runs.groupby("variant", sort=False):
        k, n = int(g["success"].sum()), len(g)
        lo, hi = wilson(k, n)
        rows.append({"variant": variant, "runs": n, "successes": k, "success_rate": k / n, "ci_low": lo,
                     "ci_high": hi, "unbiased_acc": g["test_acc"].mean(), "biased_acc": g["biased_acc"].mean()})
    return pd.DataFrame(rows)


def plot_toy(runs, traces, path) -> None:
    """Success rate per variant (Wilson 95% bars) and the answer token's key norm over training (biased vs not)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = success_table(runs)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    x = range(len(table))
    rate = table["success_rate"].to_numpy()
    ax1.bar(x, rate, color="C0")
    ax1.errorbar(x, rate, yerr=[rate - table["ci_low"].to_numpy(), table["ci_high"].to_numpy() - rate],
                 fmt="none", ecolor="k", capsize=4)
    ax1.set_xticks(list(x), table["variant"])
    ax1.set_ylim(0, 1)
    ax1.set_ylabel("success rate (unbiased test)")
    ax1.set_title(f"QUEST toy task: {len(runs)} runs")
    mean = traces.groupby(["variant", "step"], sort=False)[["key_norm_biased", "key_norm_unbiased"]].mean()
    for i, variant in enumerate(table["variant"]):
        t = mean.loc[variant]
        ax2.plot(t.index, t["key_norm_biased"], color=f"C{i}", label=f"{variant} biased")
        ax2.plot(t.index, t["key_norm_unbiased"], color=f"C{i}", ls="--", label=f"{variant} unbiased")
    ax2.set_xlabel("training step")
    ax2.set_ylabel("answer token raw key norm")
    ax2.set_title("key norm of the answer token (mean over runs)")
    ax2.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def toy_experiment(out, variants=TOY_VARIANTS, seeds: int = 5, lrs=(3e-3, 1e-2), wds=(0.0, 0.1), *,
                   cfg: ToyConfig | None = None, workers: int | None = None, progress=None) -> dict:
    """Run the grid and write OUT/toy_runs.csv, OUT/toy_trace.csv, OUT/toy_success.csv and OUT/toy.png.

    Returns {"runs", "traces", "table" (DataFrames), "seconds", "paths"}.
    """
    out = Path(out)
    check_grid(variants, seeds, lrs, wds)
    check_dir(out, "output directory")
    t0 = time.perf_counter()
    runs, traces = run_toy_grid(variants, seeds, lrs, wds, cfg=cfg, workers=workers, progress=progress)
    seconds = time.perf_counter() - t0
    table = success_table(runs)
    paths = {"runs": out / "toy_runs.csv", "trace": out / "toy_trace.csv", "table": out / "toy_success.csv",
             "plot": out / "toy.png"}
    for key, df in (("runs", runs), ("trace", traces), ("table", table)):
        write_file(paths[key], lambda p, df=df: df.to_csv(p, index=False), "toy CSV")
    write_file(paths["plot"], lambda p: plot_toy(runs, traces, p), "toy plot")
    return {"runs": runs, "traces": traces, "table": table, "seconds": seconds, "paths": paths,
            "config": asdict(cfg or ToyConfig())}
