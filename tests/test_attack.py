"""The attack: a KL-bounded search of the input distribution against the mechanistic estimate."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from ppl_mech.models import get_model

from ppl_mech import UnsupportedDistributionError
from ppl_mech.attack import attack
from ppl_mech.cli import main

KL_BUDGET = 20.0


def test_attack_cli_raises_rare_catastrophe_within_kl_budget(tmp_path, capsys):
    """halfspaces at offset 5: P = 1.7e-11; within KL <= 20 the found q has P_q >= 0.1 (verified).

    The best mean shift alone reaches the dominating point at KL = 20 (|m| = sqrt(40)), where
    both margins are ~0 and P_q ~ 0.28; the verified number is P_q[C] by sampling from q.
    """
    built = get_model("halfspaces", offset=5.0)
    exact = built.exact["catastrophe"]
    assert exact <= 1e-8
    out = tmp_path / "attack.json"
    code = main(["attack", "halfspaces", "-o", "offset=5.0", "--kl-budget", str(KL_BUDGET),
                 "-n", "4096", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "KL(q || p)" in printed and "sampled     P_q[C]" in printed
    result = json.loads(out.read_text())
    assert result["kl"] <= KL_BUDGET + 1e-3
    assert result["verified_probability_q"] >= 0.1
    assert result["mechanistic_probability_q"] >= 0.1
    assert result["mechanistic_probability_p"] == pytest.approx(exact, rel=1e-3)
    # the same q as an importance proposal recovers the original tiny probability
    assert exact / 2 <= result["importance_probability_p"] <= 2 * exact


def test_attack_mean_only_stays_within_budget():
    built = get_model("linear-gaussian", sigmas=6.0)
    r = attack(built.model, built.args, built.kwargs, kl_budget=8.0, fit_scale=False, steps=100, verify=False)
    assert r.kl <= 8.0 + 1e-3
    assert np.allclose(r.scale["x"], 1.0)
    # a 6-sigma halfspace: the best shift of KL B moves the score by sqrt(2B) = 4 sd -> P = Phi(-2)
    assert r.mechanistic_probability_q == pytest.approx(0.02275, rel=0.05)
    assert r.mechanistic_probability_p == pytest.approx(built.exact["catastrophe"], rel=1e-2)


def test_attack_rejects_what_it_cannot_move():
    kcnf = get_model("kcnf")
    with pytest.raises(UnsupportedDistributionError, match="'x'.*discrete"):
        attack(kcnf.model, kcnf.args, kcnf.kwargs, kl_budget=1.0)
    built = get_model("halfspaces")
    with pytest.raises(ValueError, match="kl_budget"):
        attack(built.model, built.args, kl_budget=-1.0)
    assert main(["attack", "halfspaces", "--kl-budget", "-1"]) == 2
    assert main(["attack", "kcnf", "--kl-budget", "1"]) == 2
    with pytest.raises(ValueError, match="restarts"):
        attack(built.model, built.args, kl_budget=1.0, restarts=0, rng_key=jax.random.PRNGKey(0))
