"""The runner: a resolved plan (robench.run.resolve) executed into the results store, fast and crash-safe. It
keeps only the lifecycle: the store and the run record, progress, resume, interruption and failure. Cells are
planned by robench.run.cells, executed by robench.run.execute, flagged by robench.run.postrun.

For each model, cells that share data form one job: one decode and one clean forward feed the clean cell, every
on-the-fly corruption cell and every attack cell (attacks batched over eps). Samples are processed in fixed chunks
(`chunk_size`, independent of the batch size); each chunk commits atomically for all the cells that needed it, so
an interrupted sweep resumes where it stopped. Under torchrun each chunk is split into contiguous per-rank shards;
rank 0 gathers and writes.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import torch

from robench.attack.core import check_attack_models
from robench.data.formats import load_clean
from robench.errors import RobenchError
from robench.run import dist, postrun
from robench.run.cache import CorruptionCache  # noqa: F401  (its former home; tests import it from here)
from robench.run.cells import Job, plan_jobs
from robench.run.execute import (ATTACK_BLOCK, ChunkRunner, CorruptionExecutor, ModelRun, check_logits,
                                 check_readable)
from robench.run.eps_star import pop_eps_star, write_eps_star
from robench.run.device import AMP_DTYPES, provenance
from robench.run.plan import ModelEntry, Plan
from robench.run.resolve import ResolvedPlan, resolve
from robench.run.store import Store, store_path
from robench.zoo.registry import is_random_init
from robench.zoo.sources import build_model

RESUME_HINT = "interrupted: every finished chunk is saved; rerun the same command to resume"


class Interrupted(RobenchError):
    exit_code = 130


class Runner:
    """Executes a resolved plan into a store. `run()` returns the tidy results of this plan's cells (rank 0)."""

    def __init__(self, rp: ResolvedPlan, progress=None):
        self.rp = rp
        self.plan = rp.plan
        self.device = self.rp.device
        self.amp = AMP_DTYPES[self.plan.precision]
        self.progress = progress
        self.stop_requested = False
        self.rank0 = dist.rank() == 0
        self.store = None
        self.run_id = -1
        self.cell_ids: list[int] = []  # the cells this run evaluated (its results table)
        self._store_created = False
        self._skipped_ids: dict[tuple, set] = {}  # (data spec, fingerprint) -> unreadable sample indices
        self._ids_written: set[str] = set()  # data fingerprints whose sample ids this run stored
        self._chunk_writes = 0
        self._fault = _parse_fault(os.environ.get("ROBENCH_FAULT"))
        # corrupted images are the same for every model: keep them (8-bit, CPU) for the next model of the plan
        cache = CorruptionCache(self.plan.corruption_cache_mb if len(self.plan.models) > 1 else 0)
        self.corruptions = CorruptionExecutor(cache, self.plan.seed)

    # The store is opened on rank 0 only, once the whole plan is resolved and the first model and its data passed
    # every check (bad input never leaves a store behind; a store this run created holding no outcome is removed on
    # failure). Other ranks receive cell ids and pending chunks by broadcast.
    def run(self):
        old = signal.getsignal(signal.SIGINT)
        main_thread = threading.current_thread() is threading.main_thread()
        if self.rank0 and main_thread:
            signal.signal(signal.SIGINT, self._on_sigint)
        try:
            try:
                for m in self.rp.models:
                    self.run_model(m.entry)
            except KeyboardInterrupt:  # second Ctrl-C: stop at once, but as an interruption, with the hint
                raise Interrupted(RESUME_HINT) from None
            if self.rank0:
                self.store.end_run(self.run_id, "done", skipped=self.n_skipped)
        except BaseException as e:
            if self.rank0 and self.store is not None:
                self._close_failed_run("interrupted" if isinstance(e, Interrupted) else "failed")
            raise
        finally:
            if main_thread:
                signal.signal(signal.SIGINT, old)
        return self._results() if self.rank0 else None

    def _results(self):
        """This run's cells of the store (a shared store may hold other cells too)."""
        res = self.store.results()
        return res[res["cell_id"].isin(self.cell_ids)].reset_index(drop=True)

    @property
    def n_skipped(self) -> int:
        return sum(len(v) for v in self._skipped_ids.values())

    def open_store(self):
        """Create/open the store and start this run's record (rank 0), once, right before the first cell."""
        if self.store is not None or not self.rank0:
            return
        path = store_path(self.plan.out)
        self._store_created = not path.exists()
        missing = [p for p in [path.parent.absolute(), *path.parent.absolute().parents] if not p.exists()]
        self._created_dirs = missing  # innermost first: removed again if this run leaves nothing
        self.store = Store(self.plan.out, create=True)
        self.run_id = self.store.start_run(**provenance(self.plan, self.device))

    def _close_failed_run(self, status: str):
        """Record the failed/interrupted run; a store this run created that holds no outcome is deleted."""
        if self._store_created and not self.store.has_outcomes():
            path = self.store.path
            self.store.close()
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(str(path) + suffix).unlink(missing_ok=True)
            for d in self._created_dirs:
                if d.is_dir() and not any(d.iterdir()):
                    d.rmdir()
            self.store = None
            return
        self.store.end_run(self.run_id, status, skipped=self.n_skipped)

    def _on_sigint(self, *_):
        if self.stop_requested:  # second Ctrl-C: stop now (committed chunks are safe anyway)
            raise KeyboardInterrupt
        self.stop_requested = True
        self.log("Ctrl-C: stopping after the current chunk (press again to stop at once)")

    def warn(self, msg: str):
        """A warning the user always sees (also with --quiet), through rich, on stderr."""
        if not self.rank0:
            return
        from rich.console import Console  # local: rich is only needed when there is something to say
        from rich.text import Text

        console = self.progress.console if self.progress is not None else Console(stderr=True)
        console.print(Text.assemble(("warning: ", "bold yellow"), msg), soft_wrap=True)

    def log(self, msg: str):
        if self.rank0 and not self.plan.quiet:
            if self.progress is not None:
                self.progress.log(msg)
            else:
                print(f"[robench] {msg}", file=sys.stderr, flush=True)

    def _note_skipped(self, job: Job, sample_idx: list):
        """Record unreadable samples of a job (per data stream: a pre-rendered set has one per corruption and
        severity); warn once per data spec. The count goes to the run record and the results' `skipped`."""
        if not sample_idx:
            return
        first = not any(k[0] == job.data.spec for k in self._skipped_ids)
        self._skipped_ids.setdefault((job.data.spec, job.data.fingerprint), set()).update(int(i) for i in sample_idx)
        if first:
            ids = job.data.sample_ids
            name = ids[int(sample_idx[0])] if int(sample_idx[0]) < len(ids) else sample_idx[0]
            self.warn(f"skipping unreadable images in {job.data.spec} (first: {name}); they are counted in the "
                      "run and the results' `skipped` column (--strict makes them an error)")

    def _unreadable_message(self, job: Job, empty: list) -> str:
        n = len(self._skipped_ids.get((job.data.spec, job.data.fingerprint), ()))
        if any(c.threat == "clean" for c in empty) or len(empty) == len(job.cells):
            return (f"no readable image in {job.data.spec}: all {n or len(job.data)} evaluated images failed to "
                    "decode (check the files)")
        return (f"{len(empty)} cell(s) on {job.data.spec} have no readable image among their samples (first: "
                f"{empty[0].name}): the images they use all failed to decode")

    # ---- one model -------------------------------------------------------------------------------------------
    def run_model(self, entry: ModelEntry):
        """Build the entry's model (any source: robench.zoo.sources; on the device, eval mode, parameters frozen) and
        evaluate it over the plan's data and threats. Everything is checked (data layout, class count, logits)
        before the store is touched."""
        plan, fmt, label = self.plan, self.rp.data.format, entry.display
        model = build_model(entry).to(self.device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self._describe(model, label)
        data = None
        if not fmt.prerendered:
            data = load_clean(self.rp.data, model.info, limit=plan.limit, subset=plan.subset, seed=plan.seed,
                              strict=plan.strict)
            check_readable(data)
        want = data.model_classes if data is not None else fmt.model_classes
        if model.info.num_classes is not None and model.info.num_classes != want:
            raise RobenchError(f"model {label} has {model.info.num_classes} classes but data {plan.data} has {want}")
        jobs = plan_jobs(self.rp, model.info, data)
        check_logits(model, jobs[0].data, label, self.device)
        check_attack_models(self.rp.attacks, model, label)  # e.g. a token attack needs a ViT
        mask = jobs[0].data.class_mask
        if mask is not None:  # 200-class subsets (ImageNet-A/R): logits restricted to their classes
            model = model.restricted(mask)
        forward = torch.compile(model) if plan.compile else model
        classes = len(mask) if mask is not None else jobs[0].data.model_classes
        mr = ModelRun(model, forward, label, classes, self.amp)
        model_id = self._register_cells(model, label, jobs)
        chunks = ChunkRunner(mr, plan, self.device, self.corruptions, self.log)
        for job in jobs:
            self.run_job(label, chunks, job)
        if self.rank0:
            postrun.write_attack_flags(self.store, self.run_id, model_id, jobs)
            postrun.write_model_flags(self.store, self.run_id, model_id, label, model.info.checkpoint_sha256)
            if plan.diagnostics and data is not None:
                postrun.run_diagnostics(self.store, self.run_id, plan, self.device, model, model_id, data)
        return model_id

    def _describe(self, model, label: str) -> None:
        """What was built, in the log: random weights warned, the source's notes, arch, weights and normalisation."""
        if is_random_init(model.info.checkpoint_sha256):
            self.warn(f"model {label}: RANDOM weights (--random-init); its results are flagged random-init")
        for note in model.info.notes:  # e.g. user code whose weights come from its own code (robench.zoo.sources)
            self.log(note)
        prov = model.info.provenance
        if "normalization" in prov:
            norm = (f"mean {prov['mean']} std {prov['std']} (from {prov['normalization']})"
                    if prov["mean"] is not None else "none: the model takes [0, 1] images (set --mean/--std)")
            self.log(f"{label}: {model.info.source} model {model.info.arch}, {model.info.params} parameters, "
                     f"weights {model.info.checkpoint or 'as built (no checkpoint)'}, input normalisation {norm}")

    def _register_cells(self, model, label: str, jobs: list[Job]):
        """The model and its cells in the store (rank 0; --force resets them), their ids broadcast to all ranks."""
        self.open_store()
        model_id = None
        if self.rank0:
            info = model.info
            model_id = self.store.model_id(label=label, name=info.name, variant=info.variant, arch=info.arch,
                                           params=info.params, checkpoint=info.checkpoint,
                                           checkpoint_sha256=info.checkpoint_sha256)
            for job in jobs:  # each sample's identity (file path or index) and label, for the per-sample export:
                if job.data.fingerprint not in self._ids_written:  # once per data selection and run, not per model
                    self.store.put_sample_ids(job.data.fingerprint, job.data.sample_ids, job.data.labels())
                    self._ids_written.add(job.data.fingerprint)
                for cell in job.cells:
                    n = cell.params["n"]
                    cell.cell_id = self.store.cell_id(model_id, cell.params, n, math.ceil(n / self.plan.chunk_size),
                                                      self.run_id)
                    if self.plan.force:
                        self.store.reset_cell(cell.cell_id)
        ids = dist.broadcast([[c.cell_id for c in job.cells] for job in jobs])
        for job, job_ids in zip(jobs, ids):
            for cell, cid in zip(job.cells, job_ids):
                cell.cell_id = cid
                self.cell_ids.append(cid)
        return model_id

    # ---- one job: its pending chunks -------------------------------------------------------------------------
    def run_job(self, label: str, chunks: ChunkRunner, job: Job):
        plan = self.plan
        n = len(job.data)
        pending = dist.broadcast(self._pending_chunks(job) if self.rank0 else None)
        by_id = {c.cell_id: c for c in job.cells}
        what = f"{label} · {job.label}"
        if not pending:
            self.log(f"{what}: all {len(job.cells)} cells already done (use --force to recompute)")
        total = sum(min(plan.chunk_size, n - ch * plan.chunk_size) for ch in pending)
        task = self.progress.add_task(what, total=total) if (self.progress is not None and self.rank0) else None
        t0, done_samples = time.time(), 0
        for ch in sorted(pending):
            if self.stop_requested:
                raise Interrupted(RESUME_HINT)
            cells = [by_id[c] for c in pending[ch]]
            lo, hi = ch * plan.chunk_size, min(n, (ch + 1) * plan.chunk_size)
            my_lo, my_hi = dist.shard(lo, hi, align=ATTACK_BLOCK)
            parts = dist.gather(chunks.compute(job, cells, my_lo, my_hi, lo))
            if self.rank0:
                self._write_chunk(job, ch, parts)
                done_samples += hi - lo
                if task is not None:
                    self.progress.update(task, advance=hi - lo)
                elif not plan.quiet:
                    rate = done_samples / max(time.time() - t0, 1e-9)
                    self.log(f"{what}: chunk {ch + 1}/{math.ceil(n / plan.chunk_size)} ({len(cells)} cells) "
                             f"{rate:.1f} samples/s, ETA {(total - done_samples) / max(rate, 1e-9):.0f}s")
            dist.barrier()
        if self.rank0:
            self._finish_job(job, task)

    def _pending_chunks(self, job: Job) -> dict[int, list[int]]:
        """chunk index -> ids of the job's unfinished cells still missing that chunk (resume)."""
        pending = {}
        for cell in job.cells:
            if self.store.cell_status(cell.cell_id) == "done":
                continue
            done = self.store.done_chunks(cell.cell_id)
            for ch in range(math.ceil(cell.params["n"] / self.plan.chunk_size)):
                if ch not in done:
                    pending.setdefault(ch, []).append(cell.cell_id)
        return pending

    def _write_chunk(self, job: Job, ch: int, parts: list):
        """One chunk's per-rank parts merged per cell and committed in one transaction."""
        merged = {cid: ([], [], [], [], []) for cid in parts[0][0]}
        skipped, extras = 0, {}
        for res, sk, ex in parts:
            skipped += len(sk)
            self._note_skipped(job, sk)
            for cid, cols in res.items():  # samples, correct, pred, confidence, nll
                for k, v in enumerate(cols):
                    merged[cid][k].extend(v)
            for cid, d in ex.items():
                mine = extras.setdefault(cid, {})
                for key, v in d.items():
                    if isinstance(v, dict):  # per-sample values (a min-norm cell's eps*): merged, not summed
                        mine.setdefault(key, {}).update(v)
                    else:
                        mine[key] = mine.get(key, 0) + v
        self._chunk_writes += 1
        write_eps_star(self.store, pop_eps_star(extras))  # min-norm cells' eps*, before the chunk commits
        self.store.write_chunk(ch, merged, self.run_id, skipped=skipped, extras=extras, _fault=self._fault_cb())

    def _finish_job(self, job: Job, task) -> None:
        """Mark the job's cells done; a cell with every chunk in but no outcome means no readable image."""
        empty = []
        for cell in job.cells:
            n_chunks = math.ceil(cell.params["n"] / self.plan.chunk_size)
            if not self.store.finish_cell(cell.cell_id) and len(self.store.done_chunks(cell.cell_id)) >= n_chunks:
                empty.append(cell)  # every chunk is in, yet no outcome: no readable image
        if task is not None:
            self.progress.remove_task(task)
        if empty:
            raise RobenchError(self._unreadable_message(job, empty))

    def _fault_cb(self):
        """Test hooks: ROBENCH_FAULT=kill@N SIGKILLs this process in the middle of the N-th chunk transaction;
        sigint2@N sends it two SIGINTs there (a user pressing Ctrl-C twice)."""
        if self._fault is None or self._chunk_writes != self._fault[1]:
            return None

        def die(i):
            if i == 0 and self._fault[0] == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif i == 0:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
        return die


def _parse_fault(value):
    if not value:
        return None
    kind, _, n = value.partition("@")
    if kind in ("kill", "sigint2") and n.isdigit():
        return kind, int(n)
    return None


def run_plan(plan: Plan | ResolvedPlan, progress=None, with_flags: bool = False):
    """Resolve a plan and run it; returns the tidy results (rank 0) of its cells (with_flags: the store's sanity
    flags in `.attrs["flags"]`). Resumes whatever is already in the store. The one path of `robench eval`/`sweep`,
    robench.evaluate and `inspect --out`."""
    with dist.initialized():
        runner = Runner(resolve(plan), progress)
        try:
            res = runner.run()
            if res is not None and with_flags:
                res.attrs["flags"] = runner.store.flags()
            return res
        finally:
            if runner.store is not None:
                runner.store.close()
