"""Resolve once: a Plan (options or a plan file) becomes a ResolvedPlan of typed objects, checked whole before any
store is created, any model built or any image read. Everything after it (the cells, the executors, the runner,
robench.evaluate, `inspect --out`) consumes these objects and never parses a spec string or loads a suite again.

Checks (each failure is a one-line RobenchError): plan values and their types (Plan.validate), the data spec, the
device, the output path, every model (robench.zoo.sources.check_entry: known name, its checkpoint present, or
weights shipped, or `random_init` asked for), the corruption suites and names, the attack suites and every eps
range, and options that only mean something with another option (--eps needs --attack, --corruption needs
--corruptions).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from robench.attack import AttackSpec, large_eps_probe, load_attack_suite
from robench.corrupt import CorruptionSuite, get_suite
from robench.data.formats import DataSpec, parse_data
from robench.errors import RobenchError, suggest
from robench.run.device import resolve_device
from robench.run.plan import ModelEntry, Plan
from robench.run.checks import check_output, check_spec_eps
from robench.zoo.info import ModelInfo
from robench.zoo.sources import check_entry

PROBE = "probe-large-eps"  # the sanity probe's attack name (robench.attack.large_eps_probe)


@dataclass
class ResolvedModel:
    entry: ModelEntry
    info: ModelInfo | None  # static info; None for user code (known only once built)


@dataclass
class ResolvedSuite:
    suite: CorruptionSuite
    corruptions: list[str]  # the ones this plan evaluates, in the suite's order


@dataclass
class ResolvedPlan:
    plan: Plan
    data: DataSpec
    device: torch.device
    models: list[ResolvedModel]
    suites: list[ResolvedSuite] = field(default_factory=list)
    attacks: list[AttackSpec] = field(default_factory=list)  # eps parsed; the large-eps probes last

    @property
    def infos(self) -> list:
        return [m.info for m in self.models]


def suite_corruptions(suite: CorruptionSuite, plan: Plan) -> list[str]:
    """The corruptions of a suite that the plan evaluates: all of them, or those named by --corruption, in the
    suite's order; a name the suite lacks is an error."""
    if not plan.corruption_names:
        return list(suite.corruptions)
    for c in plan.corruption_names:
        if c not in suite.corruptions:
            raise RobenchError(f"corruption '{c}' is not in suite {suite.name}" + suggest(c, suite.corruptions))
    return [c for c in suite.corruptions if c in plan.corruption_names]


def resolve_suites(plan: Plan, data: DataSpec) -> list[ResolvedSuite]:
    names = plan.corruptions or ([data.format.default_suite] if data.format.prerendered else [])
    if plan.corruption_names and not names:
        raise RobenchError("--corruption (plan: corruption_names) picks corruptions of a suite: give --corruptions "
                           "too (plan: corruptions), e.g. --corruptions imagenet-c")
    out = []
    for name in dict.fromkeys(names):  # each suite once
        suite = get_suite(name)
        out.append(ResolvedSuite(suite, suite_corruptions(suite, plan)))
    return out


def resolve_attacks(plan: Plan, infos: list) -> list[AttackSpec]:
    if plan.eps is not None and not plan.attacks:
        raise RobenchError("--eps (plan: eps) sets the eps of attacks: give --attack too (plan: attacks)")
    specs = [spec for name in dict.fromkeys(plan.attacks)
             for spec in load_attack_suite(name, eps=plan.eps, steps=plan.steps)]
    if not plan.allow_large_eps:
        check_spec_eps(specs, infos)
    check_spec_models(specs, infos)
    probe_norms = sorted({s.norm for s in specs if s.protocol == "standard" and s.eps[0] < float("inf")}) \
        if plan.sanity_probe else []  # eps inf: a minimum-norm attack (no fixed eps to probe)
    return specs + [large_eps_probe(norm) for norm in probe_norms]  # every real model fails it: masking check


def resolve(plan: Plan | ResolvedPlan) -> ResolvedPlan:
    """The one validation and parsing pass of a run (a ResolvedPlan passes through)."""
    if isinstance(plan, ResolvedPlan):
        return plan
    plan.validate()
    data = parse_data(plan.data)
    device = resolve_device(plan.device)
    check_output(plan)
    models = [ResolvedModel(m, check_entry(m)) for m in plan.models]
    for m in models:
        if m.info is None and (m.entry.mean is None) != (m.entry.std is None):  # user code takes --mean/--std
            raise RobenchError(f"model {m.entry.display}: --mean and --std go together: give both (or --mean none "
                               "for a model that takes [0, 1] images)")
    suites = resolve_suites(plan, data)
    attacks = resolve_attacks(plan, [m.info for m in models])
    return ResolvedPlan(plan, data, device, models, suites, attacks)


def check_spec_models(specs, infos) -> None:
    """The kinds' static checks of every model (e.g. a token attack's k within the model's patches)."""
    from robench.attack import get_kind

    for spec in specs:
        check = get_kind(spec.kind).check_info
        for info in infos if check is not None else ():
            check(spec, info)
