"""End-to-end samples/s of a robench sweep vs the same work done as separate per-cell loops.

Work: clean + 2 corruptions (severity 3) + PGD-10 L∞ at 2 eps, on one model.
- robench: `run_plan` (one decode and one clean forward per batch shared by all cells, eps batched in one attack).
- per-cell loops: what a hand-written evaluation does: for each cell, rebuild the model, re-decode the data,
  recompute the clean forward, then apply the threat (same corruption and attack functions, so the numbers match).

    python benchmarks/sweep.py                       # digits + demo-quest
    python benchmarks/sweep.py --data imagenet:../shared/data/imagenet-sample/val --model timm:resnet18 --limit 64
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import torch

from robench.attack import load_attack_suite, run_attack
from robench.corrupt import corrupt_batch
from robench.data.formats import load_clean
from robench.run import ModelEntry, Plan, run_plan
from robench.run.store import params_hash
from robench.seeding import sample_seeds
from robench.zoo.registry import create_model

CORRUPTIONS = ("gaussian_noise", "fog")
EPS = (2 / 255, 8 / 255)


def per_cell_loops(args, suite):
    """Each cell on its own: reload the model, redecode the data, recompute clean, then the threat."""
    accs = {}
    cells = [("clean", None)] + [("corruption", c) for c in CORRUPTIONS] + [("pgd", e) for e in EPS]
    for kind, what in cells:
        model = create_model(args.model)
        data = load_clean(args.data, model.info, limit=args.limit, seed=0)
        loader = torch.utils.data.DataLoader(data.dataset, batch_size=args.batch_size)
        correct = n = 0
        for x, y, idx in loader:
            with torch.no_grad():
                clean_pred = model(x).argmax(1)  # every loop recomputes clean (for its own clean-correct mask)
            if kind == "clean":
                pred = clean_pred
            elif kind == "corruption":
                xc = corrupt_batch(x, what, 3, sample_seeds(0, idx, what, 3), suite=suite)
                with torch.no_grad():
                    pred = model(xc).argmax(1)
            else:
                spec = load_attack_suite("pgd", eps=list(EPS))[0]  # same seeds as the sweep engine derives
                seeds = sample_seeds(0, idx, "attack", spec.name,
                                     params_hash({k: v for k, v in spec.params_dict().items() if k != "eps"}))
                out = run_attack(model, x, y, dataclasses.replace(spec, eps=(what,)), seeds, clean_pred=clean_pred)
                pred = torch.where(out.robust[0], y, -1)
            correct += int((pred == y).sum())
            n += len(y)
        accs[f"{kind} {what or ''}".strip()] = correct / n
    return accs, n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo-quest")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--suite", default=None, help="corruption suite (default: cifar10-c for digits, else imagenet-c)")
    args = ap.parse_args()
    suite = args.suite or ("cifar10-c" if args.data.startswith("digits") else "imagenet-c")
    print(f"model {args.model}, data {args.data}, limit {args.limit}, batch {args.batch_size}, "
          f"threads {torch.get_num_threads()}, device cpu")

    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        res = run_plan(Plan(models=[ModelEntry(args.model)], data=args.data, limit=args.limit, corruptions=[suite],
                            corruption_names=list(CORRUPTIONS), severities=[3], attacks=["pgd"], eps=list(EPS),
                            batch_size=args.batch_size, out=out, quiet=True, sanity_probe=False, device="cpu"))
    t_sweep = time.perf_counter() - t
    n = int(res.n.max())

    t = time.perf_counter()
    accs, n_loop = per_cell_loops(args, suite)
    t_loops = time.perf_counter() - t

    print(f"\n{'cell':28s} {'sweep acc':>10s} {'loops acc':>10s}")
    for r in res.itertuples():
        key = "clean" if r.threat == "clean" else (f"corruption {r.corruption}" if r.threat == "corruption"
                                                     else f"pgd {r.eps}")
        print(f"{key:28s} {r.value:10.4f} {accs.get(key, float('nan')):10.4f}")
    print(f"\nrobench sweep : {t_sweep:7.2f} s  {5 * n / t_sweep:8.1f} cell-samples/s")
    print(f"per-cell loops: {t_loops:7.2f} s  {5 * n_loop / t_loops:8.1f} cell-samples/s")
    print(f"speed-up      : {t_loops / t_sweep:.2f}x")


if __name__ == "__main__":
    main()
