"""Optional backend: any eps-bounded torchattacks attack (`torchattacks:<Name>?k=v`), under robench's bookkeeping
(labels, eps loop, invariants, robust flags re-evaluated by robench). torchattacks draws from the global torch RNG:
robench seeds it once per eps from all per-sample seeds of the batch (inside fork_rng, so the caller's RNG is
untouched); results therefore depend on the chunk, as for AutoAttack."""

from __future__ import annotations

import torch

from robench.attack.spec import AttackSpec, import_torchattacks
from robench.seeding import derive_seed


def run_torchattacks(f, x0, y, spec: AttackSpec, seeds):
    from robench.attack.core import AttackResult, check_adversarial, clean_pass

    ta = import_torchattacks()
    cls = getattr(ta, spec.params["attack"])
    kwargs = {k: v for k, v in spec.params.items() if k != "attack"}
    E, B = len(spec.eps), x0.shape[0]
    pred0, zero_grad = clean_pass(f, x0, y)
    robust = torch.zeros(E, B, dtype=torch.bool, device=x0.device)
    adv_pred = pred0.expand(E, B).clone()
    devices = [x0.device] if x0.device.type == "cuda" else []
    for k, e in enumerate(spec.eps):
        atk = cls(f, eps=float(e), **kwargs)
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(derive_seed("torchattacks", float(e), *[int(s) for s in seeds]))
            x_adv = atk(x0, y).detach()
        check_adversarial(x_adv, x0, e, spec.norm, True, spec.name)
        with torch.no_grad():
            p = f(x_adv).argmax(1)
        robust[k] = (p == y) & (pred0 == y)
        adv_pred[k] = p
    return AttackResult(robust=robust, adv_pred=adv_pred, zero_grad=zero_grad,
                        info={"clean_correct": (pred0 == y).tolist()})
