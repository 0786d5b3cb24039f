"""One executor per threat, each readable and testable alone: given a checked model (forward.ModelRun), a batch
(x, y, sample indices) and the cells of that threat, it records every cell's per-sample outcomes in a ChunkResult.

- run_clean: one forward shared by the clean cell and the pre-rendered corruption cells of a data stream;
- CorruptionExecutor: renders the batch with the cell's CorruptionSuite object (seeded per sample), through the
  cache of corrupted images that the next model of the plan reuses;
- run_attack_group: one attack spec over all its pending eps (robench.attack.run_attack).
"""

from __future__ import annotations

import dataclasses
import time

import torch

from robench.attack import run_attack
from robench.corrupt import corrupt_batch
from robench.run.cache import CorruptionCache
from robench.run.cells import Cell
from robench.run.forward import ModelRun
from robench.run.store import params_hash
from robench.seeding import sample_seeds


class ChunkResult:
    """Outcomes of a chunk (or a shard of it): per cell (samples, correct, preds, confidences, nlls); unreadable
    samples; counters. A confidence/nll not known is None (e.g. attack rows whose kind gives no final logits)."""

    def __init__(self, cells: list[Cell]):
        self.res = {c.cell_id: ([], [], [], [], []) for c in cells}
        self.skipped: list[int] = []
        self.extras: dict[int, dict] = {}

    def record(self, cell: Cell, idx, correct, pred, conf=None, nll=None) -> None:
        s, c, p, q, n = self.res[cell.cell_id]
        s.extend(idx.tolist())
        c.extend(correct.int().tolist())
        p.extend(pred.tolist())
        for dst, v in ((q, conf), (n, nll)):
            dst.extend([None] * len(idx) if v is None else v.detach().float().cpu().tolist())

    def counters(self, cell: Cell) -> dict:
        return self.extras.setdefault(cell.cell_id, {})

    def add(self, cell: Cell, key: str, v) -> None:
        d = self.counters(cell)
        d[key] = d.get(key, 0) + v

    def part(self):
        return self.res, self.skipped, self.extras


def shares_clean_forward(cell: Cell) -> bool:
    """The clean cell and pre-rendered corruption cells: the batch itself is what they evaluate."""
    return cell.threat == "clean" or (cell.threat == "corruption" and cell.params.get("backend") == "prerendered")


def run_clean(mr: ModelRun, cells: list[Cell], x, y, idx, out: ChunkResult):
    """One forward for every cell that evaluates the batch as it is; returns the predictions (None: no such cell)."""
    if not cells:
        return None
    with mr.guard(cells[0].name, idx):
        pred, conf, nll = mr.predict(x, y, out.counters(cells[0]))
    for c in cells:
        out.record(c, idx, pred == y, pred.cpu(), conf, nll)
    return pred


class CorruptionExecutor:
    """On-the-fly corruption cells: corrupt the cell's samples (--corruption-limit: the first n), then predict."""

    def __init__(self, cache: CorruptionCache, seed: int):
        self.cache, self.seed = cache, seed

    @staticmethod
    def cache_key(cell: Cell, sample_idx) -> tuple:
        """Everything that defines the corrupted images: the suite's values for the corruption (not its name),
        the severity, backend, seed, data and samples. The corruption's name first (the cache's recompute set)."""
        p = cell.params
        return (p["corruption"], params_hash(p["suite_values"]), p["severity"], p["backend"], p["seed"],
                p["data_fingerprint"], tuple(sample_idx.tolist()))

    def render(self, cell: Cell, x, idx):
        p = cell.params
        key = self.cache_key(cell, idx)
        xc = self.cache.get(key, x.device)
        if xc is None:  # corrupted on x's device and fed straight to the model
            seeds = sample_seeds(self.seed, idx, p["corruption"], p["severity"])
            t0 = time.perf_counter()
            xc = corrupt_batch(x, p["corruption"], p["severity"], seeds, suite=cell.suite, backend=p["backend"])
            self.cache.put(key, xc, corrupt_s=_elapsed(t0, xc.device))
        return xc

    def run(self, mr: ModelRun, cell: Cell, x, y, idx, out: ChunkResult) -> None:
        keep = idx < cell.params["n"]  # --corruption-limit
        if not keep.any():
            return
        xk, yk, ik = (x, y, idx) if keep.all() else (x[keep.to(x.device)], y[keep.to(y.device)], idx[keep])
        xc = self.render(cell, xk, ik)
        with mr.guard(cell.name, ik):
            pred, conf, nll = mr.predict(xc, yk, out.counters(cell))
        out.record(cell, ik, pred == yk, pred.cpu(), conf, nll)


def run_attack_group(mr: ModelRun, group: list[Cell], x, y, idx, out: ChunkResult, seed: int, compile: bool,
                     clean_pred=None) -> None:
    """One attack spec at the eps of its cells in `group` (--attack-limit: the first n samples)."""
    keep = idx < group[0].params["n"]
    if not keep.any():
        return
    xa, ya, ia = x[keep.to(x.device)], y[keep.to(y.device)], idx[keep]
    if clean_pred is not None:
        clean_pred = clean_pred[keep.to(clean_pred.device)]
    spec = group[0].attack_spec
    spec = dataclasses.replace(spec, eps=tuple(spec.eps[c.eps_index] for c in group))
    seeds = sample_seeds(seed, ia, "attack", spec.name, params_hash(group[0].params["attack_params"]))
    with mr.guard(f"{spec.name} {spec.norm}", ia):
        res = run_attack(mr.model, xa, ya, spec, seeds, amp_dtype=mr.amp, clean_pred=clean_pred, compile=compile)
        mr.check_eval_mode()
    for j, c in enumerate(group):
        conf = None if res.adv_conf is None else res.adv_conf[j]
        nll = None if res.adv_nll is None else res.adv_nll[j]
        out.record(c, ia, res.robust[j].cpu(), res.adv_pred[j].cpu(), conf, nll)
        out.add(c, "attacked", len(ia))
        out.add(c, "zero_grad", int(res.zero_grad.sum()))
        if mr.amp is not None:  # low-precision "misclassified" verdicts that an fp32 forward rejected
            out.add(c, "rejected_hits", int(res.info.get("rejected_hits", [0] * len(group))[j]))
        if res.eps_star is not None:  # a minimum-norm cell: per-sample eps*, and how many found none
            record_eps_star(out, c, ia, res.eps_star)
        per_eps = res.info.get("per_eps")
        if per_eps:  # AutoAttack: robust count after each of its attacks (for the square-beats-whitebox flag)
            for a, count in per_eps[j]["robust_after"].items():
                out.add(c, f"robust_after:{a}", int(count))


def record_eps_star(out: ChunkResult, cell: Cell, idx, eps_star) -> None:
    """A min-norm cell's eps* per sample (into the chunk's extras, stored in the store's eps_star table) and the
    count of attacked samples with no adversarial within the budget (eps* = inf: an under-powered run shows)."""
    e = eps_star.detach().double().cpu()
    out.counters(cell).setdefault("eps_star", {}).update(zip(idx.tolist(), e.tolist()))
    out.add(cell, "eps_star_not_found", int(torch.isinf(e).sum()))


def _elapsed(t0: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0
