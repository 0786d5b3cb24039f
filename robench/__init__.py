"""robench: robustness benchmarks for image classifiers and attention variants (QUEST, Elliptical, QKNorm...).

    import robench
    df = robench.evaluate(model, "cifar10:data/cifar-10-batches-py", attacks="autoattack", eps="8/255")
    robench.leaderboard(df)
    robench.write_report("results/x")   # (robench.report is the package of report modules, not a function)
"""

from robench._version import __version__
from robench.errors import RobenchError

__all__ = ["RobenchError", "evaluate", "leaderboard", "write_report", "__version__"]


def __getattr__(name):  # the API imports torch: load it on first use, so `import robench` stays light
    if name in ("evaluate", "leaderboard", "write_report"):
        from robench import api

        return getattr(api, name)
    raise AttributeError(f"module 'robench' has no attribute {name!r}")
