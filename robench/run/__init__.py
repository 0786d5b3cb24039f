"""Sweep planning, execution, results store, distributed sharding.

    from robench.run import Plan, ModelEntry, run_plan
    results = run_plan(Plan(models=[ModelEntry("demo-quest")], data="digits", attacks=["pgd"], out="results/x"))
"""

from robench.run.plan import ModelEntry, Plan, load_config, load_plan, resolve_data  # noqa: F401
from robench.run.export import export  # noqa: F401
from robench.run.store import Store  # noqa: F401
from robench.run.summary import summarize, summary_notes  # noqa: F401

_LAZY = {"run_plan": "robench.run.engine", "resolve": "robench.run.resolve"}  # they import torch and timm


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
