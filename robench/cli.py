"""The `robench` command: the Typer app, its entry point and the list of its commands. The commands live in
robench/commands/ (one module per group); each validates its options, calls one library function and prints, and
its docstring is its help.

Each command imports what it runs inside its own body, on purpose: torch and timm take ~3.6 s to import on the
2-core CI machine, while `robench --help` takes 0.11 s and `robench models` 0.17 s with the imports where they are
(robench models must stay under 2 s, issue 15). These are the only deliberate function-level imports of robench's
command layer.
"""

from __future__ import annotations

import sys

import typer

from robench._version import __version__
from robench.commands import diagnostics, evaluate, results, tools
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

# The commands, in the order of `robench --help`: each module holds one group (robench/commands/).
for _command, _name in (
    (tools.models, "models"), (tools.convert, "convert"),
    (evaluate.eval_, "eval"), (evaluate.sweep, "sweep"),
    (results.export_, "export"), (results.leaderboard, "leaderboard"), (results.curve, "curve"),
    (results.report, "report"),
    (results.compare, "compare"), (results.check, "check"),
    (tools.corrupt, "corrupt"), (diagnostics.inspect_, "inspect"), (diagnostics.toy, "toy"),
    (evaluate.demo, "demo"), (evaluate.train_demo_, "train-demo"),
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
