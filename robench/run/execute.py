"""One chunk of one job on one model, in three parts read top to bottom:

1. the checked forward (ModelRun): before any cell the model must return logits of the right shape for two images;
   on every batch its logits must have the right shape and be finite, and every submodule must still be in eval
   mode (a forward that calls self.train() is caught); a model exception during a cell becomes one line naming
   the model, the cell and the batch (ModelRun.guard);
2. one executor per threat, each testable alone, recording every cell's per-sample outcomes in a ChunkResult:
   run_clean (one forward shared by the clean cell and the pre-rendered corruption cells of a data stream),
   CorruptionExecutor (renders the batch with the cell's CorruptionSuite object, seeded per sample, through the
   cache of corrupted images the next model of the plan reuses), run_attack_group (one attack spec over all its
   pending eps, robench.attack.run_attack);
3. the chunk runner: decode the samples batch by batch, run every pending cell on each batch (clean forward first,
   then the corruptions, then the attacks with per-sample randomness), and the batch-random attacks on fixed
   blocks at the end.
"""

from __future__ import annotations

import dataclasses
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset

from robench.attack import get_kind, run_attack
from robench.attack.base import confidence, confirm
from robench.corrupt import corrupt_batch
from robench.data.specs import EvalData, TensorData
from robench.errors import RobenchError
from robench.run.cache import CorruptionCache
from robench.run.cells import Cell, Job
from robench.run.store import params_hash
from robench.seeding import sample_seeds



# ---- the checked forward ---------------------------------------------------------------------------------------------
class ModelCheckError(RobenchError):
    """A model broke a per-batch check (logits shape, eval mode); the guard adds the cell and the batch."""


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


@dataclass
class ModelRun:
    """A built model (RobenchModel) under a label: its checked forward for the executors."""
    model: object
    forward: object  # the model, or torch.compile(model)
    label: str
    classes: int  # logits per image
    amp: torch.dtype | None = None
    named: list = field(init=False, repr=False)

    def __post_init__(self):
        self.named = list(self.model.named_modules())

    def check_eval_mode(self) -> None:
        """Every submodule in eval mode (cheap: one attribute per module)."""
        for name, m in self.named:
            if m.training:
                raise ModelCheckError(f"model {self.label} put {name or 'itself'} in training mode during its "
                                      "forward; robench evaluates in eval mode (remove the .train() call)")

    def check_logits(self, logits: torch.Tensor, n: int) -> None:
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (n, self.classes):
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ModelCheckError(f"model {self.label} returned logits of shape {got} for a batch of {n} images; "
                                  f"expected ({n}, {self.classes})")
        if not torch.isfinite(logits).all():
            raise RobenchError(f"model {self.label} produced NaN/inf logits (check the checkpoint and --precision)")

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        ctx = torch.autocast(x.device.type, dtype=self.amp) if self.amp is not None else nullcontext()
        with torch.no_grad(), ctx:
            out = self.forward(x)
        self.check_logits(out, len(x))
        self.check_eval_mode()
        return out.float()

    def predict(self, x, y, extras: dict):
        """Predictions of one batch with their confidences: (pred, confidence, nll). Under --precision bf16/fp16
        every 'misclassified' verdict of the low-precision forward is re-checked with an fp32 forward (only the
        hits); the rejected ones are counted in `extras` (`rejected_hits`), as the attacks do. confidence: the fp32
        softmax probability of the final predicted class over the model's logits (for masked 200-class data the
        logits are already restricted to the evaluated classes); nll: -log softmax of the true class (fp32)."""
        logits = self.logits(x)
        pred = logits.argmax(1)
        if self.amp is not None:
            pred, rejected = confirm(self.model, x, y, pred)
            extras["rejected_hits"] = extras.get("rejected_hits", 0) + int(rejected.sum())
        conf, nll = confidence(logits, pred, y)
        return pred, conf, nll

    @contextmanager
    def guard(self, cell_name: str, idx: torch.Tensor):
        """A failure inside a cell's batch: one line naming the model, the cell and the batch's samples."""
        where = f"cell {cell_name}, batch of samples {int(idx.min())}..{int(idx.max())}" if len(idx) else cell_name
        try:
            yield
        except ModelCheckError as e:
            raise RobenchError(f"{e} ({where})") from None
        except (RobenchError, torch.cuda.OutOfMemoryError):
            raise
        except Exception as e:
            msg = first_line(e)
            hint = (" (does its forward run under torch.no_grad()? attacks need input gradients)"
                    if "does not require grad" in msg or "does not have a grad_fn" in msg else "")
            raise RobenchError(f"model {self.label} failed on {where}: {type(e).__name__}: {msg}{hint}") from None


def check_logits(model, data: EvalData, label: str, device) -> None:
    """Run the model on the first two samples: it must return a logits tensor (B, classes the data needs)."""
    n = min(2, len(data))
    if n == 0:
        raise RobenchError(f"data {data.spec} holds no samples")
    x = torch.stack([data.dataset[i][0] for i in range(n)]).to(device).float()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:
        raise RobenchError(f"model {label} failed on a batch of {data.name} images {tuple(x.shape)}: "
                           f"{type(e).__name__}: {first_line(e)}") from None
    if not isinstance(out, torch.Tensor):
        raise RobenchError(f"model {label} returned a {type(out).__name__}, not a tensor of logits")
    if tuple(out.shape) != (n, data.model_classes):
        raise RobenchError(f"model {label} returned logits of shape {tuple(out.shape)} for {n} {data.name} images; "
                           f"expected ({n}, {data.model_classes}): one logit per class of {data.name}")


def check_readable(data: EvalData) -> None:
    """At least one image decodes (checked in order, so usually after one image): a dataset with no readable
    image is an error before any store or cell exists."""
    if isinstance(data.dataset, TensorData):
        return
    for i in range(len(data)):
        if int(data.dataset[i][1]) >= 0:
            return
    raise RobenchError(f"no readable image in {data.spec}: all {len(data)} images failed to decode (check the files)")



# ---- one executor per threat -----------------------------------------------------------------------------------------
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

    def merge(self, other: "ChunkResult") -> None:
        """Add the outcomes of another batch (counters summed, per-sample tables such as eps_star joined)."""
        for cid, lists in other.res.items():
            for dst, src in zip(self.res[cid], lists):
                dst.extend(src)
        self.skipped += other.skipped
        for cid, counters in other.extras.items():
            mine = self.extras.setdefault(cid, {})
            for key, v in counters.items():
                if isinstance(v, dict):
                    mine.setdefault(key, {}).update(v)
                else:
                    mine[key] = mine.get(key, 0) + v

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



# ---- one chunk -------------------------------------------------------------------------------------------------------
ATTACK_BLOCK = 32  # samples per call of a batch-random attack kind (AutoAttack, torchattacks: one draw per call)


def make_loader(dataset: Dataset, lo: int, hi: int, plan, device: torch.device) -> DataLoader:
    sub = torch.utils.data.Subset(dataset, range(lo, hi))
    workers = plan.workers
    if workers is None:
        workers = 0 if isinstance(dataset, TensorData) or device.type == "cpu" else min(8, os.cpu_count() or 1)
    return DataLoader(sub, batch_size=plan.batch_size, shuffle=False, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=False)


def attack_groups(cells: list[Cell], per_sample: bool) -> list[list[Cell]]:
    """Attack cells grouped by spec (one run covers all its eps): per-sample-random kinds or the others."""
    groups: dict[int, list[Cell]] = {}
    for c in cells:
        if c.threat == "attack" and (not get_kind(c.attack_spec.kind).batch_random) == per_sample:
            groups.setdefault(id(c.attack_spec), []).append(c)
    return list(groups.values())


class ChunkRunner:
    """The executors of one model on a plan's chunks."""

    def __init__(self, mr: ModelRun, plan, device: torch.device, corruptions: CorruptionExecutor, log=None):
        self.mr, self.plan, self.device, self.corruptions = mr, plan, device, corruptions
        self.log = log or (lambda msg: None)

    def compute(self, job: Job, cells: list[Cell], lo: int, hi: int, chunk_lo: int):
        """Outcomes of the cells on samples lo..hi (chunk_lo: the chunk's first sample, where blocks align)."""
        out = ChunkResult(cells)
        if hi <= lo:
            return out.part()
        blocked = bool(attack_groups(cells, per_sample=False))
        xs, ys, idxs = [], [], []
        for x, y, idx in make_loader(job.data.dataset, lo, hi, self.plan, self.device):
            valid = y >= 0
            out.skipped += idx[~valid].tolist()
            if not valid.all():
                x, y, idx = x[valid], y[valid], idx[valid]
            if len(y) == 0:
                continue
            x = x.to(self.device, non_blocking=True).float()
            y = y.to(self.device)
            self.batch(cells, x, y, idx, out)
            if blocked:
                xs.append(x), ys.append(y), idxs.append(idx)
        self.blocks(cells, xs, ys, idxs, chunk_lo, out)
        return out.part()

    def batch(self, cells, x, y, idx, out: ChunkResult) -> None:
        """Every cell on one batch: the shared clean forward, the on-the-fly corruptions, the per-sample attacks.
        The batch's outcomes reach `out` only once all its cells ran: on CUDA OOM they are dropped and its two
        halves run again (down to one sample), so no sample is recorded twice."""
        part = ChunkResult(cells)
        try:
            clean_pred = run_clean(self.mr, [c for c in cells if shares_clean_forward(c)], x, y, idx, part)
            for c in cells:
                if c.threat == "corruption" and not shares_clean_forward(c):
                    self.corruptions.run(self.mr, c, x, y, idx, part)
            for group in attack_groups(cells, per_sample=True):  # one run per spec over all its pending eps
                run_attack_group(self.mr, group, x, y, idx, part, self.plan.seed, self.plan.compile, clean_pred)
        except torch.cuda.OutOfMemoryError:
            if len(y) == 1:
                raise RobenchError("CUDA out of memory even with batch size 1") from None
            del part
            torch.cuda.empty_cache()
            h = len(y) // 2
            self.log(f"CUDA out of memory: retrying with batch size {h}")
            for sl in (slice(0, h), slice(h, None)):
                self.batch(cells, x[sl], y[sl], idx[sl], out)
            return
        out.merge(part)

    def blocks(self, cells, xs, ys, idxs, chunk_lo: int, out: ChunkResult) -> None:
        """Batch-random kinds (AutoAttack, torchattacks) draw batched random numbers: attack fixed blocks of
        ATTACK_BLOCK samples (aligned to the chunk start, whatever the batch size or shard) so their results stay
        reproducible."""
        groups = attack_groups(cells, per_sample=False)
        if not groups or not xs:
            return
        x, y, idx = torch.cat(xs), torch.cat(ys), torch.cat(idxs)
        block = (idx - chunk_lo) // ATTACK_BLOCK
        for b in block.unique().tolist():
            sel = block == b
            for group in groups:
                run_attack_group(self.mr, group, x[sel.to(x.device)], y[sel.to(y.device)], idx[sel], out,
                                 self.plan.seed, self.plan.compile)
