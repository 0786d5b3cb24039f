"""The bottom of `robench.attack`: the attack-kind registry, the result type, the invariant checks, the clean pass.

Every attack kind (fgsm, pgd, autoattack, torchattacks) registers itself next to its definition with
`register_kind(AttackKind(...))`: its spec parser, its `attack` (adversarial images at one eps) or `fused` hook
(every eps at once), its label, its display order and its traits. Every list of kinds elsewhere (the suite parser,
the engine's batch-random grouping, the report's attack order, the sanity flags, the diagnostics' filter) is
derived from this registry, so a new kind is one module plus its test. This module imports nothing from the rest
of `robench.attack` (no import cycle).

Words, one meaning each in this package: `kind` is a kind's name (`spec.kind`), `impl` the registered AttackKind;
`spec` an AttackSpec; `params` the `params` sub-table of a suite's [[attack]] table (and its copy in
`params_dict()`); `options` a kind's frozen options dataclass (`spec.options`); `ctx` the RunContext of one call.

Invariant checks come in two forms with the same messages:
- `check_adversarial(x_adv, x, eps, ...)`: strict, in float64, raises at once (robench.attack.core runs it on every
  batch an `attack` returns and, in strict mode, FGSM/PGD run it on every iterate);
- `Checker`: on the model's device in the working dtype with a tolerance that is sound for it; it accumulates a
  violation record over every iterate (no host sync) and raises once, at the end of the attack (`finish()`).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from robench.errors import RobenchError, suggest

TOL = 1e-6


class AttackInvariantError(RobenchError, AssertionError):
    """An adversarial batch broke an invariant (perturbation too large, outside [0, 1], non-finite, training mode,
    ...). An AssertionError (a broken guarantee) and a RobenchError: the CLI prints it on one line, exit code 1 (a
    failed evaluation, not bad input)."""

    exit_code = 1


@dataclass
class AttackResult:
    robust: torch.Tensor  # bool [n_eps, B]: still correctly classified after the attack at that eps
    adv_pred: torch.Tensor  # long [n_eps, B]: prediction on the adversarial input (clean prediction if skipped)
    zero_grad: torch.Tensor  # bool [B]: input gradient of the attack loss exactly zero at the clean input
    info: dict = field(default_factory=dict)
    adv_conf: torch.Tensor | None = None  # float [n_eps, B]: fp32 softmax probability of adv_pred (the kind's
    # own, FGSM/PGD; else set by the core)
    adv_nll: torch.Tensor | None = None  # float [n_eps, B]: -log softmax of the true label on the final input
    eps_star: torch.Tensor | None = None  # float64 [B], min-norm kinds only: the norm of the smallest adversarial
    # found (0: clean-misclassified, inf: none found within the budget)


@dataclass
class RunContext:
    """What a kind's `attack` (or `fused`) callable gets besides the images, labels, eps, spec and seeds.

    clip: the adversarial images must stay in [0, 1] (standard protocol). f32: the model in full precision when `f`
    runs under autocast, else None. batch_seeds: every per-sample seed of the batch (a batch-random kind derives its
    one seed from them, so it does not depend on which samples the gate lets through). The rest is for the fused
    FGSM/PGD path: max_rows (rows through the model at once), clean_pred (the caller's clean predictions),
    keep_adv (return the adversarial images), strict (check every iterate in float64), compile (torch.compile the
    update step), compact_every (early-exit compaction period in steps; None: the device's default)."""

    clip: bool = True
    f32: Callable | None = None
    batch_seeds: tuple = ()
    max_rows: int | None = None
    clean_pred: torch.Tensor | None = None
    keep_adv: bool = False
    strict: bool = False
    compile: bool = False
    compact_every: int | None = None


# ---- the registry ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttackKind:
    """One attack kind: it only produces adversarial images; robench.attack.core.run_attack does the rest (clean
    pass, gating on clean-correct samples, the invariant checks of every adversarial batch, fp32 confirmation of
    low-precision hits, robust flags).

    parse(table, common, where) -> AttackSpec: validates a suite's [[attack]] table; `common` holds the validated
    shared keys (name, kind, norm, eps, protocol, adaptive), the kind builds its `options` (a frozen dataclass)
    from its own keys, listed in `keys` (any other key is refused before parse is called).
    attack(f, x, labels, eps, spec, seeds, ctx: RunContext) -> x_adv, or (x_adv, info dict): the adversarial images
    of the samples given, at one eps (x in the attacked space; `seeds` one per row of x). The core calls it once per
    eps of the spec with the samples the protocol attacks (clean-correct ones under the standard protocol), or with
    the whole batch if `whole_batch` (the core still counts only clean-correct samples as robust); an info dict is
    collected into info["per_eps"].
    fused(f, x0, y, spec, seeds, ctx) -> AttackResult: instead of `attack`, a kind that runs every eps at once and
    does its own gating and fp32 confirmation (FGSM/PGD); its result must carry info["x_adv"] [n_eps, B, ...], the
    images the core validates.
    label(spec) -> str. order: position in tables. batch_random: the kind draws its random numbers for a whole
    batch from one seed (results depend on the chunk, so the engine attacks fixed blocks). keeps_adv:
    run_attack(keep_adv=True) returns its adversarial images. from_text: parser for a one-attack string
    '<kind>:...' (e.g. torchattacks:PGD?eps=4/255), or None. with_steps(spec, steps) -> spec: the kind takes
    `--steps` (None: it does not). An `attack` may return info["support"] (bool, broadcastable to x): the core
    checks that the perturbation is exactly zero outside it (token-patch attacks) and drops it from the info."""

    name: str
    parse: Callable
    label: Callable
    order: int
    attack: Callable | None = None
    fused: Callable | None = None
    keys: tuple = ()
    batch_random: bool = False
    keeps_adv: bool = False
    whole_batch: bool = False
    from_text: Callable | None = None
    with_steps: Callable | None = None
    min_norm: bool = False  # a minimum-norm kind: one cell, no eps; its attack returns (x_adv, {"eps_star": [B]})
    norms: tuple = ("Linf", "L2")  # the norms its parser accepts
    # attacks that need a particular model (e.g. a ViT's tokens): check_info(spec, info) at resolve time (static
    # description; None for user code), check_model(spec, model, label) on the built model before the store opens
    check_info: Callable | None = None
    check_model: Callable | None = None

    def __post_init__(self):
        if (self.attack is None) == (self.fused is None):
            raise RobenchError(f"attack kind '{self.name}' needs exactly one of attack= (one eps, images only) or "
                               "fused= (every eps at once)")


_KINDS: dict[str, AttackKind] = {}


def register_kind(impl: AttackKind) -> AttackKind:
    if impl.name in _KINDS and _KINDS[impl.name] != impl:
        raise RobenchError(f"attack kind '{impl.name}' is registered twice")
    _KINDS[impl.name] = impl
    return impl


def unregister_kind(name: str) -> None:
    """Remove a registered kind (tests, plugins that clean up after themselves)."""
    _KINDS.pop(name, None)


def attack_kinds() -> list[AttackKind]:
    """The registered kinds in display order."""
    return sorted(_KINDS.values(), key=lambda impl: (impl.order, impl.name))


def kind_names() -> tuple[str, ...]:
    return tuple(impl.name for impl in attack_kinds())


def get_kind(name: str) -> AttackKind:
    if name not in _KINDS:
        names = kind_names()
        raise RobenchError(f"unknown attack kind '{name}'" + suggest(name, names) + f"; choose from: {', '.join(names)}")
    return _KINDS[name]


# ---- strict invariant check (float64, raises at once) -------------------------------------------------------------
def check_adversarial(x_adv: torch.Tensor, x: torch.Tensor, eps, norm: str, clip: bool, what: str = "attack"):
    """Raise AttackInvariantError unless every row of x_adv is finite, within eps of x, and in [0, 1] if clip."""
    if not torch.isfinite(x_adv).all():
        raise AttackInvariantError(f"{what}: adversarial batch has non-finite values")
    n = lp_norm(x_adv.detach().double() - x.detach().double(), norm)
    e = eps.double() if torch.is_tensor(eps) else torch.tensor(float(eps), dtype=torch.float64)
    over = n > e.to(n.device) + TOL
    if over.any():
        i = int(over.nonzero()[0])
        ei = float(e.flatten()[i]) if e.numel() > 1 else float(e)
        _raise_eps(what, norm, float(n[i]), ei)
    if clip and (x_adv.min() < 0 or x_adv.max() > 1):
        _raise_range(what, float(x_adv.min()), float(x_adv.max()))


def lp_norm(d: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-row norm of d [B, ...] in 'Linf', 'L2' or 'L1'."""
    d = d.flatten(1)
    if norm == "Linf":
        return d.abs().amax(1)
    return d.abs().sum(1) if norm == "L1" else d.norm(dim=1)


def _raise_eps(what, norm, n, e):
    raise AttackInvariantError(f"{what}: {norm} perturbation {n:.8g} exceeds eps {e:.8g} (+{TOL})")


def _raise_range(what, lo, hi):
    raise AttackInvariantError(f"{what}: adversarial batch leaves [0, 1] (min {lo:.4g}, max {hi:.4g})")


# ---- on-device invariant check (working dtype, accumulated, raises once) -------------------------------------------
def device_tolerance(dtype: torch.dtype, norm: str, scale: float, eps_max: float, numel: int) -> float:
    """A bound on how far the working-dtype check can misjudge ‖x_adv − x‖ against the exact value, plus TOL.

    L∞: x_adv − x is one rounded subtraction of numbers of magnitude ≤ scale (error ≤ u·scale, u the unit
    roundoff); the projection bounds themselves (x ± eps) are rounded once more (another u·scale): 4·u·scale covers
    both with margin. L2: the norm is a sum of `numel` squares (torch reduces pairwise/cascaded: relative error
    ≤ (log2(numel) + 2)·u) plus the subtractions: eps·(log2(numel) + 4)·2u + 4·u·scale."""
    u = torch.finfo(dtype).eps / 2 if dtype.is_floating_point else 0.0
    tol = TOL + 4 * u * max(scale, 1.0)
    if norm != "Linf":
        tol += eps_max * (math.log2(max(numel, 2)) + 4) * 2 * u
    return tol


class Checker:
    """Invariant checks of every iterate on the device, in the working dtype; `finish()` raises the first kind of
    violation seen (non-finite, then eps, then [0, 1]) with check_adversarial's messages. With strict=True every
    call runs check_adversarial in float64 and raises at once instead."""

    def __init__(self, norm: str, clip: bool, what: str, x0: torch.Tensor, eps_max: float, strict: bool = False):
        self.norm, self.clip, self.what, self.strict = norm, clip, what, strict
        dev = x0.device
        scale = float(x0.detach().abs().amax()) + eps_max if x0.numel() else 1.0
        self.tol = device_tolerance(x0.dtype, norm, scale, eps_max, x0[0].numel() if len(x0) else 1)
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=dev)
        self.excess = torch.full((), -math.inf, dtype=x0.dtype, device=dev)  # max over rows of ‖d‖ − eps
        self.worst = torch.zeros(2, dtype=x0.dtype, device=dev)  # (‖d‖, eps) of that row
        self.lo = torch.full((), math.inf, dtype=x0.dtype, device=dev)
        self.hi = torch.full((), -math.inf, dtype=x0.dtype, device=dev)
        self._scratch = None  # reused for x_adv − x (no allocation per step)

    def __call__(self, x_adv: torch.Tensor, x: torch.Tensor, eps: torch.Tensor):
        if self.strict:
            return check_adversarial(x_adv, x, eps, self.norm, self.clip, self.what)
        if x_adv.shape[0] == 0:
            return
        xa = x_adv.detach().flatten(1)
        mn, mx = torch.aminmax(xa, dim=1)
        if self._scratch is None or self._scratch.numel() < xa.numel() or self._scratch.dtype != xa.dtype \
                or self._scratch.device != xa.device:
            self._scratch = torch.empty_like(xa)
        d = torch.sub(xa, x.detach().flatten(1), out=self._scratch.view(-1)[:xa.numel()].view(xa.shape))
        if self.norm == "Linf":
            dmn, dmx = torch.aminmax(d, dim=1)
            n = torch.maximum(dmx, -dmn)
        else:
            n = torch.linalg.vector_norm(d, dim=1)
        self._update(mn, mx, n, eps.to(n.dtype))

    def _update(self, mn, mx, n, eps):
        # NaN / inf propagate into the row min/max: finiteness needs no extra pass
        self.nonfinite |= ~(torch.isfinite(mn).all() & torch.isfinite(mx).all())
        ex = n - eps
        i = ex.argmax()
        better = ex[i] > self.excess
        self.excess = torch.where(better, ex[i], self.excess)
        self.worst = torch.where(better, torch.stack([n[i], eps[i]]), self.worst)
        self.lo = torch.minimum(self.lo, mn.min())
        self.hi = torch.maximum(self.hi, mx.max())

    def finish(self):
        """Raise AttackInvariantError if any checked iterate broke an invariant (one host sync)."""
        if self.strict:
            return
        vals = torch.stack([self.nonfinite.to(self.excess.dtype), self.excess, self.worst[0], self.worst[1],
                            self.lo, self.hi]).tolist()
        nonfinite, excess, n, e, lo, hi = vals
        if nonfinite:
            raise AttackInvariantError(f"{self.what}: adversarial batch has non-finite values")
        if excess > self.tol:
            _raise_eps(self.what, self.norm, n, e)
        if self.clip and (lo < 0 or hi > 1):
            _raise_range(self.what, lo, hi)


@contextlib.contextmanager
def forked_rng(device: torch.device, seed: int | None = None):
    """The global torch RNG (CPU, and `device` if CUDA) forked for a library that draws from it (AutoAttack,
    torchattacks), seeded with `seed` if given: the caller's RNG state is untouched."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(seed)
        yield


# ---- losses, clean pass, low-precision confirmation ---------------------------------------------------------------
def attack_loss(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None, loss: str) -> torch.Tensor:
    """Per-row loss to MAXIMISE: CE(y) or DLR (untargeted); −CE(t) or targeted DLR (targeted)."""
    logits = logits.float()
    if loss == "ce":
        return -F.cross_entropy(logits, targets, reduction="none") if targets is not None else \
            F.cross_entropy(logits, labels, reduction="none")
    # DLR (Croce & Hein 2020)
    z, _ = logits.sort(dim=1)
    zy = logits.gather(1, labels[:, None])[:, 0]
    if targets is None:
        top = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
        return -(zy - top) / (z[:, -1] - z[:, -3] + 1e-12)
    zt = logits.gather(1, targets[:, None])[:, 0]
    return -(zy - zt) / (z[:, -1] - 0.5 * (z[:, -3] + z[:, -4]) + 1e-12)


def confidence(logits: torch.Tensor, pred: torch.Tensor, y: torch.Tensor | None = None):
    """Softmax (fp32) probability of `pred` for each row of logits (B, K), and -log p(y) (None without y)."""
    logp = torch.log_softmax(logits.detach().float(), dim=1)
    conf = logp.gather(1, pred.view(-1, 1).to(logp.device)).squeeze(1).exp()
    nll = None if y is None else -logp.gather(1, y.view(-1, 1).to(logp.device)).squeeze(1)
    return conf, nll


def unattacked_confidence(f, x0, y, pred0, attacked, E: int):
    """[E, B] confidence and nll tensors, filled for the rows the attack leaves out (`attacked` False: their final
    input is the clean image; one no-grad forward of those rows); NaN for the attacked rows, which their kind or
    the caller fills."""
    B = x0.shape[0]
    conf, nll = torch.full((E, B), float("nan"), device=x0.device), torch.full((E, B), float("nan"), device=x0.device)
    rest = (~attacked).nonzero().squeeze(1)
    if len(rest):
        with torch.no_grad():
            c, n = confidence(f(x0[rest].detach()), pred0[rest], y[rest])
        conf[:, rest], nll[:, rest] = c, n
    return conf, nll


def confirm(f32, x: torch.Tensor, labels: torch.Tensor, pred: torch.Tensor):
    """Low-precision verdicts confirmed in fp32: the rows whose `pred` != labels (hits) are re-predicted with the
    full-precision model `f32`. Returns (pred with the hits' fp32 predictions, bool [N]: hits fp32 rejected).
    Without f32 (no autocast) returns (pred, None) and does nothing. Syncs once (to find the hits)."""
    if f32 is None:
        return pred, None
    rejected = torch.zeros_like(pred, dtype=torch.bool)
    hit = (pred != labels).nonzero().squeeze(1)
    if hit.numel() == 0:
        return pred, rejected
    with torch.no_grad():
        p32 = f32(x[hit].detach()).argmax(1)
    pred = pred.clone()
    pred[hit] = p32
    rejected[hit] = p32 == labels[hit]
    return pred, rejected


def clean_pass(f, x0, y, loss: str = "ce", f32=None):
    """Clean predictions and whether the input gradient of the loss is exactly zero (one fwd+bwd on B samples).
    Under autocast (`f32` given) the misclassified samples are re-checked in fp32. Returns (pred, zero_grad,
    number of rejected low-precision hits)."""
    xg = x0.clone().requires_grad_(True)
    logits = f(xg)
    g, = torch.autograd.grad(attack_loss(logits, y, None, loss).sum(), xg)
    pred, rejected = confirm(f32, x0, y, logits.detach().argmax(1))
    return pred, g.flatten(1).abs().amax(1) == 0, (0 if rejected is None else int(rejected.sum()))
