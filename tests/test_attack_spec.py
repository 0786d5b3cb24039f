"""Attack suites and specs: shipped suites, overrides, fractions, and clear errors on bad input."""

import sys

import pytest

import dataclasses

from robench.attack import (AttackSpec, fmt_eps, large_eps_probe, load_attack_suite, make_spec, parse_eps,
                            parse_step_size)
from robench.attack.spec import step_size
from robench.errors import RobenchError


def test_parse_eps_fractions_sorted_unique():
    assert parse_eps("4/255, 2/255,4/255") == [2 / 255, 4 / 255]
    assert parse_eps(["1/255", 0.5]) == [1 / 255, 0.5]
    assert parse_eps(0.25) == [0.25]
    assert parse_eps("0.5/255") == [0.5 / 255] and parse_eps(fmt_eps(0.5 / 255)) == [0.5 / 255]
    assert fmt_eps(4 / 255) == "4/255" and fmt_eps(0.5 / 255) == "0.5/255" and fmt_eps(0.3) == "0.3"


@pytest.mark.parametrize("bad", ["0", "-1/255", "abc", "1/0", "", "nan", "inf", [True], "1/2/3"])
def test_bad_eps(bad):
    with pytest.raises(RobenchError, match="eps"):
        parse_eps(bad)


def test_step_size_rules():
    assert parse_step_size("2.5 * eps / steps") == "2.5*eps/steps"
    assert parse_step_size("0.15·eps") == "0.15*eps"
    assert parse_step_size("1/255") == "1/255"
    assert step_size("2.5*eps/steps", 4 / 255, 10) == pytest.approx(1 / 255)
    assert step_size("0.15*eps", 0.1, 20) == pytest.approx(0.015)
    assert step_size(parse_step_size("eps/steps"), 0.1, 4) == pytest.approx(0.025)
    for bad in ["fast", "steps", "-1*eps", "2*eps/epochs"]:
        with pytest.raises(RobenchError, match="step_size"):
            parse_step_size(bad)


def test_shipped_suites_match_the_issue():
    pgd, = load_attack_suite("pgd")
    assert (pgd.kind, pgd.norm, pgd.options.steps, pgd.options.random_start) == ("pgd", "Linf", 10, True)
    assert pgd.eps == pytest.approx((1 / 255, 2 / 255, 4 / 255, 8 / 255))
    assert pgd.options.alpha(4 / 255) == pytest.approx(2.5 * (4 / 255) / 10)
    aa, = load_attack_suite("autoattack")
    assert (aa.options.version, aa.norm, aa.eps) == ("standard", "Linf", (4 / 255,))
    fgsm, pgd_p, aa_p = load_attack_suite("paper")
    assert all(s.protocol == "paper" and "NON-STANDARD" in s.label for s in (fgsm, pgd_p, aa_p))
    assert fgsm.kind == "fgsm" and fgsm.eps == (1 / 255,) and aa_p.eps == (1 / 255,)
    assert pgd_p.options.steps == 20 and pgd_p.options.alpha(2 / 255) == pytest.approx(0.15 * 2 / 255)
    assert pgd_p.eps == pytest.approx(tuple(k / 255 for k in range(1, 7)))
    assert load_attack_suite("pgd-l2")[0].norm == "L2"
    assert load_attack_suite("fgsm")[0].options.steps == 1


def test_overrides_and_params_dict():
    s, = load_attack_suite("pgd", eps="8/255,2/255", steps=3)
    assert s.eps == (2 / 255, 8 / 255) and s.options.steps == 3
    d = s.params_dict()
    assert d["eps"] == [2 / 255, 8 / 255] and d["steps"] == 3 and d["kind"] == "pgd"
    import json

    json.dumps(d)
    assert d != load_attack_suite("pgd", eps="8/255,2/255", steps=4)[0].params_dict()
    assert set(d) >= {"name", "kind", "norm", "eps", "steps", "step_size", "random_start", "restarts", "loss",
                      "targeted", "protocol", "adaptive", "version", "params"}


def test_bad_input_errors(tmp_path):
    with pytest.raises(RobenchError, match="did you mean: pgd"):
        load_attack_suite("pgdd")
    with pytest.raises(RobenchError, match="steps"):
        load_attack_suite("pgd", steps=0)
    with pytest.raises(RobenchError, match="steps"):
        load_attack_suite("autoattack", steps=5)
    with pytest.raises(RobenchError, match="eps"):
        load_attack_suite("pgd", eps="0")
    bad = tmp_path / "s.toml"
    bad.write_text('[[attack]]\nkind = "pgd"\nnorm = "Linf2"\n')
    with pytest.raises(RobenchError, match="unknown norm 'Linf2'.*did you mean: Linf"):
        load_attack_suite(str(bad))
    bad.write_text('[[attack]]\nkind = "pgdd"\n')
    with pytest.raises(RobenchError, match="unknown attack kind 'pgdd'.*did you mean: pgd"):
        load_attack_suite(str(bad))
    bad.write_text('[[attack]]\nkind = "pgd"\nstep = 3\n')
    with pytest.raises(RobenchError, match="unknown attack key 'step'.*did you mean: steps"):
        load_attack_suite(str(bad))
    bad.write_text('[[attack]]\nkind = "autoattack"\nversion = "standard"\nparams = {n_iter = 10}\n')
    with pytest.raises(RobenchError, match="custom"):
        load_attack_suite(str(bad))
    bad.write_text('[[attack]]\nkind = "fgsm"\nsteps = 5\n')
    with pytest.raises(RobenchError, match="FGSM"):
        load_attack_suite(str(bad))
    with pytest.raises(RobenchError, match="not found"):
        load_attack_suite(str(tmp_path / "missing.toml"))


def test_torchattacks_spec_errors():
    pytest.importorskip("torchattacks")
    with pytest.raises(RobenchError, match="did you mean: PGD"):
        load_attack_suite("torchattacks:PDG")
    with pytest.raises(RobenchError, match="no parameter 'step'.*did you mean: steps"):
        load_attack_suite("torchattacks:PGD?step=3")
    with pytest.raises(RobenchError, match="no eps"):
        load_attack_suite("torchattacks:DeepFool")
    s, = load_attack_suite("torchattacks:PGDL2?eps=0.5&alpha=0.1", steps=7)
    assert (s.norm, s.eps, s.options.args["steps"], s.options.args["alpha"]) == ("L2", (0.5,), 7, 0.1)
    assert s.options.attack == "PGDL2" and s.options.steps == 7


def test_missing_torchattacks_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchattacks", None)  # import fails as if not installed
    with pytest.raises(RobenchError, match=r"pip install 'robench\[torchattacks\]'"):
        load_attack_suite("torchattacks:PGD")


def test_every_shipped_suite_loads():
    from robench.suites import suite_names

    for name in suite_names("attacks"):
        specs = load_attack_suite(name)
        assert specs and all(s.eps and s.label for s in specs), name


# params_hash(spec.params_dict()) of the shipped suites as written by the code before the kind options moved out
# of AttackSpec (commit 9c635cb): stored cells keep their identity.
STORED_IDENTITY = {
    "autoattack-fast": ["2db16e17f5a2417ce766"], "autoattack": ["d851a98f8f387593fe65"],
    "demo-quick": ["c3ca5c2b24767dc34f26", "f7b7afbabc97ace0d4b5"],
    "demo": ["45d76746a11b7852ef07", "12b583a54f67686a97b4", "ccf4b5855f72a525ba5a"],
    "fgsm": ["e89e70b784f295eab785"],
}


def test_cell_identity_of_shipped_suites_unchanged():
    from robench.run.store import params_hash

    for name, hashes in STORED_IDENTITY.items():
        assert [params_hash(s.params_dict()) for s in load_attack_suite(name)] == hashes, name
    d = load_attack_suite("autoattack-fast")[0].params_dict()
    assert d["params"] == {"attacks": ["apgd-ce", "apgd-t"], "n_iter": 10, "n_restarts": 1, "n_target_classes": 3}
    assert (d["steps"], d["version"]) == (10, "custom")
    probe = large_eps_probe("Linf").params_dict()
    assert (probe["name"], probe["eps"], probe["steps"], probe["params"]) == ("probe-large-eps", [64 / 255], 10, {})


def test_kind_fields_live_with_the_kind():
    """AttackSpec holds what every kind shares; the rest is the kind's own frozen options."""
    assert [f.name for f in dataclasses.fields(AttackSpec)] == ["name", "kind", "norm", "eps", "protocol", "adaptive",
                                                               "options"]
    pgd, = load_attack_suite("pgd")
    with pytest.raises(dataclasses.FrozenInstanceError):
        pgd.options.steps = 3
    aa, = load_attack_suite("autoattack-fast")
    assert (aa.options.attacks, aa.options.n_iter, aa.options.n_queries) == (("apgd-ce", "apgd-t"), 10, None)
    assert not hasattr(aa.options, "step_size") and not hasattr(pgd.options, "version")
    s = make_spec("pgd", eps="2/255", steps=3, loss="dlr", targeted=True, params={"target": "least-likely"})
    assert (s.options.steps, s.options.loss, s.options.target, s.eps) == (3, "dlr", "least-likely", (2 / 255,))
    assert s.params_dict()["params"] == {"target": "least-likely"}
    with pytest.raises(RobenchError, match="unknown attack key 'version'"):
        make_spec("pgd", version="standard")
    with pytest.raises(RobenchError, match="params key 'taget'.*did you mean: target"):
        make_spec("pgd", params={"taget": "random"})
    with pytest.raises(RobenchError, match="unknown attack key 'steps'"):
        make_spec("autoattack", steps=3)


def test_options_cannot_shadow_shared_keys():
    @dataclasses.dataclass(frozen=True)
    class Shadow:
        eps: float = 1.0

    spec = AttackSpec("x", "pgd", options=Shadow())
    with pytest.raises(RobenchError, match="repeat shared keys \\(eps\\)"):
        spec.params_dict()
    assert AttackSpec("x", "pgd").params_dict()["eps"] == [4 / 255]  # a kind without options: shared keys only
