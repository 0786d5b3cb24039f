"""The console every command prints to: full-width tables in logs and pipes."""

import sys

from rich.console import Console

console = Console(width=None if sys.stdout.isatty() else 160)
