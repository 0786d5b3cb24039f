"""After a model's cells: its sanity flags (gradient-masking signs, random weights) and attention diagnostics,
written to the store. Outside the runner: each reads the store and the cells, nothing else."""

from __future__ import annotations

from robench.attack import sanity_flags
from robench.diag import inspect_model
from robench.run.cells import ROBENCH_SCHEMA, Job
from robench.run.execute import make_loader
from robench.zoo.registry import is_random_init


def write_attack_flags(store, run_id: int, model_id: int, jobs: list[Job]) -> None:
    """sanity_flags over the model's attack cells (robust accuracy, zero-gradient share, AutoAttack's counts)."""
    res = store.results()
    mine = res[res["cell_id"].isin([c.cell_id for j in jobs for c in j.cells])]
    att = mine[mine["threat"] == "attack"]
    if att.empty:
        return
    clean = mine[mine["threat"] == "clean"]["value"]
    extras = store.cell_extras(att.cell_id)
    kinds = {c.cell_id: c.attack_spec.kind for j in jobs for c in j.cells if c.attack_spec is not None}
    rows = []
    for r in att.itertuples():
        ex = extras.get(r.cell_id, {})
        n_att = ex.get("attacked") or 0
        rows.append(dict(attack=r.attack, kind=kinds.get(r.cell_id), norm=r.norm, eps=r.eps, robust_acc=r.value,
                         n=r.n, protocol=r.protocol, adaptive=bool(r.adaptive), zero_grad_frac=ex["zero_grad"] / n_att if n_att else None,
                         acc_after={k.split(":", 1)[1]: v / n_att for k, v in ex.items()
                                    if k.startswith("robust_after:") and n_att} or None))
    store.write_flags(model_id, sanity_flags(rows, float(clean.iloc[0]) if len(clean) else None), run_id)


def write_model_flags(store, run_id: int, model_id: int, label: str, sha: str) -> None:
    """Flags of the model itself, shown in every table and report: random weights. (Skipped images are in the
    results' `skipped` column.)"""
    flags = []
    if is_random_init(sha):
        flags.append({"flag": "random-init", "message": f"{label} was evaluated with RANDOM weights "
                      "(no checkpoint, --random-init): its accuracies say nothing about a trained model"})
    store.add_flags(model_id, flags, run_id)


def run_diagnostics(store, run_id: int, plan, device, model, model_id: int, data) -> None:
    """Attention diagnostics (robench.diag.inspect_model) on the first diagnostics_limit samples: one cell."""
    n = min(len(data), plan.diagnostics_limit)
    params = {"dataset": data.name, "data_fingerprint": data.fingerprint, "n": n, "threat": "diagnostics",
              "seed": plan.seed, "protocol": "standard", "robench_schema": ROBENCH_SCHEMA,
              "weights": model.info.checkpoint_sha256}
    cid = store.cell_id(model_id, params, n, 1, run_id)
    if store.cell_status(cid) == "done" and not plan.force:
        return
    batches = (x.to(device) for x, _, _ in make_loader(data.dataset, 0, n, plan, device))
    store.write_diagnostics(cid, inspect_model(model, batches))
    store.write_chunk(0, {cid: ([], [], [])}, run_id)
    store.finish_cell(cid, allow_empty=True)
