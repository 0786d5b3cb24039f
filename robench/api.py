"""The Python API: `robench.evaluate`, `robench.leaderboard`, `robench.write_report`.

    import robench
    df = robench.evaluate(model, "cifar10:data/cifar-10-batches-py", attacks="autoattack", eps="8/255", limit=1000)

`evaluate` runs the same path as `robench eval`: robench.run.resolve.plan_from_options, then robench.run.engine.run_plan
(resolve, then the runner);
`model` is an nn.Module taking [0, 1] images (pass mean/std if it expects normalised ones) or anything `--model`
accepts. The result is the tidy table: one row per model x cell (clean, each corruption x severity, each attack x
eps) with value = accuracy, n and a 95% Wilson interval.
"""

from __future__ import annotations

import shutil
import tempfile

import pandas as pd

from robench.report.api import leaderboard, write_report  # noqa: F401  (the API's names)


def evaluate(model, data, *, attacks=None, corruptions=None, eps=None, limit=None, device: str = "auto",
             precision: str = "fp32", out=None, checkpoint=None, label: str | None = None, mean=None, std=None,
             model_args: dict | None = None, seed: int | None = None, batch_size: int | None = None,
             attack_limit: int | None = None, corruption_limit: int | None = None, severities=None,
             corruption_names=None, steps: int | None = None, force: bool = False, config=None,
             quiet: bool = True) -> pd.DataFrame:
    """Evaluate one model (an nn.Module, or a name / timm:NAME / file.py:Class / package.module:factory) on a data
    spec (`cifar10:DIR`, `imagenet:DIR`, `imagenet-c:DIR`, ... see robench.data.formats) under attack and
    corruption suites. Returns the tidy per-cell results (one row per cell).

    out: a results directory (the SQLite store, resumable, readable by `robench leaderboard/report`); None keeps
    the store in a temporary directory that is removed afterwards (`df.attrs["flags"]` keeps its sanity flags).
    An nn.Module is evaluated in place: moved to `device` and put in eval mode for the run, then given back with
    its device, training mode and requires_grad flags as they were. robench.toml (or `config`) supplies defaults
    as for `robench eval`.
    """
    # local: `import robench` (which exposes evaluate) must not load torch/timm (~3.6 s) for the CLI's light commands
    import torch
    from torch import nn

    from robench.run.engine import run_plan
    from robench.run.resolve import plan_from_options

    tmp = None if out is not None else tempfile.mkdtemp(prefix="robench-")
    try:
        plan = plan_from_options([model], checkpoints=[checkpoint] if checkpoint else None,
                                 labels=[label] if label else None, model_args=model_args, mean=mean, std=std,
                                 config=config, data=data, attacks=attacks, corruptions=corruptions,
                                 corruption_names=corruption_names, severities=severities, eps=eps, steps=steps,
                                 limit=limit, attack_limit=attack_limit, corruption_limit=corruption_limit,
                                 batch_size=batch_size, device=device, precision=precision, seed=seed,
                                 out=out if out is not None else tmp, force=force, quiet=quiet,
                                 command="robench.evaluate")
        state = None
        if isinstance(model, nn.Module):  # give the caller's module back as it was
            p = next(iter(model.parameters()), None)
            state = (model.training, [q.requires_grad for q in model.parameters()],
                     p.device if p is not None else torch.device("cpu"))
        try:
            return run_plan(plan, with_flags=True)  # the path of `robench eval`: resolve, then the runner
        finally:
            if state is not None:
                training, req, dev = state
                model.to(dev).train(training)
                for q, r in zip(model.parameters(), req):
                    q.requires_grad_(r)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
