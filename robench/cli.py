"""The `robench` command: Typer commands over the library (robench.run, robench.report, robench.diag, ...); each
command validates its options, calls one library function and prints. Each command's docstring is its help.

Each command imports what it runs inside its own body, on purpose: torch and timm take ~3.6 s to import on the
2-core CI machine, while `robench --help` takes 0.11 s and `robench models` 0.17 s with the imports where they are
(robench models must stay under 2 s, issue 15). These are the only deliberate function-level imports of this file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from robench._version import __version__
from robench.errors import RobenchError

def _flag_type_hidden():
    """Typer (0.2x with click 8.2+) shows a `<bool>` type beside every on/off flag, --help included; a flag takes no
    value, so its help row shows none."""
    try:
        from typer.core import TyperOption
    except ImportError:  # another typer layout: its own help rows
        return
    shown = TyperOption.display_type_rich

    def display_type_rich(self, ctx):
        return None if getattr(self, "is_flag", False) and self.metavar is None else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich


_flag_type_hidden()
app = typer.Typer(
    name="robench",
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="markdown",
    help="""Benchmark the robustness of image classifiers (QUEST, Elliptical, QKNorm... attention) to corruptions and
adversarial attacks.

**Examples**

* `robench demo` (the whole tool on the built-in digits zoo, CPU, under a minute)

* `robench models`

* `robench eval --model deit-quest --checkpoint quest_tiny.pth --data imagenet:/data/val --attack pgd`

* `robench sweep plan.toml`

* `robench leaderboard results/` and `robench report results/`

* `robench check --baseline results/demo-baseline.csv`
""",
)
console = Console(width=None if sys.stdout.isatty() else 160)  # full tables in logs and pipes


def _version(value: bool):
    if value:
        print(f"robench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    """robench: robustness benchmarks for attention variants."""


@app.command()
def models(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    variant: Optional[str] = typer.Option(None, help="Only this attention variant."),
):
    """List every registered model: name, arch, variant, params, input size, eval crop, normalisation.

    Example: `robench models --variant quest`
    """
    from robench.zoo.catalog import VARIANTS, catalog

    if variant is not None and variant not in VARIANTS:
        from robench.errors import suggest

        raise RobenchError(f"unknown variant '{variant}'" + suggest(variant, VARIANTS)
                           + f"; variants: {', '.join(VARIANTS)}")
    infos = [i for i in catalog() if variant is None or i["variant"] == variant]
    if as_json:
        print(json.dumps(infos, indent=1))
        return
    from rich.table import Table

    t = Table(title=f"robench models ({len(infos)})")
    for col in ("name", "arch", "variant", "params", "input", "crop", "mean", "std"):
        t.add_column(col, justify="right" if col == "params" else "left")
    for i in infos:
        side = i["input_size"][-1]
        crop = f"{i['crop_pct']:g} ({int(side / i['crop_pct'])}->{side})" if i["crop_pct"] < 1 else "none"
        t.add_row(i["name"], i["arch"], i["variant"], f"{i['params'] / 1e6:.2f}M", "x".join(map(str, i["input_size"])),
                  crop, ",".join(f"{m:.3f}" for m in i["mean"]), ",".join(f"{s:.3f}" for s in i["std"]))
    console.print(t)
    console.print("crop: the eval transform on image folders (resize the short side to input/crop, centre-crop to "
                  "input); deit-* use their authors' 0.875 (256->224), vit-* timm's cfg.")
    console.print("Any timm model also works as timm:<name> (e.g. timm:resnet50).")


@app.command()
def convert(
    src: Path = typer.Argument(..., help="Checkpoint to convert (.pth/.pt/.bin/.safetensors)."),
    dst: Path = typer.Argument(..., help="Output .safetensors file."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Validate against this model and record it."),
    key: Optional[str] = typer.Option(None, "--key", help="Entry holding the weights ('model', 'model_ema', ...)."),
    force: bool = typer.Option(False, "--force", help="Overwrite DST if it exists."),
):
    """Write a clean safetensors copy of a checkpoint, with metadata (arch, variant, source hash).

    Example: `robench convert deit_quest.pth deit_quest.safetensors --model deit-tiny-quest`
    """
    from robench.paths import check_file
    from robench.zoo.registry import convert_checkpoint

    check_file(dst, "output checkpoint", overwrite=force)

    meta = convert_checkpoint(src, dst, model=model, key=key)
    console.print(f"wrote {dst} (variant {meta.get('variant')}, arch {meta.get('arch')})")


def _progress(quiet: bool):
    """A rich progress display on a terminal; None (plain log lines) when not a TTY or --quiet."""
    if quiet or not sys.stderr.isatty():
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.text import Text

    class Speed(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed:.1f} samples/s" if task.speed else "")

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Speed(),
                    TimeRemainingColumn(), console=Console(stderr=True))


def _run_and_print(plan, as_json: bool):
    from robench.run import run_plan, summarize, summary_notes

    progress = _progress(plan.quiet)
    if progress is not None:
        with progress:
            results = run_plan(plan, progress)
    else:
        results = run_plan(plan)
    if results is None:  # torchrun: ranks other than 0 print nothing
        return
    if as_json:
        print(results.to_json(orient="records", indent=1))
        return
    from rich.table import Table

    t = Table(title=f"robench results ({plan.out})")
    for col in ("model", "weights", "threat", "n", "accuracy", "95% CI"):
        t.add_column(col, justify="right" if col in ("n", "accuracy", "95% CI") else "left")
    summary = summarize(results)
    for r in summary.itertuples():
        ci = "" if r.ci_low is None or r.ci_low != r.ci_low else f"{100 * r.ci_low:.1f}–{100 * r.ci_high:.1f}"
        t.add_row(r.model, r.weights, r.threat, str(r.n), f"{100 * r.value:.2f}%", ci)
    console.print(t)
    for line in summary_notes(summary):
        console.print(line, markup=False, highlight=False)
    console.print(f"store: {Path(plan.out) / 'robench.sqlite'}  (robench leaderboard {plan.out} / robench report {plan.out})")


from robench.data.formats import SPEC_HELP  # noqa: E402  (light: no torch)

MODEL_REF_HELP = ("Model (repeatable): a registered name (robench models, e.g. deit-quest), timm:NAME, "
                  "path/to/models.py:Class or package.module:factory (a class or function returning an nn.Module; "
                  "IMPORTING IT RUNS THAT CODE: only use files you trust), or a name registered by a package in "
                  "the robench.models entry-point group.")


@app.command("eval")
def eval_(
    model: list[str] = typer.Option(..., "--model", "-m", help=MODEL_REF_HELP),
    checkpoint: Optional[list[str]] = typer.Option(None, "--checkpoint", "-c", help="Checkpoint per --model: one per model in order, or NAME=PATH (.safetensors or .pth/.pt/.bin, loaded without unpickling code)."),
    checkpoint_key: Optional[str] = typer.Option(None, "--checkpoint-key", help="Entry holding the weights ('model', 'model_ema', ...)."),
    random_init: bool = typer.Option(False, "--random-init", help="Evaluate models without a checkpoint with random weights, on purpose (flagged random-init everywhere)."),
    label: Optional[list[str]] = typer.Option(None, "--label", help="Display label per --model."),
    model_arg: Optional[list[str]] = typer.Option(None, "--model-arg", help="key=value passed to the model's class or factory (repeatable; Python literals: depth=12, act=gelu, dims=[64,128])."),
    mean: Optional[str] = typer.Option(None, help="Input normalisation mean of a user model, e.g. 0.4914,0.4822,0.4465 (default: the module's timm pretrained_cfg, else none: the model takes [0,1] images)."),
    std: Optional[str] = typer.Option(None, help="Input normalisation std of a user model (see --mean)."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help=f"Data spec FORMAT:DIR, one of: {SPEC_HELP} (README lists the layouts)."),
    attack: Optional[list[str]] = typer.Option(None, "--attack", "-a", help="Attack suite (repeatable): fgsm, pgd, pgd-l2, autoattack, paper, a .toml path, torchattacks:Name."),
    corruptions: Optional[list[str]] = typer.Option(None, "--corruptions", help="Corruption suite (repeatable): imagenet-c, imagenet-c-extra, cifar10-c or a .toml path."),
    corruption: Optional[list[str]] = typer.Option(None, "--corruption", help="Only these corruptions of the suites (repeatable)."),
    severity: Optional[list[int]] = typer.Option(None, "--severity", help="Only these severities (repeatable, 1-5)."),
    backend: Optional[str] = typer.Option(None, help="Corruption backend: torch (batched, default) or reference (imagecorruptions)."),
    eps: Optional[str] = typer.Option(None, help="Override attack eps, e.g. 2/255,4/255 (pixel units)."),
    allow_large_eps: bool = typer.Option(False, "--allow-large-eps", help="Accept L-inf eps > 1 and L2 eps beyond the image diameter."),
    steps: Optional[int] = typer.Option(None, help="Override attack steps."),
    limit: Optional[int] = typer.Option(None, help="Evaluate a seeded random subset of N samples."),
    attack_limit: Optional[int] = typer.Option(None, help="Attack only the first N of the evaluated samples."),
    subset: Optional[Path] = typer.Option(None, help="File of relative image paths to evaluate (e.g. RobustBench's 5000-image list)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Batch size (default 64)."),
    device: Optional[str] = typer.Option(None, help="auto (default), cpu, cuda, cuda:N, mps."),
    precision: Optional[str] = typer.Option(None, help="fp32 (default), bf16 or fp16 (autocast)."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model and the FGSM/PGD update step."),
    seed: Optional[int] = typer.Option(None, help="Global seed (default 0): corruption noise, random starts, --limit subsets."),
    out: Optional[Path] = typer.Option(None, help="Output directory holding the results store (default results/)."),
    force: bool = typer.Option(False, help="Recompute cells already in the store."),
    strict: bool = typer.Option(False, help="Fail on unreadable images instead of skipping them."),
    diagnostics: bool = typer.Option(False, help="Also record attention diagnostics."),
    config: Optional[Path] = typer.Option(None, help="Config file (default ./robench.toml when present)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Plain log lines, no progress bars."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable results instead of a table."),
):
    """Evaluate models: clean accuracy always, plus attack and corruption suites; resumable.

    Data specs (--data FORMAT:DIR, layouts in README): {SPEC_HELP}.

    A model given as path/to/models.py:Class or package.module:factory is imported, which RUNS ITS CODE: only
    evaluate code you trust. Checkpoints never run code (safetensors, or torch.load with weights_only=True).

    Examples: `robench eval --model deit-quest --checkpoint quest_tiny.pth --data imagenet:/data/val --attack pgd`

    `robench eval --model mymodels.py:ResNet18 --checkpoint model_test.pt --data cifar10:/data/cifar-10-batches-py --attack autoattack --eps 8/255`
    """
    from robench.run.plan import plan_from_options

    plan = plan_from_options(
        model, checkpoints=checkpoint, labels=label, model_args=model_arg, mean=mean, std=std,
        checkpoint_key=checkpoint_key, config=config, data=data, attacks=attack, corruptions=corruptions,
        corruption_names=corruption, severities=severity, backend=backend, eps=eps, steps=steps, limit=limit,
        attack_limit=attack_limit, subset=subset, batch_size=batch_size, device=device, precision=precision,
        seed=seed, out=out, compile=compile, force=force, strict=strict, diagnostics=diagnostics,
        random_init=random_init, allow_large_eps=allow_large_eps, quiet=quiet,
        command="robench " + " ".join(sys.argv[1:]))
    _run_and_print(plan, as_json)


eval_.__doc__ = eval_.__doc__.replace("{SPEC_HELP}", SPEC_HELP)  # the format table, as it is


@app.command()
def sweep(
    plan_file: Path = typer.Argument(..., help="Plan TOML (see docs/plan.md)."),
    out: Optional[Path] = typer.Option(None, help="Override the plan's output directory."),
    force: bool = typer.Option(False, help="Recompute cells already in the store."),
    config: Optional[Path] = typer.Option(None, help="Config file (default ./robench.toml when present)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Plain log lines, no progress bars."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable results instead of a table."),
):
    """Run a plan: models x data x attack and corruption suites. Rerun to resume; torchrun shards it.

    Example: `robench sweep plan.toml` or `torchrun --nproc-per-node 4 -m robench sweep plan.toml`
    """
    from robench.run import load_config, load_plan

    plan = load_plan(plan_file, load_config(config))
    if out is not None:
        plan.out = str(out)
    plan.force = plan.force or force
    plan.quiet = quiet
    plan.command = "robench " + " ".join(sys.argv[1:])
    _run_and_print(plan, as_json)


@app.command("export")
def export_(
    store: Path = typer.Argument(Path("results"), help="Results directory (or .sqlite file)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output file."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="csv, parquet, jsonl or json (default: from --out's suffix)."),
    diagnostics: bool = typer.Option(False, "--diagnostics", help="Export the attention diagnostics table instead."),
    per_sample: bool = typer.Option(False, "--per-sample", help="One row per model x cell x sample: the sample's identity, label, prediction, correct, and for attacks the final (adversarial) prediction."),
):
    """Write the tidy results table (one row per model x cell) as CSV, Parquet, JSON lines or JSON, the format
    taken from the file name (.csv, .parquet, .jsonl, .json). With --per-sample: every sample's outcome.

    Example: `robench export results/ --out results/baseline.csv` or `robench export results/ --per-sample --out samples.parquet`
    """
    from robench.paths import check_file
    from robench.run.export import export, export_format
    from robench.run.store import Store

    if diagnostics and per_sample:
        raise RobenchError("--diagnostics and --per-sample are two different tables: choose one")
    export_format(out, fmt)
    check_file(out, "export file")
    table = "diagnostics" if diagnostics else "samples" if per_sample else "results"
    path = export(Store(store, readonly=True), out, fmt, table=table)
    console.print(f"wrote {path}")


@app.command()
def leaderboard(
    stores: Optional[list[Path]] = typer.Argument(None, help="Results directories (default results/)."),
    sort: Optional[str] = typer.Option(None, help="Column to sort by (default: autoattack_acc, else clean_acc)."),
    variant: Optional[list[str]] = typer.Option(None, help="Only this attention variant (repeatable)."),
    model: Optional[list[str]] = typer.Option(None, "--model", "-m", help="Only this model: label, name or glob (repeatable)."),
    dataset: Optional[list[str]] = typer.Option(None, help="Only this dataset (repeatable)."),
    fmt: str = typer.Option("md", "--format", "-f", help="md, csv, json or latex."),
    ci: bool = typer.Option(False, "--ci", help="Add Wilson 95% intervals of single-cell metrics."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write to this file instead of stdout."),
):
    """One row per model: clean, corruption (mean acc, mCE, relative mCE) and attack accuracies, flags.

    Example: `robench leaderboard results/ --sort pgd_linf_acc@4/255 --format md --out LEADERBOARD.md`
    """
    from robench.report.leaderboard import format_leaderboard, leaderboard as make_leaderboard

    if out is not None:
        from robench.paths import check_file

        check_file(out, "leaderboard file")
    df = make_leaderboard(list(stores or [Path("results")]), sort=sort, variant=variant, model=model,
                          dataset=dataset, ci=ci)
    text = format_leaderboard(df, fmt)
    if out is None:
        sys.stdout.write(text)
        return
    from robench.paths import write_text

    write_text(out, text, "leaderboard file")
    console.print(f"wrote {out} ({len(df)} models)")


@app.command()
def curve(
    stores: Optional[list[Path]] = typer.Argument(None, help="Results directories (default results/)."),
    eps: Optional[str] = typer.Option(None, help="Eps list, e.g. 1/255,2/255,8/255 (default: the threat model's "
                                      "standard eps and every fixed eps of that norm in the stores)."),
    compare: Optional[list[str]] = typer.Option(None, "--compare", help="Two models (give it twice): Wilcoxon "
                                                "signed-rank test of their per-sample eps*."),
    fmt: str = typer.Option("text", "--format", "-f", help="text, csv or json."),
):
    """Robustness curves from minimum-norm attacks (fmn-linf, fmn-l2, fmn-l1): robust accuracy at any eps read off
    the per-sample eps*, with Wilson 95% intervals, the median eps* and the samples with no adversarial found.

    Example: `robench curve results/ --eps 1/255,2/255,4/255,8/255 --compare demo-standard --compare demo-quest`
    """
    from robench.report.curve_cli import run_curve

    sys.stdout.write(run_curve(list(stores or [Path("results")]), eps, compare, fmt))


@app.command()
def report(
    stores: Optional[list[Path]] = typer.Argument(None, help="Results directories (default results/)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Report directory (default STORE/report)."),
    baseline: Optional[str] = typer.Option(None, help="Model label to compare every other model against."),
    title: str = typer.Option("robench report", help="Page title."),
    screenshot: Optional[Path] = typer.Option(None, help="Also render the page to this PNG (needs chromium)."),
):
    """Write a self-contained HTML report (figures embedded, no network) and its markdown twin.

    Example: `robench report results/ --out report/ --baseline demo-standard`
    """
    from robench.paths import check_dir, check_file
    from robench.report.render import report as make_report
    from robench.report.screenshot import find_browser, screenshot as take_screenshot

    from robench.report.results import Results
    from robench.run.store import store_path

    res = Results(list(stores or [Path("results")]))  # read-only: a bad store is reported before anything else
    out = out or store_path(res.stores[0].path).parent / "report"
    check_dir(out, "report directory")
    if screenshot is not None:
        check_file(screenshot, "screenshot file")
        find_browser()  # before the report is written
    path = make_report(res, out, baseline=baseline, title=title)
    console.print(f"report: {path}  (markdown: {path.with_suffix('.md')})")
    if screenshot is not None:
        console.print(f"screenshot: {take_screenshot(path, screenshot)}")


@app.command()
def compare(
    a: str = typer.Argument(..., help="Reference: model label, LABEL@DIR, or a results directory with one model."),
    b: str = typer.Argument(..., help="Candidate, as A; differences are B - A."),
    store: Path = typer.Option(Path("results"), help="Results directory holding the labelled models."),
    alpha: float = typer.Option(0.05, help="Significance level per cell."),
    md: bool = typer.Option(False, "--md", help="Print markdown (for a PR comment)."),
):
    """Paired comparison of two models (or two runs of one) on their shared cells: Δ, 95% CI, exact McNemar p.

    Example: `robench compare demo-standard demo-quest --store results/`
    """
    from robench.report.compare import compare as make_comparison, comparison_rows, format_comparison, summary_line

    df = make_comparison(a, b, store, alpha=alpha)
    if md:
        sys.stdout.write(format_comparison(df, md=True))
        return
    from rich.table import Table

    header, rows = comparison_rows(df)
    t = Table(title=f"{df.attrs['b']} vs {df.attrs['a']} (Δ = B − A, percentage points)")
    for i, h in enumerate(header):
        t.add_column(h, justify="right" if 2 <= i <= 7 else "left")
    for r in rows:
        style = ("green" if r[5].startswith("+") else "red") if r[-1] != "no" else None
        t.add_row(*r, style=style)
    console.print(t)
    console.print(summary_line(df))


@app.command()
def check(
    baseline: Path = typer.Option(..., help="Baseline: a CSV from `robench export`, or a results directory."),
    store: Path = typer.Option(Path("results"), help="Current results directory."),
    tolerance: float = typer.Option(1.0, help="Allowed drop in percentage points before a metric can fail."),
    alpha: float = typer.Option(0.05, help="Significance level of the (one-sided) drop test."),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Baseline cells absent now are not an error."),
    summary: Optional[Path] = typer.Option(None, help="Append the markdown table to this file (e.g. $GITHUB_STEP_SUMMARY)."),
    min_median_eps: Optional[list[str]] = typer.Option(None, "--min-median-eps", help="ATTACK=VALUE (repeatable): "
                                                       "also fail when a model's median eps* of that minimum-norm "
                                                       "attack is below VALUE, e.g. fmn-linf=4/255."),
):
    """CI regression gate: fail (exit 1) when a metric drops by more than --tolerance AND significantly.

    Exit codes: 0 no regression, 1 regression, 2 error (missing baseline, no overlapping cells, missing cells).
    Example: `robench check --baseline results/demo-baseline.csv --store results/`
    """
    from robench.report.check import check as run_check, format_check
    from robench.report.check_curves import median_eps_gate, parse_min_median_eps

    minimums = parse_min_median_eps(min_median_eps)
    if summary is not None:
        from robench.paths import check_file

        check_file(summary, "summary file")
    df, code = run_check(baseline, store, tolerance=tolerance, alpha=alpha, allow_missing=allow_missing)
    text = format_check(df)
    gate_text, gate_failed = median_eps_gate(store, minimums)
    text += gate_text
    code = max(code, int(gate_failed))
    sys.stdout.write(text)
    if summary is not None:
        from robench.paths import write_text

        write_text(summary, text + "\n", "summary file", append=True)
    if code == 2:
        n = int((df["verdict"] == "missing").sum())
        print(f"robench: error: {n} baseline cells are missing from {store} (use --allow-missing to accept)",
              file=sys.stderr)
    if code:
        raise typer.Exit(code)


@app.command()
def corrupt(
    images: Path = typer.Argument(..., help="An image file or a directory of images."),
    out: Path = typer.Option(..., "--out", help="Output directory: OUT/CORRUPTION/SEVERITY/IMAGE.png"),
    suite: str = typer.Option("imagenet-c", help="Corruption suite: imagenet-c, imagenet-c-extra, cifar10-c or a .toml path."),
    corruption: Optional[list[str]] = typer.Option(None, "--corruption", help="Only these corruptions (repeatable)."),
    severity: Optional[list[int]] = typer.Option(None, "--severity", help="Only these severities 1-5 (repeatable)."),
    grid: Optional[Path] = typer.Option(None, "--grid", help="Also draw the first image under every corruption x severity to this PNG."),
    seed: int = typer.Option(0, help="Global seed of the corruption noise."),
    backend: str = typer.Option("torch", help="torch (batched) or reference (imagecorruptions)."),
):
    """Render corrupted copies of images to disk, and optionally a grid to look at before trusting a benchmark.

    Example: `robench corrupt photo.jpg --out corrupted/ --corruption fog --corruption snow --grid grid.png`
    """
    from robench.paths import check_dir, check_file
    from robench.corrupt.render import render

    check_dir(out, "output directory")
    if grid is not None:
        check_file(grid, "grid image")
    try:
        written = render(images, out, suite=suite, corruptions=corruption, severities=severity, seed=seed,
                         backend=backend, grid=grid)
    except OSError as e:  # the checks above passed, the file system still refused (full disk, /proc...)
        raise RobenchError(f"cannot write under {out}: {e.strerror or e}"
                           + (f" ({e.filename})" if getattr(e, "filename", None) else "")) from None
    print(f"wrote {len(written) - (1 if grid else 0)} images under {out}" + (f" and the grid {grid}" if grid else ""))


@app.command("inspect")
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


@app.command()
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


@app.command()
def demo(
    out: Path = typer.Option(Path("results/demo"), help="Output directory (store, leaderboard, report)."),
    quick: bool = typer.Option(False, "--quick", help="A smaller sweep (3 models, 5 corruptions), ~15 s."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Plain log lines, no progress bars."),
):
    """Run the built-in demo: every attention variant's tiny ViT on real handwritten digits (CPU, no download):
    clean, 15 corruptions x 5 severities, FGSM / PGD / AutoAttack, then a leaderboard and an HTML report.

    Example: `robench demo` (then open results/demo/report.html)
    """
    import time

    from robench.demo import run_demo
    from robench.paths import check_dir

    check_dir(out, "output directory")

    t0 = time.time()
    progress = _progress(quiet)
    if progress is not None:
        with progress:
            res = run_demo(out, quick=quick, progress=progress)
    else:
        res = run_demo(out, quick=quick, quiet=quiet)
    console.print(res.leaderboard_md, markup=False, highlight=False, soft_wrap=True)
    console.print(f"\nleaderboard: {out / 'leaderboard.md'} and {out / 'leaderboard.csv'}")
    console.print(f"report: {res.report_html}")
    console.print(f"demo finished in {time.time() - t0:.1f} s")


@app.command("train-demo")
def train_demo_(
    variants: Optional[str] = typer.Option(None, "--variants", help="Comma-separated variants (default: all 8)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: the package's shipped weights)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs (default: as shipped, 12)."),
    seed: int = typer.Option(0, "--seed", help="Training seed (the shipped weights use 0)."),
):
    """Retrain the demo zoo (`demo-<variant>` tiny ViTs) on the digits train split, deterministically on CPU, and
    write `demo-<variant>.safetensors`; prints each model's clean test accuracy.

    Example: `robench train-demo --variants quest,standard --out /tmp/demo-weights`
    """
    import time

    from robench.zoo.train_demo import EPOCHS, WEIGHTS_DIR, train_demo

    names = [v.strip() for v in variants.split(",") if v.strip()] if variants else None
    out = out if out is not None else WEIGHTS_DIR
    from robench.paths import check_dir

    check_dir(out, "output directory")
    t0 = time.time()
    accs = train_demo(names, out_dir=out, epochs=epochs or EPOCHS, seed=seed,
                      log=lambda msg: print(msg, file=sys.stderr))
    from rich.table import Table

    t = Table(title=f"demo zoo: clean accuracy on digits/test (540 images), {epochs or EPOCHS} epochs, seed {seed}")
    t.add_column("model")
    t.add_column("test acc", justify="right")
    for v, acc in accs.items():
        t.add_row(f"demo-{v}", f"{100 * acc:.2f}%")
    console.print(t)
    console.print(f"wrote {len(accs)} checkpoints to {out} in {time.time() - t0:.0f} s")


def main(argv: list[str] | None = None) -> None:
    """Entry point: every RobenchError becomes one line on stderr and exit code 2 (never a traceback)."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        app(args=args, prog_name="robench")  # standalone: usage errors print and exit 2
    except RobenchError as e:
        print(f"robench: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("robench: interrupted (finished chunks are saved; rerun the same command to resume)", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
