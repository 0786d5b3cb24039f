"""PGD — projected gradient descent (Madry et al., "Towards Deep Learning Models Resistant to Adversarial
Attacks", ICLR 2018), L∞ or L2, in native torch, with a batched eps sweep and exact early exit. Also the engine of
FGSM (robench.attack.fgsm: one step of size eps from the clean input).

Distance: L∞ or L2, in the attacked space (pixels under the standard protocol). Shapes: x (B, C, H, W) in [0, 1],
y (B,) long, one seed per sample; the engine works on rows = (eps, sample) pairs: x0/start (N, C, H, W),
eps/alpha (N,). Result: robust / adv_pred (n_eps, B).

Algorithm (one restart, per row), as torchattacks' PGD / PGDL2:

    x⁰ = x                       (no random start)   or  clip(x + eps·u), u uniform in the unit ball (per-sample seed)
    xᵗ⁺¹ = clip(x + Π_eps(xᵗ + α·s(∇ₓ L(f(xᵗ), y)) − x))   s = sign (L∞) or g/(‖g‖₂+1e-10) (L2)

Π_eps clamps to [−eps, eps] (L∞) or rescales onto the L2 ball; clip is to [0, 1] (standard protocol only). For L∞
the two are applied at once: xᵗ⁺¹ = clamp(xᵗ + α·sign(g), max(x − eps, 0), min(x + eps, 1)) with the bounds
computed once per row (the same set, to the last ulp). The loss is summed over rows, so each row's gradient is
independent of the batch. Random starts are counter-based draws (robench.attack.draws) made on the model's device
from each sample's seed: the same on CPU and GPU and whatever the batch.

Success rule: a row counts as broken as soon as ANY iterate x⁰…x^T (the prediction comes for free from the
forward pass that computes the next gradient) is misclassified; a sample is robust at an eps only if it is
correct on the clean input and survives every restart. Under autocast (bf16/fp16) a misclassified iterate only
counts once an fp32 forward confirms it (rejected low-precision hits are counted). Early exit is exact: a
clean-misclassified sample never enters, a broken row stops counting at the step where it breaks and leaves the
batch at the next compaction (every `compact_every` steps: 1 on CPU, where a host sync is free; a few on GPU),
later restarts only see survivors — none of this changes any per-row outcome. What is NOT done: dropping a sample
at eps_j because it broke at a smaller eps_i. PGD at a larger eps takes larger steps along a different trajectory
and can fail where the smaller eps succeeded, so that shortcut would make a row's result depend on which other eps
were in the sweep.

Invariants: every iterate is checked on the device (base.Checker; float64 in strict mode), a violation raises once,
at the end; run_attack checks the images returned (info["x_adv"]) again, as it does for every kind.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from robench.attack.base import (AttackKind, AttackResult, Checker, RunContext, attack_loss, confidence, confirm,
                                 register_kind, unattacked_confidence)
from robench.attack.draws import random_offsets, row_keys, uniform_start
from robench.attack.spec import (LOSSES, AttackSpec, choice, flag, parse_step_size, positive_int, step_size,
                                 steps_replaced)
from robench.attack.steps import compiled_step, linf_box, take_step


def pgd_rows(f, x0, labels, targets, eps, alpha, start, norm, steps, loss="ce", clip=True, early_exit=True,
             first_grad=None, check=None, amp=None, stats=None, *, f32=None, rejected=None, compact_every=1,
             keep_x=True, step=None, x_out=None, out_rows=None, conf_out=None):
    """Run PGD on N independent rows (one restart). Returns (broken [N] bool, pred [N] long, x_adv [N,...]).

    eps, alpha: [N] per row. start: first iterate (not modified). first_grad: gradient at `start` if already known
    (then the rows are known to be correctly classified at `start`). With early_exit a row stops counting at the
    first misclassified iterate (pred/x_adv are taken there); without it, pred/x_adv are those of the final
    iterate. `check(x_adv, x0, eps)` validates every iterate (a Checker or any callable that raises); `amp` is a
    context-manager factory for the forward passes; `f32`: the full-precision model that confirms low-precision
    hits (`rejected` [N] long counts the rejected ones per row); `compact_every`: broken rows leave the batch every
    this many steps (0: never, fixed shapes); keep_x=False: no x_adv (None returned); `x_out`/`out_rows`: record
    row r's image in x_out[out_rows[r]] (and return x_out) instead of a new [N, ...]; `step`: a compiled
    `_step_measured` (else the eager in-place step); `stats['row_grad_steps']` counts row forward+backward passes,
    `stats['row_steps']` row iterations (updates; the first one reuses `first_grad`). `conf_out` = (conf, nll, y):
    row r's softmax confidence of its prediction and -log p(y[r]) go to conf/nll[out_rows[r]], from the logits
    that gave that prediction (no forward of their own)."""
    N = x0.shape[0]
    dev = x0.device
    view = (-1,) + (1,) * (x0.ndim - 1)
    pred_out = torch.empty(N, dtype=torch.long, device=dev)
    broken = torch.zeros(N, dtype=torch.bool, device=dev)
    if keep_x and x_out is None:
        x_out, out_rows = torch.empty_like(x0), None
    dest = torch.arange(N, device=dev) if out_rows is None else out_rows  # row -> its slot in x_out
    idx = torch.arange(N, device=dev)
    e_v, a_v = eps.to(x0.dtype).view(view), alpha.to(x0.dtype).view(view)
    lo, hi = linf_box(x0, e_v, clip) if norm == "Linf" else (x0, x0)
    xc = start.detach().clone()
    done = torch.zeros(N, dtype=torch.bool, device=dev)  # rows broken since the last compaction
    amp = amp or contextlib.nullcontext

    def record(p, hit, rows_x, logits):
        nonlocal done
        new = hit & ~done
        pred_out[idx] = torch.where(new, p, pred_out[idx])
        broken[idx] = broken[idx] | new
        if keep_x:
            record_rows(x_out, dest[idx], new, rows_x, sync_free=dev.type != "cpu")
        record_confidence(new, logits, p)
        done = done | new

    def record_confidence(rows, logits, p):
        if conf_out is not None:
            conf, nll, y_true = conf_out
            c, n = confidence(logits, p, y_true[idx])
            d = dest[idx]
            conf[d], nll[d] = torch.where(rows, c, conf[d]), torch.where(rows, n, nll[d])

    def verdict(logits, x):
        p = logits.detach().argmax(1)
        p, rej = confirm(f32, x, labels, p)
        if rej is not None and rejected is not None:
            rejected[idx] += (rej & ~done).long()
        return p

    for t in range(steps):
        if stats is not None:
            stats["row_steps"] = stats.get("row_steps", 0) + xc.shape[0]
        if t == 0 and first_grad is not None:
            g = first_grad.clone()
        else:
            xc.requires_grad_(True)
            if stats is not None:
                stats["row_grad_steps"] = stats.get("row_grad_steps", 0) + xc.shape[0]
            with amp():
                logits = f(xc)
            g, = torch.autograd.grad(attack_loss(logits, labels, targets, loss).sum(), xc)
            xc = xc.detach()
            if early_exit:
                p = verdict(logits, xc)
                record(p, p != labels, xc, logits)
                if compact_every and (t + 1) % compact_every == 0 and _worth_compacting(done, steps - t):
                    keep = (~done).nonzero().squeeze(1)
                    idx, xc, g, x0, labels, e_v, a_v, lo, hi = (
                        a.index_select(0, keep) for a in (idx, xc, g, x0, labels, e_v, a_v, lo, hi))
                    eps = e_v.flatten()
                    targets = targets.index_select(0, keep) if targets is not None else None
                    done = done.index_select(0, keep)
                    if idx.numel() == 0:
                        return broken, pred_out, x_out
        if step is None:
            xc = take_step(xc, g, x0, lo, hi, e_v, a_v, norm, clip)
            if check is not None:
                check(xc, x0, eps)
        else:
            xc, mn, mx, n = step(xc, g, x0, lo, hi, e_v, a_v, norm, clip)
            if isinstance(check, Checker) and not check.strict:
                check._update(mn, mx, n, eps.to(n.dtype))
            elif check is not None:
                check(xc, x0, eps)
    with torch.no_grad(), amp():
        logits = f(xc)
    p = verdict(logits, xc)
    if early_exit:
        record(p, p != labels, xc, logits)
        pred_out[idx] = torch.where(done, pred_out[idx], p)
    else:
        pred_out[idx], broken[idx] = p, p != labels
        if keep_x:
            x_out[dest[idx]] = xc
    record_confidence(~done, logits, p)  # the rows that end on the final iterate
    if keep_x and early_exit:
        m = (~done).nonzero().squeeze(1)
        x_out[dest[idx[m]]] = xc[m]
    return broken, pred_out, x_out


def record_rows(x_out: torch.Tensor, idx: torch.Tensor, new: torch.Tensor, rows_x: torch.Tensor, sync_free: bool):
    """x_out[idx[r]] = rows_x[r] for the rows r where `new`. On CPU (a host sync is free) only those rows are
    copied; on an accelerator a masked copy of every row avoids a host sync per step."""
    if sync_free:
        x_out[idx] = torch.where(new.view(-1, *([1] * (rows_x.ndim - 1))), rows_x, x_out[idx])
    else:
        m = new.nonzero().squeeze(1)
        x_out[idx[m]] = rows_x[m]


def _worth_compacting(done: torch.Tensor, left: int) -> bool:
    """Compact when the broken rows' remaining work (≈ `left` steps of ~12 passes each, fwd+bwd not counted)
    outweighs the compaction (≈ 6 row-sized copies of the survivors). One host sync."""
    n = int(done.sum())
    return n > 0 and n * left * 12 >= 6 * (done.numel() - n)


def _targets(seeds_t, labels, logits, mode):
    """Target class per sample: the least likely class, or a random class != label from the sample's seed."""
    if mode == "least-likely":
        return logits.argmin(1)
    return (labels + random_offsets(seeds_t, logits.shape[1], labels.device)) % logits.shape[1]


def default_compaction(device: torch.device) -> int:
    """Steps between early-exit compactions: every step on CPU (a host sync costs nothing there, and a broken row
    left in the batch costs a whole fwd+bwd), every 4 steps on GPU (each compaction is a host sync)."""
    return 1 if device.type == "cpu" else 4


def run_pgd(f, x0, y, spec: AttackSpec, seeds, ctx: RunContext) -> AttackResult:
    """FGSM/PGD on a batch at every eps of spec (see the module docstring): the kind's fused runner. Its result
    carries info["x_adv"] [n_eps, B, ...] (x itself for rows not attacked), which run_attack validates."""
    B, E = x0.shape[0], len(spec.eps)
    dev, dt = x0.device, x0.dtype
    o: GradientOptions = spec.options
    clip, f32, clean_pred = ctx.clip, ctx.f32, ctx.clean_pred
    eps_t = torch.tensor(spec.eps, dtype=dt, device=dev)
    alpha_t = torch.tensor([o.alpha(e) for e in spec.eps], dtype=dt, device=dev)
    seeds_t = torch.tensor([int(s) for s in seeds], dtype=torch.int64, device=dev)
    paper = spec.protocol == "paper"
    pred0, g_clean, targets, zero_grad, rejected_clean = _clean_pass(f, x0, y, spec, seeds_t, clean_pred, f32)
    labels = pred0 if paper else y
    first_grad = None if o.random_start else g_clean
    alive = (pred0 == y).expand(E, B).clone() if not paper else torch.ones(E, B, dtype=torch.bool, device=dev)
    adv_all = x0.detach().unsqueeze(0).repeat(E, *[1] * x0.ndim)  # unattacked rows keep x; attacked: recorded
    adv_rows = adv_all.view(E * B, *x0.shape[1:])  # row (k, i) is adv_rows[k * B + i]
    adv_pred = pred0.expand(E, B).clone()
    adv_conf, adv_nll = unattacked_confidence(f, x0, y, pred0, alive[0], E)  # the attacked rows: from pgd_rows
    rejected = torch.zeros(E, B, dtype=torch.long, device=dev)
    stats = {"rows_attacked": 0, "row_grad_steps": 0, "row_steps": 0}
    check = Checker(spec.norm, clip, spec.name, x0, max(spec.eps), strict=ctx.strict)
    compact = default_compaction(dev) if ctx.compact_every is None else ctx.compact_every
    step = compiled_step(dev.type, compact == 0) if ctx.compile else None
    for r in range(o.restarts):
        rows = alive.nonzero()  # (k, i) pairs still robust
        if rows.numel() == 0:
            break
        if o.random_start:  # one draw per sample (shared by its eps rows), batched on the device
            uniq, inv = rows[:, 1].unique(return_inverse=True)
            noise = uniform_start(row_keys(seeds_t[uniq], "start", r, dev), x0.shape[1:], spec.norm, dt)
        chunk = ctx.max_rows or rows.shape[0]
        for c in range(0, rows.shape[0], chunk):
            k, i = rows[c:c + chunk, 0], rows[c:c + chunk, 1]
            e, xs = eps_t[k], x0[i]
            start = xs
            if o.random_start:
                start = torch.addcmul(xs, noise[inv[c:c + chunk]], e.view(-1, *([1] * (x0.ndim - 1))))
                if clip:
                    start.clamp_(0.0, 1.0)
                check(start, xs, e)
            rej = torch.zeros(len(k), dtype=torch.long, device=dev)
            broken, pred, _ = pgd_rows(
                f, xs, labels[i], targets[i] if targets is not None else None, e, alpha_t[k], start, spec.norm,
                o.steps, o.loss, clip=clip, early_exit=not paper,
                first_grad=first_grad[i] if first_grad is not None else None, check=check, stats=stats,
                f32=f32, rejected=rej, compact_every=compact, step=step, x_out=adv_rows, out_rows=k * B + i,
                conf_out=(adv_conf.view(-1), adv_nll.view(-1), y[i]))
            ok = (pred == y[i]) if paper else ~broken
            alive[k, i] = ok
            adv_pred[k, i] = pred
            rejected[k, i] += rej
            stats["rows_attacked"] += int(k.numel())
    check.finish()
    info = {"clean_correct": (pred0 == y).tolist(), **stats, "x_adv": adv_all,
            "rejected_hits": [rejected_clean + int(v) for v in rejected.sum(1).tolist()]}
    return AttackResult(robust=alive, adv_pred=adv_pred, zero_grad=zero_grad, info=info, adv_conf=adv_conf,
                        adv_nll=adv_nll)


def _clean_pass(f, x0, y, spec: AttackSpec, seeds_t, clean_pred, f32):
    """Clean predictions, attack targets and the loss gradient at x: (pred0, g_clean, targets, zero_grad,
    rejected_clean). The gradient is the first PGD gradient for every eps when there is no random start, so it is
    computed once. With `clean_pred` from the caller (standard protocol), samples it already finds misclassified
    never enter: no forward or backward for them; its low-precision verdicts are confirmed with `f32`."""
    B, dev = x0.shape[0], x0.device
    paper = spec.protocol == "paper"
    rejected_clean = 0
    if clean_pred is not None and f32 is not None and not paper:  # the caller's low-precision clean verdicts
        clean_pred, rej = confirm(f32, x0, y, clean_pred)
        rejected_clean += int(rej.sum())
    sub = torch.arange(B, device=dev) if clean_pred is None or paper else (clean_pred == y).nonzero().squeeze(1)
    xg = x0[sub].clone().requires_grad_(True)
    pred0 = clean_pred.clone() if len(sub) < B else torch.empty(B, dtype=torch.long, device=dev)
    g_clean = torch.zeros_like(x0)
    targets = None
    if len(sub):
        logits = f(xg)
        p, rej = confirm(f32, x0[sub], y[sub], logits.detach().argmax(1))
        pred0[sub] = p
        rejected_clean += 0 if rej is None else int(rej.sum())
        labels_sub = pred0[sub] if paper else y[sub]
        if spec.options.targeted:
            targets = torch.zeros_like(y)
            targets[sub] = _targets(seeds_t[sub], labels_sub, logits.detach(), spec.options.target)
        g_clean[sub], = torch.autograd.grad(
            attack_loss(logits, labels_sub, None if targets is None else targets[sub], spec.options.loss).sum(), xg)
    zero_grad = torch.zeros(B, dtype=torch.bool, device=dev)
    zero_grad[sub] = g_clean[sub].flatten(1).abs().amax(1) == 0
    return pred0, g_clean, targets, zero_grad, rejected_clean


# ---- options, parser, registration -------------------------------------------------------------------------------
TARGETS = ("random", "least-likely")


@dataclass(frozen=True)
class GradientOptions:
    """FGSM/PGD options (FGSM: one step of size eps from the clean input). step_size: a canonical rule
    (robench.attack.spec.parse_step_size); target: how a targeted attack picks its class."""

    steps: int = 10
    step_size: str = "2.5*eps/steps"
    random_start: bool = True
    restarts: int = 1
    loss: str = "ce"
    targeted: bool = False
    target: str = "random"

    def alpha(self, eps: float) -> float:
        return step_size(self.step_size, eps, self.steps)

    def identity(self) -> dict:
        """The values hashed into cell ids, in the layout stored cells were written with."""
        params = {"target": self.target} if self.target != "random" else {}
        return {"steps": self.steps, "step_size": self.step_size, "random_start": self.random_start,
                "restarts": self.restarts, "loss": self.loss, "targeted": self.targeted, "version": None,
                "params": params}


GRADIENT_KEYS = ("loss", "targeted", "params")
PGD_KEYS = ("steps", "step_size", "random_start", "restarts") + GRADIENT_KEYS


def gradient_options(table: dict, where: str, **fixed) -> GradientOptions:
    """GradientOptions from a table's keys (the loss / targeted / params.target keys FGSM and PGD share)."""
    params = dict(table.get("params", {}))
    for k in params:
        choice(k, ("target",), f"{where}: params key")
    target = choice(params.get("target", "random"), TARGETS, f"{where}: params.target")
    return GradientOptions(**fixed, loss=choice(table.get("loss", "ce"), LOSSES, "loss"),
                           targeted=flag(table.get("targeted", False), "targeted"), target=target)


def parse_pgd(table: dict, common: dict, where: str) -> AttackSpec:
    fixed = dict(steps=positive_int(table.get("steps", 10)),
                 step_size=parse_step_size(table.get("step_size", "2.5*eps/steps")),
                 random_start=flag(table.get("random_start", True), "random_start"),
                 restarts=positive_int(table.get("restarts", 1), "restarts"))
    return AttackSpec(**common, options=gradient_options(table, where, **fixed))


def label_pgd(s: AttackSpec) -> str:
    o: GradientOptions = s.options
    bits = [f"step {o.step_size}"]
    if o.random_start:
        bits.append("random start")
    if o.restarts > 1:
        bits.append(f"{o.restarts} restarts")
    if o.loss != "ce":
        bits.append(f"{o.loss.upper()} loss")
    if o.targeted:
        bits.append("targeted")
    return f"PGD-{o.steps} {s.norm_label} ({', '.join(bits)})"


PGD = register_kind(AttackKind("pgd", parse=parse_pgd, fused=run_pgd, label=label_pgd, order=1, keys=PGD_KEYS,
                               keeps_adv=True, with_steps=steps_replaced))
