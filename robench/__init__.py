"""robench: robustness benchmarks for image classifiers and attention variants (QUEST, Elliptical, QKNorm...).

    import robench
    df = robench.evaluate(model, "cifar10:data/cifar-10-batches-py", attacks="autoattack", eps="8/255")
    robench.leaderboard(df)
"""

from robench._version import __version__
from robench.errors import RobenchError

__all__ = ["RobenchError", "evaluate", "leaderboard", "report", "__version__"]


def __getattr__(name):  # the API imports torch: load it on first use, so `import robench` stays light
    if name in ("evaluate", "leaderboard"):
        from robench import api

        return getattr(api, name)
    if name == "report":  # the subpackage, callable: robench.report(...) is robench.api.report(...)
        import importlib

        return importlib.import_module("robench.report")
    raise AttributeError(f"module 'robench' has no attribute {name!r}")
