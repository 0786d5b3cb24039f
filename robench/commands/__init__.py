"""The commands of `robench`, one module per group; robench/cli.py registers them on the Typer app."""
