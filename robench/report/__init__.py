"""Metrics, leaderboards, reports, the regression gate.

    from robench.report.leaderboard import leaderboard, format_leaderboard
    from robench.report.render import report, screenshot
    from robench.report.compare import compare, format_comparison
    from robench.report.check import check, format_check

Modules: stats (pure statistics), results (reading one or more stores), leaderboard, render (the HTML/markdown
report), plots, compare, check, testing (synthetic stores for tests). Nothing is imported here: robench.run.store
imports robench.report.stats, so this package must stay free of store imports.
"""
