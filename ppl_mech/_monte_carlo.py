"""The Monte Carlo engine behind ``handlers.sample``.

Sample ``i`` is drawn from ``fold_in(rng_key, i)``, so the estimate depends on
the key and the number of samples only: not on the chunk size and not on how
many devices share the work. Each chunk is one compiled call (``vmap`` of the
model) whose batch axis is sharded over all devices; it returns per-site
sufficient statistics (event counts for boolean sites, mean and centred sum of
squares for the rest), which the host merges in float64 (Chan et al.'s
pairwise update), so a run of 1e9 samples uses the memory of one chunk.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ._capture import ModelArgs, OutputSite, _return_outputs, capture
from ._cost import compile_with_cost
from ._errors import ModelError
from ._intervals import bernoulli_interval, normal_interval
from ._result import Cost, Results, SiteResult

CHUNK_BYTES = 1 << 28  # aim for ~256 MB of per-chunk outputs
PROGRESS_AFTER_SECONDS = 3.0


def draw_outputs(model: Callable, args: Sequence, kwargs: Mapping, key: jax.Array) -> dict:
    """One forward sample of every output site: latents drawn from ``key``."""
    recorder = capture(rng_key=key)
    with recorder:
        returned = model(*args, **kwargs)
    return {**recorder.outputs, **_return_outputs(returned)}


def output_sites(model: Callable, args: Sequence, kwargs: Mapping) -> dict[str, OutputSite]:
    shapes = jax.eval_shape(lambda k: draw_outputs(model, args, kwargs, k), jax.random.PRNGKey(0))
    return {n: OutputSite(n, tuple(s.shape), s.dtype) for n, s in shapes.items()}


def choose_chunk_size(sites: Mapping[str, OutputSite], num_samples: int, num_devices: int) -> int:
    bytes_per_sample = sum(4 * max(1, math.prod(s.shape)) for s in sites.values()) * 4
    chunk = 2 ** int(math.log2(max(256, min(1 << 16, CHUNK_BYTES // max(bytes_per_sample, 1)))))
    chunk = min(chunk, 2 ** math.ceil(math.log2(max(num_samples, 1))))
    return max(num_devices, chunk - chunk % num_devices)


class _Stats:
    """Running float64 statistics of one site, merged chunk by chunk."""

    def __init__(self, site: OutputSite):
        self.site = site
        self.n = 0
        self.count = np.zeros(site.shape, np.int64)  # boolean sites
        self.mean = np.zeros(site.shape, np.float64)
        self.m2 = np.zeros(site.shape, np.float64)

    def merge(self, n: int, chunk: Mapping[str, Any]) -> None:
        if self.site.is_boolean:
            self.count += np.asarray(chunk["count"], np.int64)
        else:
            mean_b = np.asarray(chunk["mean"], np.float64)
            m2_b = np.asarray(chunk["m2"], np.float64)
            total = self.n + n
            delta = mean_b - self.mean
            self.mean = self.mean + delta * (n / total)
            self.m2 = self.m2 + m2_b + delta**2 * (self.n * n / total)
        self.n += n

    def result(self, cost: Cost, level: float, interval: str, draws: Any) -> SiteResult:
        diagnostics: dict[str, Any] = {"num_samples": self.n}
        if draws is not None:
            diagnostics["draws"] = np.asarray(draws)
        if self.site.is_boolean:
            p = self.count / self.n
            stderr = np.sqrt(p * (1 - p) / self.n)
            bounds = bernoulli_interval(self.count, self.n, level, interval)
            diagnostics["successes"] = self.count
            return SiteResult(p, stderr, bounds, diagnostics, cost, "sample", True)
        variance = self.m2 / max(self.n - 1, 1)
        stderr = np.sqrt(variance / self.n)
        diagnostics["variance"] = variance
        return SiteResult(
            self.mean, stderr, normal_interval(self.mean, stderr, level), diagnostics, cost,
            "sample", False,
        )


def _chunk_statistics(values: dict, mask: jax.Array, sites: Mapping[str, OutputSite]) -> dict:
    n = jnp.sum(mask)
    stats = {}
    for name, site in sites.items():
        x = values[name]
        w = mask.reshape((-1,) + (1,) * len(site.shape))
        if site.is_boolean:
            stats[name] = {"count": jnp.sum(jnp.where(w, x, False), axis=0, dtype=jnp.int32)}
        else:
            x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
            mean = jnp.sum(jnp.where(w, x, 0), axis=0) / n
            m2 = jnp.sum(jnp.where(w, (x - mean) ** 2, 0), axis=0)
            stats[name] = {"mean": mean, "m2": m2}
    return stats


def monte_carlo(
    model: Callable,
    args: Sequence = (),
    kwargs: Mapping | None = None,
    *,
    num_samples: int,
    rng_key: jax.Array,
    sites: Sequence[str] | None = None,
    chunk_size: int | None = None,
    keep_draws: int = 1000,
    level: float = 0.95,
    interval: str = "clopper-pearson",
    progress_bar: bool | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> Results:
    """Plain Monte Carlo estimates of the model's output sites. See ``handlers.sample``."""
    kwargs = dict(kwargs or {})
    if int(num_samples) < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    num_samples = int(num_samples)
    layout, dynamic = ModelArgs.split(args, kwargs)

    def one(dyn, key):
        a, k = layout.merge(dyn)
        return draw_outputs(model, a, k, key)

    all_sites = output_sites(model, args, kwargs)
    if not all_sites:
        raise ModelError(
            "the model has no output site: add numpyro.deterministic sites or return a value"
        )
    wanted = list(all_sites) if sites is None else list(sites)
    missing = [s for s in wanted if s not in all_sites]
    if missing:
        raise ModelError(f"no output site(s) {missing}; the model's are {list(all_sites)}")
    chosen = {n: all_sites[n] for n in wanted}

    devices = list(jax.devices() if devices is None else devices)
    mesh = Mesh(np.array(devices), ("batch",))
    batch_sharding = NamedSharding(mesh, PartitionSpec("batch"))
    chunk = chunk_size or choose_chunk_size(chosen, num_samples, len(devices))
    if chunk % len(devices):
        raise ValueError(f"chunk_size={chunk} is not a multiple of the {len(devices)} devices")

    def chunk_stats(dyn, key, index):
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(index)
        values = jax.vmap(one, in_axes=(None, 0))(dyn, keys)
        return _chunk_statistics(values, index < num_samples, chosen)

    first_index = jax.device_put(jnp.arange(chunk, dtype=jnp.uint32), batch_sharding)
    compiled, flops_per_chunk, compile_seconds = compile_with_cost(
        chunk_stats, dynamic, rng_key, first_index
    )
    num_chunks = -(-num_samples // chunk)
    accumulators = {n: _Stats(s) for n, s in chosen.items()}
    bar = None
    start = time.perf_counter()
    for c in range(num_chunks):
        index = jax.device_put(
            jnp.arange(c * chunk, (c + 1) * chunk, dtype=jnp.uint32), batch_sharding
        )
        stats = jax.device_get(compiled(dynamic, rng_key, index))
        n = min(chunk, num_samples - c * chunk)
        for name, acc in accumulators.items():
            acc.merge(n, stats[name])
        if c == 0 and bar is None and num_chunks > 1:
            expected = (time.perf_counter() - start) * num_chunks
            if progress_bar or (progress_bar is None and expected > PROGRESS_AFTER_SECONDS):
                from tqdm.auto import tqdm

                bar = tqdm(total=num_samples, unit="sample", unit_scale=True, desc="sample")
        if bar is not None:
            bar.update(n)
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()

    draws = None
    if keep_draws:
        kept = min(keep_draws, num_samples)
        keys = jax.vmap(lambda i: jax.random.fold_in(rng_key, i))(jnp.arange(kept, dtype=jnp.uint32))
        draws = jax.device_get(jax.jit(jax.vmap(one, in_axes=(None, 0)))(dynamic, keys))
    cost = Cost(
        flops=flops_per_chunk * num_chunks,
        seconds=seconds,
        evaluations=num_samples,
        compile_seconds=compile_seconds,
    )
    return Results(
        {
            n: acc.result(cost, level, interval, None if draws is None else draws[n])
            for n, acc in accumulators.items()
        },
        method="sample",
    )
