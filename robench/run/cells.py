"""Cell planning: the cells of one model (clean, every corruption x severity, every attack x eps), each carrying
the parameters that identify it, grouped into jobs that share one data stream.

A cell's `params` are hashed by the store (params_hash): they hold every value that can change an outcome, so a
changed value is a new cell and never reuses old rows. Every cell has the weights identity (the model's sha), the
data fingerprint and sample selection, the seed, precision and chunk size; a corruption cell has the suite's values
for that corruption (CorruptionSuite.identity: parameter family, all severity values, options, implementation
version: not only the suite's name, which a user file may share with a shipped suite); an attack cell has every
attack parameter. ROBENCH_SCHEMA versions this layout: cells written under another one are recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from robench.attack import AttackSpec
from robench.corrupt import CorruptionSuite
from robench.data.formats import load_corrupted
from robench.data.specs import EvalData
from robench.run.resolve import PROBE, ResolvedPlan

ROBENCH_SCHEMA = 2  # 1: corruption cells identified by the suite's name (robench 0.1); 2: by its values
PROBE_SAMPLES = 128  # samples attacked by the large-eps sanity probe


@dataclass
class Cell:
    params: dict  # every parameter that defines the result (hashed by the store)
    threat: str  # clean | corruption | attack
    cell_id: int = -1
    attack_spec: AttackSpec | None = None
    eps_index: int = 0
    suite: CorruptionSuite | None = None  # the suite object the corruption executor renders with

    @property
    def name(self) -> str:
        p = self.params
        if self.threat == "corruption":
            return f"{p['corruption']} s{p['severity']}"
        if self.threat == "attack":
            return f"{p['attack']} {p['norm']} eps={p['eps']:.4g}"
        return self.threat


@dataclass
class Job:
    data: EvalData
    cells: list[Cell] = field(default_factory=list)

    @property
    def label(self) -> str:
        c = self.cells[0]
        if len(self.cells) == 1 and c.threat == "corruption":
            return c.name
        counts: dict[str, int] = {}
        for cell in self.cells:
            counts[cell.threat] = counts.get(cell.threat, 0) + 1
        return f"{self.data.name} ({', '.join(f'{v} {k}' for k, v in counts.items())})"


def base_params(rp: ResolvedPlan, info) -> dict:
    """What every cell of a model shares: run settings, weights identity, sample selection."""
    plan = rp.plan
    base = {"precision": plan.precision, "seed": plan.seed, "chunk_size": plan.chunk_size,
            "robench_schema": ROBENCH_SCHEMA, "weights": info.checkpoint_sha256, "limit": plan.limit}
    if info.provenance:  # what defines a model that is not just a registry name (user code, args, norm)
        base["model"] = {k: v for k, v in info.provenance.items() if k != "ref"}
    return base


def corruption_params(suite: CorruptionSuite, corruption: str, severity: int, backend: str) -> dict:
    return {"threat": "corruption", "corruption": corruption, "severity": int(severity),
            "category": suite.category(corruption), "suite": suite.name, "protocol": "standard",
            "backend": backend, "suite_values": suite.identity(corruption)}


def clean_job(rp: ResolvedPlan, base: dict, data: EvalData, info=None) -> Job:
    """The clean set's job: its clean cell, every on-the-fly corruption cell and every attack cell."""
    plan = rp.plan
    dset = {**base, "dataset": data.name, "data_fingerprint": data.fingerprint, "n": len(data)}
    job = Job(data, [Cell({**dset, "threat": "clean", "protocol": "standard"}, "clean")])
    n_cor = min(len(data), plan.corruption_limit) if plan.corruption_limit else len(data)
    for rs in rp.suites:
        for c in rs.corruptions:
            for s in plan.severities:
                p = {**dset, "n": n_cor, **corruption_params(rs.suite, c, s, plan.corruption_backend)}
                job.cells.append(Cell(p, "corruption", suite=rs.suite))
    n_att = min(len(data), plan.attack_limit) if plan.attack_limit else len(data)
    for spec in rp.attacks:
        if spec.adaptive and not has_no_grad_statistic(info):
            continue  # the adaptive twin of an attack applies to variants with a no_grad statistic only
        n_spec = min(n_att, PROBE_SAMPLES) if spec.name == PROBE else n_att
        for i, eps in enumerate(spec.eps):
            p = {**dset, "n": n_spec, "threat": "attack", "attack": spec.name, "norm": spec.norm,
                 "eps": float(eps), "protocol": spec.protocol, "adaptive": bool(spec.adaptive),
                 "attack_params": {k: v for k, v in spec.params_dict().items() if k != "eps"}}
            job.cells.append(Cell(p, "attack", attack_spec=spec, eps_index=i))
    return job


def prerendered_jobs(rp: ResolvedPlan, base: dict) -> list[Job]:
    """A pre-rendered corruption set: one job (one data stream, one cell) per corruption and severity."""
    plan, jobs = rp.plan, []
    for rs in rp.suites:
        for c in rs.corruptions:
            for s in plan.severities:
                d = load_corrupted(rp.data, c, int(s), limit=plan.limit, subset=plan.subset, seed=plan.seed)
                p = {**base, "dataset": d.name, "data_fingerprint": d.fingerprint, "n": len(d),
                     **corruption_params(rs.suite, c, s, "prerendered")}
                del p["suite_values"]  # the images are on disk: the suite's parameter values do not apply
                jobs.append(Job(d, [Cell(p, "corruption", suite=rs.suite)]))
    return jobs


def plan_jobs(rp: ResolvedPlan, info, data: EvalData | None) -> list[Job]:
    """The cells of one model (its built info), grouped into jobs that share a data stream (`data`: the clean set;
    None for a pre-rendered corruption set, read per corruption and severity)."""
    base = base_params(rp, info)
    return [clean_job(rp, base, data, info)] if data is not None else prerendered_jobs(rp, base)


def has_no_grad_statistic(info) -> bool:
    """Whether the adaptive-gradient forward can differ from the default one: a registry model whose attention
    variant computes a statistic under no_grad (elliptical's m); user code and unknown variants: assumed so (the
    attack itself then says if the model has no such layer)."""
    from robench.zoo.attention import ATTENTION_VARIANTS, EllipticalAttention

    cls = ATTENTION_VARIANTS.get(getattr(info, "variant", None))
    return cls is None or issubclass(cls, EllipticalAttention)
