"""Sweep execution: (models x threats) -> per-sample rows in the results store, fast and crash-safe.

A sweep is a list of cells (model, data, threat). For each model, cells that can share data form one job: one
decode and one clean forward feed the clean cell, every on-the-fly corruption cell and every attack cell (attacks
batched over eps). Samples are processed in fixed chunks (`chunk_size`, independent of the batch size); each chunk
commits atomically for all the cells that needed it, so an interrupted sweep resumes where it stopped. Under
torchrun each chunk is split into contiguous per-rank shards; rank 0 gathers and writes.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from robench.attack import get_kind, large_eps_probe, load_attack_suite, run_attack
from robench.attack.base import confirm
from robench.corrupt import corrupt_batch, get_suite
from robench.data.formats import DataSpec, load_clean, load_corrupted, parse_data
from robench.data.specs import EvalData, TensorData
from robench.diag import inspect_model
from robench.errors import RobenchError
from robench.run import dist
from robench.run.plan import ModelEntry, Plan, suite_corruptions
from robench.run.preflight import preflight
from robench.run.store import Store, params_hash, store_path
from robench.seeding import sample_seeds
from robench.zoo.registry import is_random_init
from robench.zoo.sources import build_model

AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
ATTACK_BLOCK = 32  # samples per call of a batch-random attack kind (AutoAttack, torchattacks: one draw per call)
PROBE_SAMPLES = 128  # samples attacked by the large-eps sanity probe


class Interrupted(RobenchError):
    exit_code = 130


RESUME_HINT = "interrupted: every finished chunk is saved; rerun the same command to resume"


@dataclass
class Cell:
    params: dict  # every parameter that defines the result (hashed by the store)
    kind: str  # clean | corruption | attack
    cell_id: int = -1
    attack_spec: object = None
    eps_index: int = 0


@dataclass
class Job:
    data: EvalData
    cells: list[Cell] = field(default_factory=list)
    attack_limit: int | None = None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist.local_rank() if dist.is_distributed() else 0)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise RobenchError(f"unknown device '{name}' (auto, cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RobenchError(f"device '{name}' requested but CUDA is not available")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise RobenchError("device 'mps' requested but MPS is not available")
    return dev


def provenance(plan: Plan, device: torch.device) -> dict:
    import timm

    return dict(torch_version=torch.__version__, timm_version=timm.__version__,
                python_version=platform.python_version(), device=str(device),
                gpu_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "",
                precision=plan.precision, seed=plan.seed, world_size=dist.world_size(),
                command=plan.command or " ".join(sys.argv), host=platform.node())


# ---- planning ----------------------------------------------------------------------------------------------------
def plan_jobs(plan: Plan, model, data: EvalData | None, data_spec: DataSpec | None = None) -> list[Job]:
    """The cells of one model, grouped into jobs that share a data stream (`data`: the clean set; None for a
    pre-rendered corruption set, read per corruption and severity from `data_spec`)."""
    data_spec = parse_data(data_spec or plan.data)
    base = {"precision": plan.precision, "seed": plan.seed, "chunk_size": plan.chunk_size,
            "robench_schema": 1}
    if model.info.provenance:  # what defines a model that is not just a registry name (user code, args, norm)
        base["model"] = {k: v for k, v in model.info.provenance.items() if k != "ref"}
    jobs = []
    if data is not None:
        dset = {"dataset": data.name, "data_fingerprint": data.fingerprint, "n": len(data)}
        job = Job(data, attack_limit=plan.attack_limit)
        job.cells.append(Cell({**base, **dset, "threat": "clean", "protocol": "standard"}, "clean"))
        n_cor = min(len(data), plan.corruption_limit) if plan.corruption_limit else len(data)
        for suite_name in plan.corruptions:
            suite = get_suite(suite_name)
            for c in suite_corruptions(suite, plan):
                for s in plan.severities:
                    job.cells.append(Cell({**base, **dset, "n": n_cor, "threat": "corruption", "corruption": c,
                                           "severity": int(s),
                                           "category": suite.category(c), "suite": suite.name,
                                           "params_set": suite.params, "backend": plan.corruption_backend,
                                           "protocol": "standard"}, "corruption"))
        specs = [spec for name in plan.attacks for spec in load_attack_suite(name, eps=plan.eps, steps=plan.steps)]
        n_att = min(len(data), plan.attack_limit) if plan.attack_limit else len(data)
        probe_norms = sorted({s.norm for s in specs if s.protocol == "standard"}) if plan.sanity_probe else []
        specs += [large_eps_probe(norm) for norm in probe_norms]  # every real model fails it: masking check
        for spec in specs:
            n_spec = min(n_att, PROBE_SAMPLES) if spec.name == "probe-large-eps" else n_att
            for i, eps in enumerate(spec.eps):
                p = {**base, **dset, "n": n_spec, "threat": "attack", "attack": spec.name, "norm": spec.norm,
                     "eps": float(eps), "protocol": spec.protocol, "adaptive": bool(spec.adaptive),
                     "attack_params": {k: v for k, v in spec.params_dict().items() if k != "eps"}}
                job.cells.append(Cell(p, "attack", attack_spec=spec, eps_index=i))
        jobs.append(job)
    else:  # pre-rendered corruption set: one job per (corruption, severity)
        for suite_name in plan.corruptions or [data_spec.format.default_suite]:
            suite = get_suite(suite_name)
            for c in suite_corruptions(suite, plan):
                for s in plan.severities:
                    d = load_corrupted(data_spec, c, int(s), limit=plan.limit, subset=plan.subset, seed=plan.seed)
                    p = {**base, "dataset": d.name, "data_fingerprint": d.fingerprint, "n": len(d),
                         "threat": "corruption", "corruption": c, "severity": int(s), "category": suite.category(c),
                         "suite": suite.name, "backend": "prerendered", "protocol": "standard"}
                    jobs.append(Job(d, [Cell(p, "corruption")]))
    return jobs


# ---- execution ---------------------------------------------------------------------------------------------------
class Runner:
    """Executes a plan into a store. `run()` returns the tidy results of this plan's models."""

    def __init__(self, plan: Plan, progress=None):
        self.plan = plan.validate()
        self.data_spec = parse_data(plan.data)  # parsed once, here
        self.device = resolve_device(plan.device)
        self.amp = AMP_DTYPES[plan.precision]
        self.progress = progress
        self.stop_requested = False
        self.rank0 = dist.rank() == 0
        self.store = None
        self.cell_ids = []  # the cells this run evaluated (of every model)
        self._chunk_writes = 0
        self._fault = _parse_fault(os.environ.get("ROBENCH_FAULT"))
        # corrupted images are the same for every model: keep them (8-bit, CPU) for the next model of the plan
        self.corrupted = CorruptionCache(plan.corruption_cache_mb if len(plan.models) > 1 else 0)

    # The store is opened on rank 0 only, once the whole plan is validated and the first model and its data passed
    # every check (bad input never leaves a store behind; a store this run created holding no outcome is removed on
    # failure). Other ranks receive cell ids and pending chunks by broadcast.
    def run(self):
        plan = self.plan
        preflight(plan)
        self.run_id = -1
        self._store_created = False
        self._skipped_ids: dict[tuple, set] = {}  # (data spec, fingerprint) -> unreadable sample indices
        self.cell_ids: list[int] = []  # the cells this run evaluated (its results table)
        old = signal.getsignal(signal.SIGINT)
        if self.rank0 and _is_main_thread():
            signal.signal(signal.SIGINT, self._on_sigint)
        try:
            try:
                for entry in plan.models:
                    self.run_model(entry)
            except KeyboardInterrupt:  # second Ctrl-C: stop at once, but as an interruption, with the hint
                raise Interrupted(RESUME_HINT) from None
            if self.rank0:
                self.store.end_run(self.run_id, "done", skipped=self.n_skipped)
        except BaseException as e:
            if self.rank0 and self.store is not None:
                self._close_failed_run("interrupted" if isinstance(e, Interrupted) else "failed")
            raise
        finally:
            if _is_main_thread():
                signal.signal(signal.SIGINT, old)
        if not self.rank0:
            return None
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
        from rich.console import Console
        from rich.text import Text

        console = self.progress.console if self.progress is not None else Console(stderr=True)
        console.print(Text.assemble(("warning: ", "bold yellow"), msg), soft_wrap=True)

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
        if any(c.kind == "clean" for c in empty) or len(empty) == len(job.cells):
            return (f"no readable image in {job.data.spec}: all {n or len(job.data)} evaluated images failed to "
                    "decode (check the files)")
        return (f"{len(empty)} cell(s) on {job.data.spec} have no readable image among their samples (first: "
                f"{_cell_name(empty[0])}): the images they use all failed to decode")

    def log(self, msg: str):
        if self.rank0 and not self.plan.quiet:
            if self.progress is not None:
                self.progress.log(msg)
            else:
                print(f"[robench] {msg}", file=sys.stderr, flush=True)

    def load_model(self, entry: ModelEntry):
        """The entry's model (any source: robench.zoo.sources) on the device, eval mode, parameters frozen."""
        model = build_model(entry).to(self.device).eval()
        if is_random_init(model.info.checkpoint_sha256):
            self.warn(f"model {entry.display}: RANDOM weights (--random-init); its results are flagged random-init")
        for note in model.info.notes:  # e.g. user code whose weights come from its own code (robench.zoo.sources)
            self.log(note)
        for p in model.parameters():
            p.requires_grad_(False)
        prov = model.info.provenance
        if "normalization" in prov:
            norm = (f"mean {prov['mean']} std {prov['std']} (from {prov['normalization']})"
                    if prov["mean"] is not None else "none: the model takes [0, 1] images (set --mean/--std)")
            self.log(f"{entry.display}: {model.info.source} model {model.info.arch}, {model.info.params} parameters, "
                     f"weights {model.info.checkpoint or 'as built (no checkpoint)'}, input normalisation {norm}")
        return model

    def run_model(self, entry: ModelEntry):
        return self.evaluate_model(self.load_model(entry), entry.display)

    def evaluate_model(self, model, label: str):
        """The one engine entry: a built model (RobenchModel: module + description) under a label, over the plan's
        data and threats. Everything is checked (data layout, class count, logits) before the store is touched."""
        plan = self.plan
        spec = self.data_spec
        self.label = label
        data = None
        fmt = spec.format
        if not fmt.prerendered:
            data = load_clean(spec, model.info, limit=plan.limit, subset=plan.subset, seed=plan.seed,
                              strict=plan.strict)
            _check_readable(data)
        want = data.model_classes if data is not None else fmt.model_classes
        if model.info.num_classes is not None and model.info.num_classes != want:
            raise RobenchError(f"model {label} has {model.info.num_classes} classes but data {plan.data} has {want}")
        jobs = plan_jobs(plan, model, data, spec)
        check_logits(model, jobs[0].data, label, self.device)
        mask = jobs[0].data.class_mask
        if mask is not None:  # 200-class subsets (ImageNet-A/R): logits restricted to their classes
            model = model.restricted(mask)
        forward = torch.compile(model) if plan.compile else model
        model_id = None
        self.open_store()
        if self.rank0:
            info = model.info
            model_id = self.store.model_id(label=label, name=info.name, variant=info.variant, arch=info.arch,
                                           params=info.params, checkpoint=info.checkpoint,
                                           checkpoint_sha256=info.checkpoint_sha256)
            for job in jobs:
                n_job = len(job.data)
                for cell in job.cells:
                    n = cell.params["n"]
                    cell.cell_id = self.store.cell_id(model_id, cell.params, n, math.ceil(n / plan.chunk_size),
                                                      self.run_id)
                    if plan.force:
                        self.store.reset_cell(cell.cell_id)
                    self.cell_ids.append(cell.cell_id)
                assert n_job >= max(c.params["n"] for c in job.cells)
        ids = dist.broadcast([[c.cell_id for c in job.cells] for job in jobs])
        for job, job_ids in zip(jobs, ids):
            for cell, cid in zip(job.cells, job_ids):
                cell.cell_id = cid
                self.cell_ids.append(cid)
        for job in jobs:
            self.run_job(label, model, forward, job)
        if self.rank0:
            self.write_flags(model_id, jobs)
            self.write_model_flags(model_id, label, model.info.checkpoint_sha256)
            if plan.diagnostics and data is not None:
                self.run_diagnostics(model, model_id, data)
        return model_id

    def run_job(self, label: str, model, forward, job: Job):
        plan = self.plan
        n = len(job.data)
        n_chunks = math.ceil(n / plan.chunk_size)
        pending = dist.broadcast(self._pending_chunks(job) if self.rank0 else None)
        by_id = {c.cell_id: c for c in job.cells}
        what = f"{label} · {_job_label(job)}"
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
            part = self.compute_chunk(model, forward, job, cells, my_lo, my_hi, lo)
            parts = dist.gather(part)
            if self.rank0:
                merged, skipped, extras = self._merge_parts(job, parts)
                self._chunk_writes += 1
                self.store.write_chunk(ch, merged, self.run_id, skipped=skipped, extras=extras,
                                       _fault=self._fault_cb())
                done_samples += hi - lo
                if task is not None:
                    self.progress.update(task, advance=hi - lo)
                elif not plan.quiet:
                    rate = done_samples / max(time.time() - t0, 1e-9)
                    eta = (total - done_samples) / max(rate, 1e-9)
                    self.log(f"{what}: chunk {ch + 1}/{n_chunks} ({len(cells)} cells) "
                             f"{rate:.1f} samples/s, ETA {eta:.0f}s")
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

    def _merge_parts(self, job: Job, parts: list):
        """One chunk's per-rank parts merged per cell: (outcomes {cell: (samples, correct, preds)}, skipped, extras)."""
        merged = {cid: ([], [], []) for cid in parts[0][0]}
        skipped, extras = 0, {}
        for res, sk, ex in parts:
            skipped += len(sk)
            self._note_skipped(job, sk)
            for cid, (s, c, p) in res.items():
                merged[cid][0].extend(s)
                merged[cid][1].extend(c)
                merged[cid][2].extend(p)
            for cid, d in ex.items():
                for key, v in d.items():
                    _add(extras.setdefault(cid, {}), key, v)
        return merged, skipped, extras

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

    # ---- one chunk: clean forward, corruptions, attacks ----------------------------------------------------------
    def compute_chunk(self, model, forward, job: Job, cells: list[Cell], lo: int, hi: int, chunk_lo: int):
        """Outcomes of the cells on samples lo..hi: ({cell_id: (samples, correct, pred)}, unreadable sample
        indices, extras)."""
        res = {c.cell_id: ([], [], []) for c in cells}
        self._extras = {}
        skipped = []
        if hi <= lo:
            return res, skipped, {}
        loader = self._loader(job.data.dataset, lo, hi)
        blocked = bool(_attack_groups(cells, per_sample=False))
        xs, ys, idxs = [], [], []
        for x, y, idx in loader:
            valid = y >= 0
            skipped += idx[~valid].tolist()
            if not valid.all():
                x, y, idx = x[valid], y[valid], idx[valid]
            if len(y) == 0:
                continue
            x = x.to(self.device, non_blocking=True).float()
            y = y.to(self.device)
            self._process_batch(model, forward, job, cells, x, y, idx, res)
            if blocked:
                xs.append(x), ys.append(y), idxs.append(idx)
        self._attack_blocks(model, cells, xs, ys, idxs, chunk_lo, res)
        return res, skipped, self._extras

    def _process_batch(self, model, forward, job, cells, x, y, idx, res):
        """Run every cell on one batch; on CUDA OOM halve the batch and retry the same samples."""
        try:
            self._batch_cells(model, forward, job, cells, x, y, idx, res)
        except torch.cuda.OutOfMemoryError:
            if len(y) == 1:
                raise RobenchError("CUDA out of memory even with batch size 1") from None
            torch.cuda.empty_cache()
            h = len(y) // 2
            self.log(f"CUDA out of memory: retrying with batch size {h}")
            for sl in (slice(0, h), slice(h, None)):
                self._process_batch(model, forward, job, cells, x[sl], y[sl], idx[sl], res)

    def _logits(self, forward, x, name):
        ctx = torch.autocast(self.device.type, dtype=self.amp) if self.amp is not None else nullcontext()
        with torch.no_grad(), ctx:
            logits = forward(x).float()
        if not torch.isfinite(logits).all():
            raise RobenchError(f"model {name} produced NaN/inf logits (check the checkpoint and --precision)")
        return logits

    def _predict(self, model, forward, x, y, name, cell_id):
        """Predictions of one batch for a cell. Under --precision bf16/fp16 every 'misclassified' verdict of the
        low-precision forward is re-checked with an fp32 forward (only the hits); the rejected ones are counted in
        the cell's extras (`rejected_hits`), as the attacks do."""
        pred = self._logits(forward, x, name).argmax(1)
        if self.amp is None:
            return pred
        pred, rejected = confirm(model, x, y, pred)
        _add(self._extras.setdefault(cell_id, {}), "rejected_hits", int(rejected.sum()))
        return pred

    def _record(self, res, cell_id, idx, correct, pred):
        s, c, p = res[cell_id]
        s.extend(idx.tolist())
        c.extend(correct.int().tolist())
        p.extend(pred.tolist())

    def _batch_cells(self, model, forward, job, cells, x, y, idx, res):
        plan = self.plan
        name = self.label
        clean_pred = None
        clean_cells = [c for c in cells
                       if c.kind == "clean" or (c.kind == "corruption" and c.params.get("backend") == "prerendered")]
        if clean_cells:
            pred = clean_pred = self._predict(model, forward, x, y, name, clean_cells[0].cell_id)
            for c in clean_cells:
                self._record(res, c.cell_id, idx, pred == y, pred.cpu())
        for c in cells:
            if c.kind != "corruption" or c.params.get("backend") == "prerendered":
                continue
            keep = idx < c.params["n"]  # --corruption-limit
            if not keep.any():
                continue
            xk, yk, ik = (x, y, idx) if keep.all() else (x[keep.to(x.device)], y[keep.to(y.device)], idx[keep])
            key = (c.params["corruption"], c.params["severity"], c.params["suite"], c.params["backend"], plan.seed,
                   c.params["data_fingerprint"], tuple(ik.tolist()))
            xc = self.corrupted.get(key, x.device)
            if xc is None:  # corrupted on x's device and fed straight to the model
                seeds = sample_seeds(plan.seed, ik, c.params["corruption"], c.params["severity"])
                t0 = time.perf_counter()
                xc = corrupt_batch(xk, c.params["corruption"], c.params["severity"], seeds, suite=c.params["suite"],
                                   backend=c.params["backend"])
                self.corrupted.put(key, xc, corrupt_s=_elapsed(t0, xc.device))
            pred = self._predict(model, forward, xc, yk, name, c.cell_id)
            self._record(res, c.cell_id, ik, pred == yk, pred.cpu())
        # attacks with per-sample randomness: one run per spec over all its pending eps (batched sweep)
        for group in _attack_groups(cells, per_sample=True):
            self._attack_group(model, group, x, y, idx, res, clean_pred)

    def _attack_group(self, model, group: list[Cell], x, y, idx, res, clean_pred=None):
        keep = idx < group[0].params["n"]  # --attack-limit
        if not keep.any():
            return
        xa, ya, ia = x[keep.to(x.device)], y[keep.to(y.device)], idx[keep]
        if clean_pred is not None:
            clean_pred = clean_pred[keep.to(clean_pred.device)]
        spec = group[0].attack_spec
        spec = dataclasses.replace(spec, eps=tuple(spec.eps[c.eps_index] for c in group))
        seeds = sample_seeds(self.plan.seed, ia, "attack", spec.name, params_hash(group[0].params["attack_params"]))
        out = run_attack(model, xa, ya, spec, seeds, amp_dtype=self.amp, clean_pred=clean_pred,
                         compile=self.plan.compile)
        for j, c in enumerate(group):
            self._record(res, c.cell_id, ia, out.robust[j].cpu(), out.adv_pred[j].cpu())
            extra = self._extras.setdefault(c.cell_id, {})
            _add(extra, "attacked", len(ia))
            _add(extra, "zero_grad", int(out.zero_grad.sum()))
            if self.amp is not None:  # low-precision "misclassified" verdicts that an fp32 forward rejected
                _add(extra, "rejected_hits", int(out.info.get("rejected_hits", [0] * len(group))[j]))
            per_eps = out.info.get("per_eps")
            if per_eps:  # AutoAttack: robust count after each of its attacks (for the square-beats-whitebox flag)
                for a, count in per_eps[j]["robust_after"].items():
                    _add(extra, f"robust_after:{a}", int(count))

    def _attack_blocks(self, model, cells, xs, ys, idxs, lo_chunk, res):
        """Batch-random kinds (AutoAttack, torchattacks) draw batched random numbers: attack fixed blocks of ATTACK_BLOCK samples
        (aligned to the chunk start, whatever the batch size or shard) so their results stay reproducible."""
        groups = _attack_groups(cells, per_sample=False)
        if not groups or not xs:
            return
        x, y, idx = torch.cat(xs), torch.cat(ys), torch.cat(idxs)
        block = (idx - lo_chunk) // ATTACK_BLOCK
        for b in block.unique().tolist():
            sel = block == b
            for group in groups:
                self._attack_group(model, group, x[sel.to(x.device)], y[sel.to(y.device)], idx[sel], res)

    def _loader(self, dataset: Dataset, lo: int, hi: int):
        sub = torch.utils.data.Subset(dataset, range(lo, hi))
        workers = self.plan.workers
        if workers is None:
            workers = 0 if isinstance(dataset, TensorData) or self.device.type == "cpu" else min(8, os.cpu_count() or 1)
        return DataLoader(sub, batch_size=self.plan.batch_size, shuffle=False, num_workers=workers,
                          pin_memory=self.device.type == "cuda", persistent_workers=False)

    # ---- after the cells ----------------------------------------------------------------------------------------
    def write_flags(self, model_id, jobs):
        try:
            from robench.attack import sanity_flags
        except ImportError:
            return
        res = self.store.results()
        mine = res[res["cell_id"].isin([c.cell_id for j in jobs for c in j.cells])]
        att = mine[mine["threat"] == "attack"]
        if att.empty:
            return
        clean = mine[mine["threat"] == "clean"]["value"]
        extras = self.store.cell_extras(att.cell_id)
        rows = []
        for r in att.itertuples():
            ex = extras.get(r.cell_id, {})
            n_att = ex.get("attacked") or 0
            kind = next((c.attack_spec.kind for j in jobs for c in j.cells if c.cell_id == r.cell_id), None)
            rows.append(dict(attack=r.attack, kind=kind, norm=r.norm, eps=r.eps, robust_acc=r.value, n=r.n,
                             protocol=r.protocol, zero_grad_frac=ex["zero_grad"] / n_att if n_att else None,
                             acc_after={k.split(":", 1)[1]: v / n_att for k, v in ex.items()
                                        if k.startswith("robust_after:") and n_att} or None))
        flags = sanity_flags(rows, float(clean.iloc[0]) if len(clean) else None)
        self.store.write_flags(model_id, flags, self.run_id)

    def write_model_flags(self, model_id, label: str, sha: str):
        """Flags of the model itself, shown in every table and report: random weights. (Skipped images are in
        the results' `skipped` column.)"""
        flags = []
        if is_random_init(sha):
            flags.append({"flag": "random-init", "message": f"{label} was evaluated with RANDOM weights "
                          "(no checkpoint, --random-init): its accuracies say nothing about a trained model"})
        self.store.add_flags(model_id, flags, self.run_id)

    def run_diagnostics(self, model, model_id, data: EvalData):
        n = min(len(data), self.plan.diagnostics_limit)
        params = {"dataset": data.name, "data_fingerprint": data.fingerprint, "n": n, "threat": "diagnostics",
                  "seed": self.plan.seed, "protocol": "standard"}
        cid = self.store.cell_id(model_id, params, n, 1, self.run_id)
        if self.store.cell_status(cid) == "done" and not self.plan.force:
            return
        batches = (x.to(self.device) for x, _, _ in self._loader(data.dataset, 0, n))
        rows = inspect_model(model, batches)
        self.store.write_diagnostics(cid, rows)
        self.store.write_chunk(0, {cid: ([], [], [])}, self.run_id)
        self.store.finish_cell(cid, allow_empty=True)


def _elapsed(t0: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


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
        msg = (str(e).strip().splitlines() or [""])[0][:200]
        raise RobenchError(f"model {label} failed on a batch of {data.name} images {tuple(x.shape)}: "
                           f"{type(e).__name__}: {msg}") from None
    if not isinstance(out, torch.Tensor):
        raise RobenchError(f"model {label} returned a {type(out).__name__}, not a tensor of logits")
    if tuple(out.shape) != (n, data.model_classes):
        raise RobenchError(f"model {label} returned logits of shape {tuple(out.shape)} for {n} {data.name} images; "
                           f"expected ({n}, {data.model_classes}): one logit per class of {data.name}")


class CorruptionCache:
    """LRU of corrupted batches as uint8 on the CPU, within a byte budget (0 disables it). Lossless: the
    corruption engine quantises to 8-bit levels; a batch that is not on the 8-bit grid is not cached.

    Only where it pays: a corruption whose first cached batch took longer to store (quantise, copy to the host)
    than half the time to compute it (a later read costs about as much again) is recomputed from then on, e.g. the
    pointwise corruptions on a GPU."""

    def __init__(self, budget_mb: int):
        from collections import OrderedDict

        self.budget, self.used, self.items = budget_mb * 2**20, 0, OrderedDict()
        self.recompute: set = set()  # corruption names not worth caching

    def get(self, key, device):
        if key not in self.items:
            return None
        self.items.move_to_end(key)
        return self.items[key].to(device).float().div_(255)

    def put(self, key, x: torch.Tensor, corrupt_s: float | None = None):
        if self.budget <= 0 or x.numel() > self.budget or key[0] in self.recompute:
            return
        t0 = time.perf_counter()
        q = (x * 255).round()
        if not torch.equal(q / 255, x):
            return
        self.items[key] = q.to(torch.uint8).cpu()
        self.used += x.numel()
        if corrupt_s is not None and 2 * (time.perf_counter() - t0) > corrupt_s:
            self.recompute.add(key[0])
            self.used -= self.items.pop(key).numel()
            return
        while self.used > self.budget:
            _, old = self.items.popitem(last=False)
            self.used -= old.numel()


def _add(d: dict, key: str, v):
    d[key] = d.get(key, 0) + v


def _attack_groups(cells: list[Cell], per_sample: bool) -> list[list[Cell]]:
    """Attack cells grouped by spec (one run covers all its eps): per-sample-random kinds or the others."""
    groups: dict[int, list[Cell]] = {}
    for c in cells:
        if c.kind == "attack" and (not get_kind(c.attack_spec.kind).batch_random) == per_sample:
            groups.setdefault(id(c.attack_spec), []).append(c)
    return list(groups.values())


def _check_readable(data: EvalData) -> None:
    """At least one image decodes (checked in order, so usually after one image): a dataset with no readable
    image is an error before any store or cell exists."""
    if isinstance(data.dataset, TensorData):
        return
    for i in range(len(data)):
        if int(data.dataset[i][1]) >= 0:
            return
    raise RobenchError(f"no readable image in {data.spec}: all {len(data)} images failed to decode (check the files)")


def _cell_name(c: Cell) -> str:
    p = c.params
    if c.kind == "corruption":
        return f"{p['corruption']} s{p['severity']}"
    if c.kind == "attack":
        return f"{p['attack']} {p['norm']} eps={p['eps']:.4g}"
    return c.kind


def _job_label(job: Job) -> str:
    c = job.cells[0]
    if len(job.cells) == 1 and c.kind == "corruption":
        return f"{c.params['corruption']} s{c.params['severity']}"
    kinds = {}
    for cell in job.cells:
        kinds[cell.kind] = kinds.get(cell.kind, 0) + 1
    return f"{job.data.name} ({', '.join(f'{v} {k}' for k, v in kinds.items())})"


def _parse_fault(value):
    if not value:
        return None
    kind, _, n = value.partition("@")
    if kind in ("kill", "sigint2") and n.isdigit():
        return kind, int(n)
    return None


def _is_main_thread():
    import threading

    return threading.current_thread() is threading.main_thread()


def run_plan(plan: Plan, progress=None):
    """Run a plan; returns the tidy results (rank 0) of its models. Resumes whatever is already in the store."""
    with dist.initialized():
        return Runner(plan, progress).run()
