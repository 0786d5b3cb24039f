"""`robench inspect` (attention diagnostics of a model) and `robench toy` (the QUEST toy experiment). Imports inside
the command bodies on purpose (robench/cli.py says why)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from robench.commands.output import console
from robench.data.formats import SPEC_HELP  # light: no torch
from robench.errors import RobenchError


def inspect_(
    model: str = typer.Option(..., "--model", "-m", help="Model, as for `robench eval` (deit-quest, demo-quest, timm:NAME, models.py:Class...)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help="Weights (.safetensors/.pth)."),
    data: str = typer.Option("digits", "--data", help=f"Data spec: {SPEC_HELP}."),
    limit: int = typer.Option(64, "--limit", help="Number of samples."),
    batch_size: int = typer.Option(32, "--batch-size"),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Query rows used for the attention maps."),
    as_json: bool = typer.Option(False, "--json", help="Print the tidy rows as JSON."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Write the tidy rows (layer, head, stat, value)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also record them (and clean accuracy) in this results "
                                                           "store, for `robench report`."),
    corruption: Optional[str] = typer.Option(None, "--corruption", help="Inspect under this corruption instead of clean."),
    severity: int = typer.Option(3, "--severity", help="Severity of --corruption (1-5)."),
    suite: str = typer.Option("imagenet-c", "--suite", help="Parameter set of --corruption (imagenet-c, cifar10-c)."),
    attack: Optional[str] = typer.Option(None, "--attack", help="Inspect the adversarial images of this FGSM/PGD suite."),
    eps: Optional[str] = typer.Option(None, "--eps", help="eps of --attack (default: the suite's largest), e.g. 8/255."),
    random_init: bool = typer.Option(False, "--random-init", help="Inspect random weights on purpose (no checkpoint)."),
):
    """Attention diagnostics per layer and head: query/key norms, attention entropy and peakedness, elliptical m,
    token collapse (mean pairwise cosine of block outputs).

    Example: `robench inspect --model demo-quest --data digits --limit 64 --csv quest_diag.csv`
    """
    from robench.diag import inspect
    from robench.paths import check_file, write_file
    from robench.run import ModelEntry
    from robench.zoo.sources import build_model, check_entry

    _at_least_one(limit=limit, batch_size=batch_size, max_tokens=max_tokens)
    if csv_out is not None:
        check_file(csv_out, "CSV file")
    entry = ModelEntry(model, str(checkpoint) if checkpoint else None, random_init=random_init and not checkpoint)
    check_entry(entry)
    built = build_model(entry)  # once: the store and the diagnostics below share it
    if out is not None:
        from robench.run import Plan, run_plan

        entry.module = built
        run_plan(Plan(models=[entry], data=data, out=str(out), limit=limit, batch_size=batch_size,
                      diagnostics=True, diagnostics_limit=limit, quiet=True,
                      command="robench " + " ".join(sys.argv[1:])))
    df = inspect(built, None, data, limit=limit, batch_size=batch_size, max_tokens=max_tokens,
                 corruption=corruption, severity=severity, suite=suite, attack=attack, eps=eps)
    if csv_out is not None:
        write_file(csv_out, lambda p: df.to_csv(p, index=False), "CSV file")
    if as_json:
        print(df.to_json(orient="records", indent=1))
        return
    _print_layers(df, f"robench inspect {model} on {data} ({limit} samples; mean over heads)")
    if csv_out is not None:
        console.print(f"wrote {csv_out}")


def _at_least_one(**options):
    """Counts that must be >= 1 (None: not given), checked before any work."""
    for name, v in options.items():
        if v is not None and v < 1:
            raise RobenchError(f"--{name.replace('_', '-')} must be >= 1, got {v}")


def _print_layers(df, title: str):
    """inspect's table: per layer, each statistic's mean over heads."""
    from rich.table import Table

    from robench.diag import layer_summary

    summary = layer_summary(df)
    cols = [c for c in ("q_norm_mean", "k_norm_mean", "k_raw_norm_max_over_mean", "attn_entropy_mean",
                        "attn_max_mean", "top_key_share", "m_std", "collapse_cos") if c in summary.columns]
    t = Table(title=title)
    t.add_column("layer", justify="right")
    for c in cols:
        t.add_column(c, justify="right")
    for layer, row in summary.iterrows():
        t.add_row(str(layer), *(f"{row[c]:.3f}" for c in cols))
    console.print(t)


def toy(
    variants: str = typer.Option("standard,qnorm,qknorm,quest", "--variants", help="Comma-separated variants."),
    seeds: int = typer.Option(5, "--seeds", help="Seeds per (variant, lr, wd)."),
    lrs: str = typer.Option("3e-3,1e-2", "--lrs", help="Comma-separated learning rates."),
    wds: str = typer.Option("0,0.1", "--wds", help="Comma-separated AdamW weight decays."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Training steps per run (default: docs/toy.md)."),
    p_biased: Optional[float] = typer.Option(None, "--p-biased", help="Share of biased training samples (0 = control)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Processes (default: one per core, max 4)."),
    out: Path = typer.Option(Path("toy-out"), "--out", help="Output folder (CSV files and toy.png)."),
):
    """The QUEST toy experiment: train one attention layer per (variant, seed, lr, wd) on a task with an easy
    shortcut, and report how often each variant still solves the unbiased task (Wilson 95% intervals).

    Example: `robench toy --variants standard,qnorm,qknorm,quest --seeds 5 --lrs 3e-3,1e-2 --wds 0,0.1 --out toy-out`
    """
    from robench.diag.toy import ToyConfig, check_grid, toy_experiment
    from robench.paths import check_dir

    def floats(text, name):
        try:
            return [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise RobenchError(f"--{name} must be comma-separated numbers, got '{text}'") from None

    overrides = {k: v for k, v in (("steps", steps), ("p_biased", p_biased)) if v is not None}
    cfg = ToyConfig(**overrides)
    names = [v.strip() for v in variants.split(",") if v.strip()]
    lr_values, wd_values = floats(lrs, "lrs"), floats(wds, "wds")
    check_grid(names, seeds, lr_values, wd_values)  # before anything is created
    check_dir(out, "output directory")
    res = toy_experiment(out, names, seeds, lr_values, wd_values, cfg=cfg, workers=workers,
                         progress=lambda r: print(f"  {r['variant']:<10} seed {r['seed']} lr {r['lr']:g} wd {r['wd']:g}:"
                                                  f" unbiased acc {r['test_acc']:.3f}", file=sys.stderr))
    from rich.table import Table

    t = Table(title=f"QUEST toy task: success = unbiased test accuracy >= {cfg.success_acc:g}")
    for col in ("variant", "success", "rate", "95% CI", "unbiased acc", "biased acc"):
        t.add_column(col, justify="left" if col == "variant" else "right")
    for r in res["table"].itertuples():
        t.add_row(r.variant, f"{r.successes}/{r.runs}", f"{100 * r.success_rate:.0f}%",
                  f"{100 * r.ci_low:.0f}–{100 * r.ci_high:.0f}%", f"{r.unbiased_acc:.3f}", f"{r.biased_acc:.3f}")
    console.print(t)
    console.print(f"{len(res['runs'])} runs in {res['seconds']:.0f} s; wrote {res['paths']['runs']}, "
                  f"{res['paths']['plot']}")
