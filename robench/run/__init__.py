"""Sweep planning, execution, results store, distributed sharding.

    from robench.run import Plan, ModelEntry, run_plan
    results = run_plan(Plan(models=[ModelEntry("demo-quest")], data="digits", attacks=["pgd"], out="results/x"))
"""

from robench.run.plan import ModelEntry, Plan, load_config, load_plan, resolve_data  # noqa: F401
from robench.run.store import Store, export  # noqa: F401


def __getattr__(name):  # the engine imports torch and timm: load it only when a sweep runs
    if name == "run_plan":
        from robench.run.engine import run_plan

        return run_plan
    raise AttributeError(name)


def summarize(results):
    """Compact per-model summary of a tidy results table: clean, mean corruption accuracy, each attack x eps."""
    import pandas as pd

    rows = []
    for model, df in results.groupby("model", sort=False):
        for r in df[df.threat == "clean"].itertuples():
            rows.append(dict(model=model, threat="clean", n=r.n, value=r.value, ci_low=r.ci_low, ci_high=r.ci_high))
        cor = df[df.threat == "corruption"]
        if len(cor):
            rows.append(dict(model=model, threat=f"corruptions (mean of {len(cor)} cells)", n=int(cor.n.min()),
                             value=cor.value.mean(), ci_low=None, ci_high=None))
        for r in df[df.threat == "attack"].itertuples():
            tag = " [paper protocol]" if r.protocol == "paper" else ""
            rows.append(dict(model=model, threat=f"{r.attack} {r.norm} eps={_eps(r.eps)}{tag}", n=r.n, value=r.value,
                             ci_low=r.ci_low, ci_high=r.ci_high))
    return pd.DataFrame(rows)


def _eps(e: float) -> str:
    k = e * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 else f"{e:.4g}"
