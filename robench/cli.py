"""The `robench` command: a thin Typer shell over the Python API. Each command's docstring is its help."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

import robench
from robench.errors import RobenchError

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
console = Console()


def _version(value: bool):
    if value:
        print(f"robench {robench.__version__}")
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
    """List every registered model: name, arch, variant, params, input size, normalisation.

    Example: `robench models --variant quest`
    """
    from robench.zoo.registry import list_models

    infos = [i for i in list_models() if variant is None or i.variant == variant]
    if as_json:
        print(json.dumps([i.to_dict() for i in infos], indent=1))
        return
    from rich.table import Table

    t = Table(title=f"robench models ({len(infos)})")
    for col in ("name", "arch", "variant", "params", "input", "mean", "std"):
        t.add_column(col, justify="right" if col == "params" else "left")
    for i in infos:
        t.add_row(i.name, i.arch, i.variant, f"{i.params / 1e6:.2f}M", "x".join(map(str, i.input_size)),
                  ",".join(f"{m:.3f}" for m in i.mean), ",".join(f"{s:.3f}" for s in i.std))
    console.print(t)


@app.command()
def convert(
    src: Path = typer.Argument(..., help="Checkpoint to convert (.pth/.pt/.bin/.safetensors)."),
    dst: Path = typer.Argument(..., help="Output .safetensors file."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Validate against this model and record it."),
    key: Optional[str] = typer.Option(None, "--key", help="Entry holding the weights ('model', 'model_ema', ...)."),
):
    """Write a clean safetensors copy of a checkpoint, with metadata (arch, variant, source hash).

    Example: `robench convert deit_quest.pth deit_quest.safetensors --model deit-tiny-quest`
    """
    from robench.zoo.checkpoint import convert_checkpoint

    meta = convert_checkpoint(src, dst, model=model, key=key)
    console.print(f"wrote {dst} (variant {meta.get('variant')}, arch {meta.get('arch')})")


def main(argv: list[str] | None = None) -> None:
    """Entry point: every RobenchError becomes one line on stderr and exit code 2 (never a traceback)."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        app(args=args, prog_name="robench")  # standalone: usage errors print and exit 2
    except RobenchError as e:
        print(f"robench: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("robench: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
