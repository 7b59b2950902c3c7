"""Sharding over devices gives the same answer as one device (run in a subprocess with 4 CPU devices)."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np, numpyro, numpyro.distributions as dist
    from ppl_mech import handlers
    from ppl_mech._monte_carlo import monte_carlo
    assert len(jax.devices()) == 4, jax.devices()
    W = np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32) / 4
    def model(w):
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([16]).to_event(1))
        h = numpyro.deterministic("h", jax.nn.relu(x @ w))
        numpyro.deterministic("catastrophe", h[0] > 1.0)
    key = jax.random.PRNGKey(7)
    four = monte_carlo(model, (W,), num_samples=30_000, rng_key=key, chunk_size=4096)
    one = monte_carlo(model, (W,), num_samples=30_000, rng_key=key, chunk_size=4096,
                      devices=jax.devices()[:1])
    count = lambda r: int(r["catastrophe"].diagnostics["successes"])
    assert count(four) == count(one)
    np.testing.assert_allclose(four["h"].value, one["h"].value, rtol=1e-5)
    np.testing.assert_allclose(four["h"].stderr, one["h"].stderr, rtol=1e-4)
    print("OK", int(four["catastrophe"].diagnostics["successes"]))
    """
)


def test_four_devices_match_one():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("OK")
