"""AutoAttack through robench == pyautoattack called directly on the same inputs and seed."""

import torch

from robench.attack import make_spec, run_attack
from robench.attack.autoattack import autoattack_seed, make_autoattack
from robench.zoo.registry import create_model




def test_autoattack_flags_equal_direct_pyautoattack():
    from pyautoattack import AutoAttack

    torch.manual_seed(0)
    model = create_model("deit-tiny-standard", num_classes=10, depth=2, embed_dim=32, num_heads=2, img_size=32,
                         patch_size=8)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(10, 3, 32, 32, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:2] = (y[:2] + 1) % 10  # two clean-misclassified samples
    params = {"attacks": ["apgd-ce", "apgd-t", "square"], "n_iter": 4, "n_restarts": 1, "n_target_classes": 2,
              "n_queries": 30}
    spec = make_spec("autoattack", name="aa", eps=(0.5 / 255, 2 / 255), version="custom", params=params)
    seeds = list(range(100, 110))
    res = run_attack(model, x, y, spec, seeds)

    for k, eps in enumerate(spec.eps):
        aa = AutoAttack(model, norm="Linf", eps=eps, version="custom", attacks=params["attacks"],
                        seed=autoattack_seed(seeds))
        aa.apgd.n_iter = aa.apgd_targeted.n_iter = aa.fab.n_iter = 4
        aa.apgd.n_restarts = aa.apgd_targeted.n_restarts = aa.fab.n_restarts = 1
        aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = 2
        aa.square.n_queries = 30
        x_adv, y_adv = aa.run_standard_evaluation(x, y, batch_size=len(x))
        assert torch.equal(res.robust[k], y_adv == y), k
        assert torch.equal(res.adv_pred[k], y_adv)
        broken_by = res.info["per_eps"][k]["broken_by"]
        assert broken_by[0] == broken_by[1] == "clean"
        assert [b is None for b in broken_by] == res.robust[k].tolist()
        after = res.info["per_eps"][k]["robust_after"]
        assert after["clean"] == 8 and min(after.values()) == int(res.robust[k].sum())
    # the eps sweep is not trivial: some sample survives the small eps and fewer survive the larger one
    assert res.robust[0].sum() > res.robust[1].sum()
    # robench's helper configures the same attack as the hand-made one
    aa2 = make_autoattack(model, spec, spec.eps[0], 7, "cpu")
    assert (aa2.apgd.n_iter, aa2.apgd_targeted.n_target_classes, aa2.square.n_queries) == (4, 2, 30)
    assert aa2.attacks_to_run == params["attacks"]
