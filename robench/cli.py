"""The `robench` command: the Typer app, its entry point, the commands that run evaluations (`eval`, `sweep`,
`demo`, `train-demo`) and the list of all commands. The other groups live in robench/commands/ (results, tools,
diagnostics). Each command validates its options, calls one library function and prints; its docstring is its help.

Each command imports what it runs inside its own body, on purpose: torch and timm take ~3.6 s to import on the
2-core CI machine, while `robench --help` takes 0.11 s and `robench models` 0.17 s with the imports where they are
(robench models must stay under 2 s, issue 15). These are the only deliberate function-level imports of robench's
command layer.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from robench._version import __version__
from robench.commands import diagnostics, results, tools
from robench.commands.output import console
from robench.data.formats import SPEC_HELP  # light: no torch
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


def _version(value: bool):
    if value:
        print(f"robench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    """robench: robustness benchmarks for attention variants."""


# ---- the commands that run evaluations -------------------------------------------------------------------------
def _progress(quiet: bool):
    """A rich progress display on a terminal, as a context manager; it gives None (plain log lines) when stderr is
    not a TTY or --quiet."""
    if quiet or not sys.stderr.isatty():
        return nullcontext(None)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Speed(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed:.1f} samples/s" if task.speed else "")

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Speed(),
                    TimeRemainingColumn(), console=Console(stderr=True))


def _print_results(results, plan, as_json: bool) -> None:
    """The eval table of a run (or its rows as JSON); torchrun ranks other than 0 (results None) print nothing."""
    if results is None:
        return
    if as_json:
        print(results.to_json(orient="records", indent=1))
        return
    from rich.table import Table

    from robench.run import summarize, summary_notes

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


MODEL_REF_HELP = ("Model (repeatable): a registered name (robench models, e.g. deit-quest), timm:NAME, "
                  "path/to/models.py:Class or package.module:factory (a class or function returning an nn.Module; "
                  "IMPORTING IT RUNS THAT CODE: only use files you trust), or a name registered by a package in "
                  "the robench.models entry-point group.")


def eval_(
    model: list[str] = typer.Option(..., "--model", "-m", help=MODEL_REF_HELP),
    checkpoint: Optional[list[str]] = typer.Option(None, "--checkpoint", "-c", help="Checkpoint per --model: one per model in order, or NAME=PATH (.safetensors or .pth/.pt/.bin, loaded without unpickling code)."),
    checkpoint_key: Optional[str] = typer.Option(None, "--checkpoint-key", help="Entry holding the weights ('model', 'model_ema', ...)."),
    random_init: bool = typer.Option(False, "--random-init", help="Evaluate models without a checkpoint with random weights, on purpose (flagged random-init everywhere)."),
    label: Optional[list[str]] = typer.Option(None, "--label", help="Display label per --model."),
    model_arg: Optional[list[str]] = typer.Option(None, "--model-arg", help="key=value passed to the model's class or factory (repeatable; Python literals: depth=12, act=gelu, dims=[64,128])."),
    mean: Optional[str] = typer.Option(None, help="Input normalisation mean of a user model (1 or 3 values in [0, 1], with --std), e.g. 0.485,0.456,0.406; `none`: the model takes [0, 1] images. Default: a cfg the module's authors set for their weights; timm's generic default cfg is refused (README: Your own model code)."),
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
    from robench.run import run_plan
    from robench.run.resolve import plan_from_options

    plan = plan_from_options(
        model, checkpoints=checkpoint, labels=label, model_args=model_arg, mean=mean, std=std,
        checkpoint_key=checkpoint_key, config=config, data=data, attacks=attack, corruptions=corruptions,
        corruption_names=corruption, severities=severity, backend=backend, eps=eps, steps=steps, limit=limit,
        attack_limit=attack_limit, subset=subset, batch_size=batch_size, device=device, precision=precision,
        seed=seed, out=out, compile=compile, force=force, strict=strict, diagnostics=diagnostics,
        random_init=random_init, allow_large_eps=allow_large_eps, quiet=quiet,
        command="robench " + " ".join(sys.argv[1:]))
    with _progress(quiet) as progress:
        results = run_plan(plan, progress)
    _print_results(results, plan, as_json)


eval_.__doc__ = eval_.__doc__.replace("{SPEC_HELP}", SPEC_HELP)  # the format table, as it is


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
    from robench.run import load_config, load_plan, run_plan

    plan = load_plan(plan_file, load_config(config))
    if out is not None:
        plan.out = str(out)
    plan.force = plan.force or force
    plan.quiet = quiet
    plan.command = "robench " + " ".join(sys.argv[1:])
    with _progress(quiet) as progress:
        results = run_plan(plan, progress)
    _print_results(results, plan, as_json)



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
    with _progress(quiet) as progress:
        res = run_demo(out, quick=quick, progress=progress, quiet=quiet)
    console.print(res.leaderboard_md, markup=False, highlight=False, soft_wrap=True)
    console.print(f"\nleaderboard: {out / 'leaderboard.md'} and {out / 'leaderboard.csv'}")
    console.print(f"report: {res.report_html}")
    console.print(f"demo finished in {time.time() - t0:.1f} s")


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


# The commands, in the order of `robench --help`: the evaluation commands above, the other groups in robench/commands/.
for _command, _name in (
    (tools.models, "models"), (tools.convert, "convert"),
    (eval_, "eval"), (sweep, "sweep"),
    (results.export_, "export"), (results.leaderboard, "leaderboard"), (results.curve, "curve"),
    (results.report, "report"),
    (results.compare, "compare"), (results.check, "check"),
    (tools.corrupt, "corrupt"), (diagnostics.inspect_, "inspect"), (diagnostics.toy, "toy"),
    (demo, "demo"), (train_demo_, "train-demo"),
):
    app.command(_name)(_command)


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
