"""Tails of the built-in trained MLP: polynomial surrogate vs cumulant propagation vs Monte Carlo.

The network is ``get_model("trained-mlp")`` (tanh, 16 -> 64 -> 1, x ~ N(0, I)); its
``catastrophe`` site is ``output > 4.685`` (P ~ 8e-6). We compare, for the output y:

* Monte Carlo with 2^24 samples (the reference; its standard errors are printed);
* the polynomial method (:func:`ppl_mech.tails.mlp_polynomial_surrogate`): each tanh
  replaced by its degree-d Hermite truncation, the four cumulants of the resulting
  polynomial computed exactly, tails by the saddlepoint approximation with the quartic
  (or cubic, "k<=3") cumulant series;
* the degree-2 surrogate, a quadratic form with an *exact* CGF (no series truncation);
* cumulant propagation (:func:`ppl_mech.cumulants.propagate_mlp`, K = 3, with the readout);
* the saddlepoint with the Monte Carlo cumulants themselves: what four exact cumulants
  can do at best with the quartic CGF.

Run: ``python examples/trained_mlp_tails.py`` (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from ppl_mech.models import get_model  # noqa: E402

from ppl_mech.cumulants import dense_fourth, dense_third, propagate_mlp  # noqa: E402
from ppl_mech.tails import (  # noqa: E402
    describe_status,
    edgeworth_tail,
    mlp_polynomial_surrogate,
    mlp_quadratic_form,
    saddlepoint_tail,
    saddlepoint_tail_from_cumulants,
    surrogate_cumulants,
)

SAMPLES = 2**24
CHUNK = 2**20


def monte_carlo(w1, b1, w2, b2, thresholds):
    @jax.jit
    def chunk(key):
        x = jax.random.normal(key, (CHUNK, w1.shape[0]), jnp.float32)
        y = (jnp.tanh(x @ w1.astype(jnp.float32) + b1.astype(jnp.float32)) @ w2.astype(jnp.float32)
             + jnp.float32(b2)).astype(jnp.float64)
        yc = y - mean_guess
        return (jnp.stack([jnp.sum(yc**p) for p in (1, 2, 3, 4)]),
                jnp.stack([jnp.sum(y > t) for t in thresholds]))

    mean_guess = 0.0
    power_sums = np.zeros(4)
    counts = np.zeros(len(thresholds))
    for i in range(SAMPLES // CHUNK):
        s, c = chunk(jax.random.PRNGKey(i))
        power_sums += np.asarray(s)
        counts += np.asarray(c)
    m1, m2, m3, m4 = power_sums / SAMPLES
    var = m2 - m1**2
    k3 = m3 - 3 * m1 * m2 + 2 * m1**3
    mu4 = m4 - 4 * m1 * m3 + 6 * m1**2 * m2 - 3 * m1**4
    k4 = mu4 - 3 * var**2
    p = counts / SAMPLES
    return np.array([m1, var, k3, k4]), p, np.sqrt(p * (1 - p) / SAMPLES)


def fmt(x, width=10):
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "nan".rjust(width)
    return f"{x:.3e}".rjust(width) if abs(x) < 1e-2 or abs(x) >= 1e3 else f"{x:.4f}".rjust(width)


def main():
    model = get_model("trained-mlp")
    w1, b1, w2, b2, threshold = (np.asarray(a, np.float64) for a in model.args)
    n = w1.shape[0]

    # thresholds: the MC 1e-2, 1e-3, 1e-4 quantiles (from a pilot) and the model's catastrophe level
    t0 = time.perf_counter()
    pilot = np.asarray(jnp.tanh(jax.random.normal(jax.random.PRNGKey(123), (2**20, n)) @ w1 + b1) @ w2 + b2)
    levels = [float(np.round(np.quantile(pilot, 1 - q), 3)) for q in (1e-2, 1e-3, 1e-4)]
    thresholds = levels + [float(threshold)]
    kappa_mc, p_mc, se_mc = monte_carlo(w1, b1, w2, b2, thresholds)
    t_mc = time.perf_counter() - t0

    rows = []  # (method, cumulants (4, maybe None), probabilities, seconds, note)
    rows.append(("Monte Carlo 2^24", kappa_mc, p_mc, t_mc, "reference"))
    ts = jnp.asarray(thresholds)

    for d in (2, 3, 5, 7, 9):
        t0 = time.perf_counter()
        sur = mlp_polynomial_surrogate(w1, b1, w2, b2, "tanh", degree=d)
        k = surrogate_cumulants(sur)
        r4 = saddlepoint_tail_from_cumulants(ts, k)
        r3 = saddlepoint_tail_from_cumulants(ts, k[:3])
        p4, p3 = np.asarray(r4.probability), np.asarray(r3.probability)
        dt = time.perf_counter() - t0
        drop = float(jnp.sum(sur.truncation_variance * w2**2))
        flags = sorted({s for st in np.asarray(r4.status) for s in describe_status(st)})
        rows.append((f"poly d={d}, saddle k<=4", np.asarray(k), p4, dt,
                     f"dropped var {drop:.1e}" + (f"; {flags}" if flags else "")))
        rows.append((f"poly d={d}, saddle k<=3", np.asarray(k), p3, 0.0, ""))
        if d == 2:
            rq = saddlepoint_tail(ts, mlp_quadratic_form(sur), order=2)
            rows.append(("poly d=2, exact quad. CGF", np.asarray(k), np.asarray(rq.probability), 0.0,
                         "saddlepoint-2, exact CGF of the surrogate"))
        if d == 7:
            re = edgeworth_tail(ts, k)
            rows.append(("poly d=7, Edgeworth k<=4", np.asarray(k), np.asarray(re.probability), 0.0, ""))

    t0 = time.perf_counter()
    msgs = propagate_mlp([jnp.asarray(w1)], [jnp.asarray(b1)], "tanh", jnp.zeros(n), jnp.eye(n), order=3,
                         readout=(jnp.asarray(w2)[:, None], jnp.asarray(b2).reshape(1)))
    out = msgs[-1]
    k_cp = np.array([float(out.mean[0]), float(out.cov[0, 0]), float(dense_third(out.third)[0, 0, 0]),
                     float(dense_fourth(out.fourth)[0, 0, 0, 0])])
    r_cp = saddlepoint_tail_from_cumulants(ts, jnp.asarray(k_cp))
    flags = sorted({s for st in np.asarray(r_cp.status) for s in describe_status(st)})
    rows.append(("cumulant prop. K=3, saddle", k_cp, np.asarray(r_cp.probability), time.perf_counter() - t0,
                 "; ".join(flags)))

    r_mc = saddlepoint_tail_from_cumulants(ts, jnp.asarray(kappa_mc))
    flags = sorted({s for st in np.asarray(r_mc.status) for s in describe_status(st)})
    rows.append(("MC cumulants, saddle k<=4", kappa_mc, np.asarray(r_mc.probability), 0.0, "; ".join(flags)))
    r_mc3 = saddlepoint_tail_from_cumulants(ts, jnp.asarray(kappa_mc[:3]))
    rows.append(("MC cumulants, saddle k<=3", kappa_mc, np.asarray(r_mc3.probability), 0.0, ""))

    print(f"trained-mlp: tanh {n}->{w1.shape[1]}->1, x ~ N(0, I); exact mean {model.exact['output']:.6f}")
    print(f"Monte Carlo standard errors: k1 {np.sqrt(kappa_mc[1] / SAMPLES):.1e}; P: "
          + ", ".join(f"{s / max(p, 1e-300):.1%}" for p, s in zip(p_mc, se_mc, strict=True)) + " relative")
    head = (f"{'method':28s}{'mean':>10s}{'var':>10s}{'k3':>10s}{'k4':>10s}"
            + "".join(f"{'P(y>' + format(t, '.3f') + ')':>16s}" for t in thresholds) + f"{'sec':>7s}  note")
    print(head)
    print("-" * len(head))
    for name, k, p, sec, note in rows:
        ks = "".join(fmt(float(v)) for v in k)
        ps = "".join(f"{p_i:10.3e} ({p_i / ref - 1:+5.0%})".rjust(16) if np.isfinite(p_i) else "nan".rjust(16)
                     for p_i, ref in zip(p, p_mc, strict=True))
        if name.startswith("Monte"):
            ps = "".join(f"{p_i:10.3e}      ".rjust(16) for p_i in p)
        print(f"{name:28s}{ks}{ps}{sec:7.1f}  {note}")
    print("(percentages: relative error against Monte Carlo)")


if __name__ == "__main__":
    main()
