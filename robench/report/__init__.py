"""Metrics, leaderboards, reports, the regression gate.

    from robench.report.leaderboard import leaderboard, format_leaderboard
    from robench.report.render import report, screenshot
    from robench.report.compare import compare, format_comparison
    from robench.report.check import check, format_check

Modules: stats (pure statistics), results (reading one or more stores), leaderboard, render (the HTML/markdown
report), plots, compare, check, testing (synthetic stores for tests). Nothing is imported here: robench.run.store
imports robench.report.stats, so this package must stay free of store imports.
"""

import sys as _sys
import types as _types


class _CallableModule(_types.ModuleType):
    """`robench.report(...)` is the API's report function (robench.report.facade.report, re-exported by
    robench.api) even though robench.report is also this package: calling the package calls it."""

    def __call__(self, *args, **kwargs):
        from robench.report.facade import report

        return report(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
