"""Synthetic results stores for tests and examples: real `Store` files filled with made-up per-sample outcomes.

    s = synthetic_store(tmp, {"vit-a": {"variant": "standard", "cells": {clean(): 0.9, attack("pgd", 4/255): 0.3}}})

Outcomes share one latent 'difficulty' per sample, so two models with close accuracies disagree on few samples
(as real models do), which is what paired tests exploit. Accuracies are hit exactly (round(acc * n) correct).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from robench.run.store import Store, params_hash


def clean(dataset: str = "digits", protocol: str = "standard") -> dict:
    return {"dataset": dataset, "threat": "clean", "protocol": protocol, "adaptive": False}


def corruption(name: str, severity: int, category: str = "noise", dataset: str = "digits",
               protocol: str = "standard") -> dict:
    return {"dataset": dataset, "threat": "corruption", "corruption": name, "severity": severity,
            "category": category, "protocol": protocol, "adaptive": False}


def attack(name: str, eps: float, norm: str = "Linf", dataset: str = "digits", protocol: str = "standard",
           adaptive: bool = False, **extra) -> dict:
    return {"dataset": dataset, "threat": "attack", "attack": name, "norm": norm, "eps": eps, "protocol": protocol,
            "adaptive": adaptive, **extra}


def outcomes_for(acc: float, n: int, seed: int = 0, jitter: float = 0.05) -> np.ndarray:
    """0/1 outcomes with exactly round(acc * n) ones, mostly on the 'easy' samples (latent difficulty of seed 0)."""
    difficulty = np.random.default_rng(1234).random(n)
    noisy = difficulty + jitter * np.random.default_rng(seed).standard_normal(n)
    k = int(round(acc * n))
    out = np.zeros(n, dtype=int)
    out[np.argsort(noisy, kind="stable")[:k]] = 1
    return out


def synthetic_store(path, models: dict, n: int = 200, seed: int = 0, flags: dict | None = None,
                    diagnostics: pd.DataFrame | None = None) -> Store:
    """A store at `path` with one model per entry of models = {label: {"variant", "cells": {params: acc}}}.

    A cell's value may be an accuracy (float) or an explicit 0/1 outcome array. params is a dict (use clean(),
    corruption(), attack()); since dicts are unhashable, "cells" may also be a list of (params, value) pairs.
    flags = {label: [{"flag", "message", "cells": [params, ...]}]} (cells referenced by params).
    diagnostics: rows (model, dataset, corruption, attack, layer, head, stat, value), stored as diagnostics cells.
    """
    s = Store(path, create=True)
    run = s.start_run(seed=seed, device="cpu", precision="fp32", command="synthetic")
    ids = {}
    for j, (label, spec) in enumerate(models.items()):
        m = s.model_id(label=label, name=spec.get("name", f"demo-{spec.get('variant', 'standard')}"),
                       variant=spec.get("variant", "standard"), arch=spec.get("arch", "demo-vit"),
                       params=spec.get("params", 140_000), checkpoint=None,
                       checkpoint_sha256=spec.get("sha", f"sha-{label}"))
        ids[label] = m
        cells = spec["cells"].items() if isinstance(spec["cells"], dict) else spec["cells"]
        for i, (params, value) in enumerate(cells):
            params = dict(params)
            correct = (np.asarray(value, dtype=int) if not np.isscalar(value)
                       else outcomes_for(float(value), n, seed=seed + 101 * j + i))
            c = s.cell_id(m, params, len(correct), n_chunks=1, run_id=run)
            s.write_chunk(0, {c: (np.arange(len(correct)), correct, np.where(correct == 1, 0, 1))}, run)
            s.finish_cell(c)
    for label, fl in (flags or {}).items():
        cells = s.cells()
        rows = []
        for f in fl:
            cids = []
            for p in f.get("cells", []):
                hit = cells[(cells["model"] == label) & (cells["params_hash"] == params_hash(dict(p)))]
                cids += [int(x) for x in hit["cell_id"]]
            rows.append({"flag": f["flag"], "message": f["message"], "cells": cids})
        s.write_flags(ids[label], rows, run)
    if diagnostics is not None:
        for (label, dataset, cor, att), g in diagnostics.groupby(["model", "dataset", "corruption", "attack"],
                                                                 dropna=False, sort=False):
            params = {"dataset": dataset, "threat": "diagnostics", "corruption": None if pd.isna(cor) else cor,
                      "attack": None if pd.isna(att) else att, "protocol": "standard", "adaptive": False}
            c = s.cell_id(ids[label], params, 1, n_chunks=1, run_id=run)
            s.write_diagnostics(c, g[["layer", "head", "stat", "value"]])
            s.write_chunk(0, {c: ([0], [1], [0])}, run)
            s.finish_cell(c)
    s.end_run(run)
    return s
