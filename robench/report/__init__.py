"""Metrics, leaderboards, reports, the regression gate. This package only holds modules; nothing is imported here.

    from robench.report.leaderboard import leaderboard, format_leaderboard
    from robench.report.render import report
    from robench.report.screenshot import screenshot
    from robench.report.compare import compare, format_comparison
    from robench.report.check import check, format_check
    from robench.report.api import leaderboard, write_report   # the Python API's (robench.leaderboard, ...)

Modules: stats (pure statistics), results (reading one or more stores), leaderboard, render (the HTML/markdown
report), plots, compare, check, api (the report half of the Python API), testing (synthetic stores for tests).
"""
