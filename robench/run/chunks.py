"""One chunk of a job on one model: decode the samples batch by batch, run every pending cell on each batch
(clean forward first, then the corruptions, then the attacks with per-sample randomness), and the batch-random
attacks on fixed blocks at the end. Returns the ChunkResult's part (outcomes, unreadable samples, counters)."""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, Dataset

from robench.attack import get_kind
from robench.data.specs import TensorData
from robench.errors import RobenchError
from robench.run.cells import Cell, Job
from robench.run.executors import (ChunkResult, CorruptionExecutor, run_attack_group, run_clean,
                                   shares_clean_forward)
from robench.run.forward import ModelRun

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
        """Run every cell on one batch; on CUDA OOM halve the batch and retry the same samples."""
        try:
            self._cells(cells, x, y, idx, out)
        except torch.cuda.OutOfMemoryError:
            if len(y) == 1:
                raise RobenchError("CUDA out of memory even with batch size 1") from None
            torch.cuda.empty_cache()
            h = len(y) // 2
            self.log(f"CUDA out of memory: retrying with batch size {h}")
            for sl in (slice(0, h), slice(h, None)):
                self.batch(cells, x[sl], y[sl], idx[sl], out)

    def _cells(self, cells, x, y, idx, out: ChunkResult) -> None:
        clean_pred = run_clean(self.mr, [c for c in cells if shares_clean_forward(c)], x, y, idx, out)
        for c in cells:
            if c.threat == "corruption" and not shares_clean_forward(c):
                self.corruptions.run(self.mr, c, x, y, idx, out)
        for group in attack_groups(cells, per_sample=True):  # one run per spec over all its pending eps
            run_attack_group(self.mr, group, x, y, idx, out, self.plan.seed, self.plan.compile, clean_pred)

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
