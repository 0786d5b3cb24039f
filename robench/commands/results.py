"""`robench export`, `leaderboard`, `report`, `compare`, `check`: read results stores (read-only) and write tables,
reports and the CI verdict. Imports inside the command bodies on purpose (robench/cli.py says why)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from robench.commands.output import console
from robench.errors import RobenchError


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
    from robench.report.leaderboard import format_leaderboard
    from robench.report.leaderboard import leaderboard as make_leaderboard

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
    from robench.report.results import Results
    from robench.report.screenshot import find_browser
    from robench.report.screenshot import screenshot as take_screenshot
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
    from robench.report.compare import compare as make_comparison
    from robench.report.compare import comparison_rows, format_comparison, summary_line

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


def check(
    baseline: Path = typer.Option(..., help="Baseline: a CSV from `robench export`, or a results directory."),
    store: Path = typer.Option(Path("results"), help="Current results directory."),
    tolerance: float = typer.Option(1.0, help="Allowed drop in percentage points before a metric can fail."),
    alpha: float = typer.Option(0.05, help="Significance level of the (one-sided) drop test."),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Baseline cells absent now are not an error."),
    summary: Optional[Path] = typer.Option(None, help="Append the markdown table to this file (e.g. $GITHUB_STEP_SUMMARY)."),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="Also gate a calibration error (ece or rms_calib): fail when it rises by more than --tolerance pp AND significantly (bootstrap)."),
    min_median_eps: Optional[list[str]] = typer.Option(None, "--min-median-eps", help="ATTACK=VALUE (repeatable): "
                                                       "also fail when a model's median eps* of that minimum-norm "
                                                       "attack is below VALUE, e.g. fmn-linf=4/255."),
):
    """CI regression gate: fail (exit 1) when a metric drops by more than --tolerance AND significantly.

    Exit codes: 0 no regression, 1 regression, 2 error (missing baseline, no overlapping cells, missing cells).
    Example: `robench check --baseline results/demo-baseline.csv --store results/`
    """
    from robench.report.check import check as run_check
    from robench.report.check import format_check
    from robench.report.check_curves import median_eps_gate, parse_min_median_eps

    minimums = parse_min_median_eps(min_median_eps)
    if summary is not None:
        from robench.paths import check_file

        check_file(summary, "summary file")
    df, code = run_check(baseline, store, tolerance=tolerance, alpha=alpha, allow_missing=allow_missing)
    text = format_check(df)
    if calibration is not None:  # issue 24: the calibration gate, after the accuracy one
        from robench.report.calib_check import check_calibration, format_calibration_check

        cdf, ccode = check_calibration(baseline, store, calibration, tolerance=tolerance, alpha=alpha)
        text += "\n" + format_calibration_check(cdf)
        code = code or ccode
    gate_text, gate_failed = median_eps_gate(store, minimums)  # issue 22: median eps* of min-norm attacks
    text += gate_text
    code = code or int(gate_failed)
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
