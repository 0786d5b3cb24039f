"""The report half of the Python API, `robench.leaderboard(...)` and `robench.write_report(...)` (re-exported by
robench.api): results directories, stores or a DataFrame returned by `robench.evaluate` in, a leaderboard or an
HTML report out."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from robench.errors import RobenchError
from robench.paths import check_dir
from robench.report.leaderboard import format_leaderboard, leaderboard as make_leaderboard
from robench.report.render import report as make_report
from robench.report.results import Results
from robench.run.store import Store, store_path


def leaderboard(results, *, sort: str | None = None, variant=None, model=None, dataset=None, ci: bool = False,
                fmt: str | None = None):
    """The leaderboard (one row per model and dataset, RobustBench-like columns) of results directories / stores,
    or of a DataFrame returned by `evaluate`. With fmt ('md', 'csv', 'json', 'latex') the formatted text."""
    src = Results.from_frame(results) if isinstance(results, pd.DataFrame) else _stores(results)
    df = make_leaderboard(src, sort=sort, variant=variant, model=model, dataset=dataset, ci=ci)
    return format_leaderboard(df, fmt) if fmt else df


def write_report(results, out=None, *, baseline: str | None = None, title: str = "robench report") -> Path:
    """Write the HTML report (and its markdown twin) of results directories; returns the HTML path."""
    if isinstance(results, pd.DataFrame):
        raise RobenchError("a report needs a results store (per-sample outcomes): run "
                           "robench.evaluate(..., out='results/DIR') and pass that directory")
    res = Results(_stores(results))
    out = out if out is not None else store_path(res.stores[0].path).parent / "report"  # beside a .sqlite file
    check_dir(out, "report directory")
    return Path(make_report(res, out, baseline=baseline, title=title))


def _stores(results) -> list:
    """Results directories / store files: one path, or a list of them (anything else: one clear error)."""
    if isinstance(results, (str, Path, Store)):
        return [results]
    if isinstance(results, (list, tuple)) and results and all(isinstance(r, (str, Path, Store)) for r in results):
        return list(results)
    raise RobenchError(f"results must be a results directory (str or Path), a list of them, or a DataFrame "
                       f"returned by robench.evaluate; got {type(results).__name__}")
