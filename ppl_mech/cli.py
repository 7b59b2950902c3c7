"""``ppl-mech``: list models, estimate, compare estimators, run benchmarks.

    ppl-mech models
    ppl-mech estimate whestbench-256x8 --method sample --num-samples 1000000
    ppl-mech compare whestbench-256x8 --methods sample,mechanize:gaussian
    ppl-mech compare path/to/file.py:model --methods sample --site catastrophe
    ppl-mech attack halfspaces -o offset=5.0 --kl-budget 20
    ppl-mech bench throughput
    ppl-mech bench rare --quick

Bad arguments print one line to stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._errors import PPLMechError

BENCHMARKS = {
    "throughput": "ppl_mech.bench.throughput",
    "expectations": "ppl_mech.bench.expectations",
    "polytope": "ppl_mech.bench.polytope",
    "rare": "ppl_mech.bench.rare",
}


class UsageError(Exception):
    """A bad command line: reported in one line, exit code 2."""


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``["width=256", "activation=gelu"]`` -> ``{"width": 256, "activation": "gelu"}``."""
    options = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--option expects KEY=VALUE, got {pair!r}")
        try:
            options[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            options[key] = raw
    return options


def load_model(spec: str, options: dict[str, Any]):
    """A built-in model by name, or ``path.py:name`` (a BuiltModel or a no-argument model)."""
    from ppl_mech.models import BuiltModel, get_model

    if ":" in spec and spec.split(":", 1)[0].endswith(".py"):
        path, name = spec.split(":", 1)
        file = Path(path)
        if not file.is_file():
            raise UsageError(f"no such file: {path}")
        module_spec = importlib.util.spec_from_file_location(file.stem, file)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        if not hasattr(module, name):
            raise UsageError(f"{path} defines no {name!r}")
        obj = getattr(module, name)
        if isinstance(obj, BuiltModel):
            return obj
        if options:
            raise UsageError("--option applies to built-in models only")
        if not callable(obj):
            raise UsageError(f"{spec} is neither a NumPyro model nor a BuiltModel")
        return BuiltModel(name=spec, model=obj, description=obj.__doc__ or "")
    try:
        return get_model(spec, **options)
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None


def _method_options(args) -> Any:
    from ._methods import MethodOptions

    if args.num_samples < 1:
        raise UsageError(f"--num-samples must be positive, got {args.num_samples}")
    return MethodOptions(
        num_samples=args.num_samples,
        seed=args.seed,
        sites=tuple(args.site) if args.site else None,
        progress_bar=None if args.progress else False,
    )


def _run(method: str, built, options):
    from ._methods import make_estimator

    try:
        estimator = make_estimator(method, built.model, options)
    except ValueError as e:
        raise UsageError(str(e)) from None
    results = estimator(*built.args, **built.kwargs)
    results.model = built.name
    return results


def cmd_models(args) -> int:
    from ppl_mech.models import list_models

    for spec in list_models():
        defaults = ", ".join(f"{k}={v!r}" for k, v in spec.defaults.items())
        print(f"{spec.name:22s} {spec.description}")
        if defaults and args.verbose:
            print(f"{'':22s} options: {defaults}")
    return 0


def cmd_estimate(args) -> int:
    built = load_model(args.model, parse_options(args.option))
    results = _run(args.method, built, _method_options(args))
    print(results.table(max_units=args.max_units))
    for site, exact in built.exact.items():
        if site in results:
            print(f"exact {site}: {_short(exact)}")
    if args.json:
        _write_json(args.json, {args.method: results})
    return 0


def cmd_compare(args) -> int:
    from ._arviz import comparison_table, plot_estimates

    built = load_model(args.model, parse_options(args.option))
    options = _method_options(args)
    methods = [m for m in args.methods.split(",") if m]
    if not methods:
        raise UsageError("--methods is empty")
    runs, failures = {}, {}
    for method in methods:  # one method that cannot handle the model does not stop the others
        try:
            runs[method] = _run(method, built, options)
        except PPLMechError as e:
            failures[method] = str(e)
    if not runs:
        raise PPLMechError("; ".join(f"{m}: {e}" for m, e in failures.items()))
    site = args.site[0] if args.site else built.catastrophe
    first = next(iter(runs.values()))
    if site not in first:
        raise UsageError(f"model {built.name} has no site {site!r}; sites: {list(first)}")
    reference = built.exact.get(site)
    table = comparison_table(runs, site, reference=reference)
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(f"model {built.name}, site {site!r}"
              + (f", exact {_short(reference)}" if reference is not None else ""))
        print(table.to_string(float_format=lambda x: f"{x:.4g}"))
    for method, error in failures.items():
        print(f"{method}: not applicable: {error}")
    if args.csv:
        table.to_csv(args.csv)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        ax = plot_estimates(runs, site, reference=reference)
        ax.figure.tight_layout()
        ax.figure.savefig(args.plot, dpi=120)
    if args.json:
        _write_json(args.json, runs)
    return 0


def cmd_layers(args) -> int:
    from ._layer_moments import layer_moments

    built = load_model(args.model, parse_options(args.option))
    options = _method_options(args)
    sampled = _run("sample", built, options)
    import pandas as pd

    for method in [m for m in args.methods.split(",") if m]:
        diag = layer_moments(_run(method, built, options), sampled)
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            print(f"model {built.name}: {method} against {options.num_samples} samples")
            print(diag.table().to_string(float_format=lambda x: f"{x:.4g}"))
        suffix = method.replace(":", "-")
        if args.plot:
            import matplotlib

            matplotlib.use("Agg")
            diag.plot().savefig(_with_suffix(args.plot, suffix), dpi=120)
        if args.netcdf:
            diag.to_inference_data().to_netcdf(_with_suffix(args.netcdf, suffix))
    return 0


def _with_suffix(path: str, suffix: str) -> str:
    p = Path(path)
    return str(p.with_name(f"{p.stem}-{suffix}{p.suffix}"))


def cmd_attack(args) -> int:
    """Search the input distribution within a KL budget for the most catastrophic one."""
    import jax

    from .attack import attack

    built = load_model(args.model, parse_options(args.option))
    if args.num_samples < 1:
        raise UsageError(f"--num-samples must be positive, got {args.num_samples}")
    target = args.site or built.catastrophe
    try:
        result = attack(built.model, built.args, built.kwargs, kl_budget=args.kl_budget, target=target,
                        steps=args.steps, restarts=args.restarts, fit_scale=not args.mean_only,
                        num_samples=args.num_samples, rng_key=jax.random.PRNGKey(args.seed))
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(f"model {built.name}")
    print(result.summary())
    if target in built.exact:
        print(f"  exact       P_p[C] = {_short(built.exact[target])}")
    if args.json:
        import numpy as np

        Path(args.json).write_text(json.dumps({
            "kl_budget": result.kl_budget, "kl": result.kl,
            "mechanistic_probability_p": result.mechanistic_probability_p,
            "mechanistic_probability_q": result.mechanistic_probability_q,
            "verified_probability_q": float(np.asarray(result.verified.value)),
            "importance_probability_p": float(np.asarray(result.importance.value)),
            "mean_shift": {k: np.asarray(v).tolist() for k, v in result.mean_shift.items()},
            "scale": {k: np.asarray(v).tolist() for k, v in result.scale.items()},
        }, indent=1))
    return 0


def cmd_bench(args, rest: Sequence[str]) -> int:
    if args.name not in BENCHMARKS:
        raise UsageError(f"unknown benchmark {args.name!r}; known: {', '.join(BENCHMARKS)}")
    module = importlib.import_module(BENCHMARKS[args.name])
    return module.main(list(rest))


def _short(value) -> str:
    import numpy as np

    value = np.asarray(value)
    return f"{float(value):.6g}" if value.size == 1 else f"<array {value.shape}>"


def _write_json(path: str, runs) -> None:
    import numpy as np

    out = {}
    for label, results in runs.items():
        out[label] = {
            site: {
                "value": np.asarray(r.value).tolist(),
                "stderr": np.asarray(r.stderr).tolist(),
                "interval": [np.asarray(b).tolist() for b in r.interval],
                "method": r.method,
                "flops": r.cost.flops,
                "seconds": r.cost.seconds,
                "evaluations": r.cost.evaluations,
            }
            for site, r in results.items()
        }
    Path(path).write_text(json.dumps(out, indent=1))


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    from ._methods import method_names

    parser = _Parser(prog="ppl-mech", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("models", help="list the built-in models")
    p.add_argument("-v", "--verbose", action="store_true", help="show each model's options")

    def common(p):
        p.add_argument("model", help="a built-in model name, or path.py:name")
        p.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                       help="an option of the built-in model (repeatable)")
        p.add_argument("--num-samples", "-n", type=int, default=2**16)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--site", action="append", default=[], help="site(s) to estimate")
        p.add_argument("--json", help="write the results as JSON to this file")
        p.add_argument("--progress", action="store_true", help="show progress bars")

    p = sub.add_parser("estimate", help="run one estimator")
    common(p)
    p.add_argument("--method", "-m", default="sample", help=f"one of {', '.join(method_names())}")
    p.add_argument("--max-units", type=int, default=4)

    p = sub.add_parser("compare", help="run several estimators on one model")
    common(p)
    p.add_argument("--methods", default="sample", help="comma-separated methods")
    p.add_argument("--csv", help="write the comparison table as CSV")
    p.add_argument("--plot", help="write a forest plot (PNG) of the estimates")

    p = sub.add_parser("layers", help="predicted against sampled moments, site by site")
    common(p)
    p.add_argument("--methods", default="mechanize:gaussian", help="comma-separated mechanistic methods")
    p.add_argument("--plot", help="write a PNG per method (the method is appended to the name)")
    p.add_argument("--netcdf", help="write ArviZ InferenceData per method (netCDF)")

    p = sub.add_parser("attack", help="the most catastrophic input distribution within a KL budget")
    p.add_argument("model", help="a built-in model name, or path.py:name")
    p.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the built-in model (repeatable)")
    p.add_argument("--kl-budget", type=float, required=True, help="B in KL(q || p) <= B (nats)")
    p.add_argument("--site", help="the catastrophe site (default: the model's)")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps")
    p.add_argument("--restarts", type=int, default=1, help="searches from random starts; best wins")
    p.add_argument("--mean-only", action="store_true", help="shift the mean only (keep the scales)")
    p.add_argument("--num-samples", "-n", type=int, default=2**14, help="draws from q to verify")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the result as JSON to this file")

    p = sub.add_parser("bench", help="run a benchmark (extra arguments go to it)")
    p.add_argument("name", help=", ".join(BENCHMARKS))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
        args, rest = parser.parse_known_args(argv)
        if args.command == "bench":
            return cmd_bench(args, rest)
        if args.command == "attack" and not rest:
            return cmd_attack(args)
        if rest:
            raise UsageError(f"unrecognized arguments: {' '.join(rest)}")
        return {"models": cmd_models, "estimate": cmd_estimate, "compare": cmd_compare, "layers": cmd_layers}[
            args.command
        ](args)
    except UsageError as e:
        print(f"ppl-mech: error: {e}", file=sys.stderr)
        return 2
    except PPLMechError as e:
        print(f"ppl-mech: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
