"""Resolve once: CLI options and robench.evaluate's arguments become a Plan (plan_from_options; plan files are read
by robench.run.plan), and a Plan becomes a ResolvedPlan of typed objects (resolve), checked whole before any
store is created, any model built or any image read. Everything after it (the cells, the executors, the runner,
robench.evaluate, `inspect --out`) consumes these objects and never parses a spec string or loads a suite again.

Checks (each failure is a one-line RobenchError): plan values and their types (Plan.validate), the data spec, the
device, the output path, every model (robench.zoo.sources.check_entry: known name, its checkpoint present, or
weights shipped, or `random_init` asked for), the corruption suites and names, the attack suites and every eps
range, and options that only mean something with another option (--eps needs --attack, --corruption needs
--corruptions).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from robench.attack import AttackSpec, large_eps_probe, load_attack_suite
from robench.corrupt import CorruptionSuite, get_suite
from robench.data.formats import DataSpec, parse_data
from robench.errors import RobenchError, suggest
from robench.run.device import resolve_device
from robench.run.plan import PLAN_KEYS, ModelEntry, Plan, load_config, parse_model_args, parse_norms, resolve_data
from robench.run.checks import check_output, check_spec_eps
from robench.zoo.info import ModelInfo
from robench.zoo.sources import check_entry

PROBE = "probe-large-eps"  # the sanity probe's attack name (robench.attack.large_eps_probe)


# ---- options -> Plan ---------------------------------------------------------------------------------------------
def plan_from_options(models, *, checkpoints=None, labels=None, model_args=None, mean=None, std=None,
                      checkpoint_key: str | None = None, config=None, data=None, attacks=None, corruptions=None,
                      corruption_names=None, severities=None, backend=None, eps=None, steps=None, limit=None,
                      attack_limit=None, corruption_limit=None, subset=None, batch_size=None, device=None,
                      precision=None, seed=None, out=None, compile: bool = False, force: bool = False,
                      strict: bool = False, diagnostics: bool = False, random_init: bool = False,
                      allow_large_eps: bool = False, quiet: bool = False, command: str = "") -> Plan:
    """The plan of `robench eval` and `robench.evaluate`. Given values win; robench.toml (`config`: a loaded dict,
    a path, or None for ./robench.toml when present) fills what was not given; Plan's defaults the rest.

    models: names / refs (str), nn.Module objects or ModelEntry; checkpoints and labels: one per model, in order;
    model_args / mean / std apply to every model given by name or object.
    """
    cfg = config if isinstance(config, dict) else load_config(config)
    models = list(models) if isinstance(models, (list, tuple)) else [models]
    if not models:
        raise RobenchError("nothing to evaluate: give a model (--model)")
    args, (mean, std) = parse_model_args(model_args), parse_norms(mean, std)
    entries = model_entries(models, checkpoints, labels, cfg, random_init)
    for entry, m in zip(entries, models):
        if not isinstance(m, ModelEntry):
            entry.checkpoint_key, entry.args, entry.mean, entry.std = checkpoint_key, args or None, mean, std
    if eps is not None:
        from robench.attack.spec import parse_eps

        eps = parse_eps(eps)

    def _list(v):
        return None if v is None else ([v] if isinstance(v, (str, int)) else list(v)) or None

    if data is not None and not isinstance(data, (str, os.PathLike)):
        shape = getattr(data, "shape", None)
        raise RobenchError(f"data must be a data spec string like cifar10:DIR (see robench.data.formats), got a "
                           f"{type(data).__name__}" + (f" of shape {tuple(shape)}" if shape is not None else ""))
    given = {"data": resolve_data(str(data) if data is not None else None, cfg), "attacks": _list(attacks),
             "corruptions": _list(corruptions), "corruption_names": _list(corruption_names),
             "severities": _list(severities), "corruption_backend": backend, "eps": eps, "steps": steps,
             "limit": limit, "attack_limit": attack_limit, "corruption_limit": corruption_limit,
             "subset": str(subset) if subset else None, "batch_size": batch_size, "device": device,
             "precision": precision, "seed": seed, "out": str(out) if out is not None else None}
    flags = {"compile": compile, "force": force, "strict": strict, "diagnostics": diagnostics,
             "allow_large_eps": allow_large_eps}
    defaults = {k: v for k, v in cfg.items() if k in PLAN_KEYS}
    return Plan(models=entries, **{**defaults, **{k: v for k, v in given.items() if v is not None},
                                   **{k: True for k, v in flags.items() if v}}, quiet=quiet, command=command)


def model_entries(models: list, checkpoints=None, labels=None, config: dict | None = None,
                  random_init: bool = False) -> list[ModelEntry]:
    """A ModelEntry per model: names / refs (str), nn.Module objects (robench.evaluate; named after a RobenchModel's
    name or the class) or ModelEntry items (kept as they are). --label: one per model, in order; random_init marks
    the models left without a checkpoint."""
    labels, config = list(labels or []), config or {}
    if len(labels) > len(models):
        raise RobenchError(f"{len(labels)} --label values for {len(models)} --model: give at most one per model")
    table = config.get("checkpoints", {}) or {}
    entries = []
    for i, (m, ckpt) in enumerate(zip(models, pair_checkpoints(models, checkpoints))):
        if isinstance(m, ModelEntry):
            entries.append(m)
            continue
        if isinstance(m, str):
            entry = ModelEntry(name=m, checkpoint=ckpt or table.get(m))
        else:
            name = getattr(getattr(m, "info", None), "name", None) or type(m).__name__
            entry = ModelEntry(name=name, checkpoint=ckpt, module=m)
        entry.label = labels[i] if i < len(labels) else None
        entry.random_init = bool(random_init) and entry.checkpoint is None
        entries.append(entry)
    return entries


def pair_checkpoints(models: list, checkpoints) -> list[str | None]:
    """The checkpoint given for each model (None: none given; robench.toml's [checkpoints] may still name one).
    Names / refs: by equal count (in order) or by name (`-c NAME=PATH`); any other pairing is an error. Module
    objects and entries (robench.evaluate): in order, at most one each."""
    checkpoints = [str(c) if c else "" for c in checkpoints or []]
    if not all(isinstance(m, str) for m in models):
        if len(checkpoints) > len(models):
            raise RobenchError(f"{len(checkpoints)} checkpoints for {len(models)} models: give at most one per model")
        return [c or None for c in checkpoints] + [None] * (len(models) - len(checkpoints))
    by_name, positional = {}, []
    for c in checkpoints:
        name, sep, path = c.partition("=")
        if sep and name in models:
            if name in by_name:
                raise RobenchError(f"two checkpoints for model '{name}' (--checkpoint {name}=...)")
            by_name[name] = path
        else:
            positional.append(c)
    if positional and by_name:
        raise RobenchError("mix of --checkpoint PATH and --checkpoint NAME=PATH: pair all by name or all by order")
    if positional and len(positional) != len(models):
        raise RobenchError(f"{len(positional)} --checkpoint for {len(models)} --model: give one per model in "
                           "order, or pair them by name with --checkpoint NAME=PATH")
    if len(set(models)) != len(models) and by_name:
        raise RobenchError("the same --model twice: pair its checkpoints by order, not by name")
    return positional or [by_name.get(m) for m in models]


# ---- Plan -> ResolvedPlan ------------------------------------------------------------------------------------------
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
