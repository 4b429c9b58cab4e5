"""The ``fastconv`` command line.

``fastconv bench``: loop vs vectorized vs JIT (vs PyTorch), in GFLOP/s, on the shape set or yours.
``fastconv compare A.json B.json``: two ``bench --json`` reports row by row (time B/A).
``fastconv info``: versions, CPU and vector width, threads, caches (``--json`` for a JSON object).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys

import numpy as np

from . import bench, shapes
from ._machine import cpu_model

SCHEMA_VERSION = 1


def environment(threads: int, dtype: str) -> dict:
    """What a reader needs to interpret the numbers: date, CPU, threads, versions."""
    import numba

    from . import __version__

    torch = bench.torch_or_none()
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": threads,
        "dtype": dtype,
        "python": platform.python_version(),
        "fastconv": __version__,
        "numpy": np.__version__,
        "numba": numba.__version__,
        "torch": None if torch is None else torch.__version__,
    }


def _fmt(value, spec, suffix=""):
    return "-" if value is None else f"{value:{spec}}{suffix}"


def format_table(problem, rows, backward=False) -> str:
    """The per-shape table of the report."""
    unit = "GFLOP/s" if problem.is_conv else "GB/s"
    head = f"{problem.name}{' (backward)' if backward else ''}: {problem.describe()}"
    if rows and rows[0].gemm_gflops:
        head += f"  [np.matmul {rows[0].gemm_gflops:.0f} GFLOP/s]"
    last = "of GEMM" if problem.is_conv else "of copy"
    lines = [head, f"  {'method':<20}{'ms':>10}{unit:>10}{'x torch':>9}{'x vect':>9}{'x loop':>10}{last:>9}"]
    for r in rows:
        fraction = r.fraction_of_gemm if problem.is_conv else r.fraction_of_copy
        speed = r.gflops if problem.is_conv else r.gbps
        method = r.method + ("*" if r.extrapolated else "") + (f"->{r.chosen}" if r.chosen else "")
        lines.append(
            f"  {method:<20}{r.ms:>10.3f}{speed:>10.2f}{_fmt(r.speedup_vs_torch, '.2f', 'x'):>9}"
            f"{_fmt(r.speedup_vs_vectorized, '.2f', 'x'):>9}{_fmt(r.speedup_vs_loop, '.0f', 'x'):>10}"
            f"{_fmt(None if fraction is None else 100 * fraction, '.0f', '%'):>9}"
        )
    return "\n".join(lines)


def plot(results, path, environment=None):
    """Write the report's PNG: speedup against PyTorch, convolution GFLOP/s, pooling GB/s against
    np.copyto (three panels; see :mod:`fastconv.plot`), titled from ``environment``. Returns the figure."""
    from .plot import plot_report

    return plot_report(results, path, environment)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastconv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="time every strategy on the shape set (or your shapes) and print ratios")
    b.add_argument("--quick", action="store_true", help=f"only the quick subset: {', '.join(shapes.QUICK)}")
    b.add_argument("--shapes", help="comma-separated shape names (see --list)")
    b.add_argument("--shape", action="append", default=[], metavar="SPEC",
                   help="your own problem, e.g. conv2d:1,64,56,56,64,3,3,1,1 "
                        "(conv2d:N,C_in,H,W,C_out,kH,kW,stride,pad[,groups]; conv1d:N,C_in,L,C_out,k,stride,pad; "
                        "max_pool2d|avg_pool2d:N,C,H,W,k,stride,pad); repeatable")
    b.add_argument("--methods", help=f"comma-separated, from {', '.join(bench.report_methods())} (default: all)")
    b.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="threads for fastconv, BLAS and torch (set for the run, restored after)")
    b.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    b.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="time the methods in N interleaved rounds and keep each one's best median "
                        "(steadier ratios on a noisy machine; default 1)")
    b.add_argument("--backward", action="store_true", help="time the backward passes (dx and dw together)")
    b.add_argument("--json", metavar="PATH", help="write machine-readable results")
    b.add_argument("--plot", metavar="PATH", help="write a PNG: speedup against PyTorch, GFLOP/s, pooling GB/s "
                                                   "against np.copyto (needs matplotlib)")
    b.add_argument("--list", action="store_true", help="list the shape set and exit")
    b.add_argument("--mixed", action="store_true",
                   help="time a small NumPy CNN step (fastconv calls between NumPy's, one '@'): each op alone and "
                        "inside the step, and a convolution right after a matmul; then exit")
    b.add_argument("--no-progress", action="store_true",
                   help="no progress bar (shown on stderr when it is a terminal and tqdm is installed: "
                        "pip install 'fastconv[report]')")
    c = sub.add_parser("compare", help="compare two 'bench --json' reports row by row (time B/A)",
                       description="Match the rows of two 'fastconv bench --json' reports by (op, shape, method) "
                                   "and print A's time, B's and B/A, flagging changes beyond the threshold.")
    c.add_argument("a", metavar="A.json", help="the baseline report")
    c.add_argument("b", metavar="B.json", help="the report compared with it")
    c.add_argument("--threshold", type=float, default=0.1, metavar="T",
                   help="flag rows whose time changed by more than this fraction: B/A above 1+T (slower) or "
                        "below 1/(1+T) (faster); default 0.1")
    c.add_argument("--fail-on-regression", action="store_true",
                   help="exit with status 1 when any row got slower beyond the threshold")
    i = sub.add_parser("info", help="what fastconv runs on: versions, CPU and vector width, threads, caches",
                       description="Versions, the CPU and the vector width Numba compiles for, Numba's and BLAS's "
                                   "threads, Numba's cache and fastconv's kernels in it, the workspace cap, the "
                                   "strategies and the measure-mode cache (also fastconv.show_config()).")
    i.add_argument("--json", action="store_true", help="print the same as a JSON object")
    return parser


def _problems(args, parser):
    if args.shapes and args.quick:
        parser.error("--shapes and --quick cannot be combined")
    try:
        if args.shapes:
            chosen = [shapes.get(n.strip()) for n in args.shapes.split(",") if n.strip()]
        elif args.shape:
            chosen = []
        elif args.quick:
            chosen = [shapes.SHAPES[n] for n in shapes.QUICK]
        elif args.backward:
            chosen = [shapes.SHAPES[n] for n in shapes.BACKWARD]
        else:
            chosen = list(shapes.SHAPES.values())
        chosen += [shapes.parse_problem(s) for s in args.shape]
    except ValueError as exc:
        parser.error(str(exc))
    return chosen


def _methods(args, parser):
    if not args.methods:
        return bench.report_methods()
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in bench.report_methods()]
    if unknown:
        parser.error(f"unknown method {unknown[0]!r}; choose from {', '.join(bench.report_methods())}")
    return methods


def bench_main(args, parser) -> int:
    if args.list:
        for p in shapes.SHAPES.values():
            print(f"{p.name:<18} {p.describe():<62} {p.description}")
        return 0
    problems = _problems(args, parser)
    methods = _methods(args, parser)
    import numba

    if not 1 <= args.threads <= numba.config.NUMBA_NUM_THREADS:
        parser.error(f"--threads must be between 1 and {numba.config.NUMBA_NUM_THREADS} (the cores Numba can use), "
                     f"got {args.threads}")
    if args.repeat < 1:
        parser.error(f"--repeat must be >= 1, got {args.repeat}")
    if args.plot:
        from .plot import require_matplotlib

        require_matplotlib()  # fail before the benchmark, not after it
    dtype = np.dtype(args.dtype)
    env = environment(args.threads, args.dtype)
    env["repeats"] = args.repeat
    print(f"fastconv bench  {env['date']}  {env['cpu']}  threads={args.threads}  dtype={args.dtype}"
          + (f"  best of {args.repeat} interleaved rounds" if args.repeat > 1 else ""))
    print(f"  fastconv {env['fastconv']}, numpy {env['numpy']}, numba {env['numba']}, torch {env['torch'] or 'not installed'}")
    if "torch" in methods and env["torch"] is None:
        print("  (PyTorch is not installed: no 'x torch' column; pip install torch to compare)")
    print("  'of GEMM': GFLOP/s over np.matmul's on a square problem of similar FLOPs (per table)")
    print("  'of copy' (pooling): GB/s (input read + output written) over np.copyto's of the input")
    print("  * loop timed on a shrunken copy of each problem and extrapolated by FLOP count")
    print(f"  isolation: {bench.isolation()}")
    from .threads import policy

    print("  " + str(policy()).replace("\n", "\n  "))
    print()
    if args.mixed:
        from .mixed import format_mixed, mixed_step

        with bench.pinned_threads(args.threads):
            result = mixed_step(steps=30 * args.repeat)
        print(format_mixed(result))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"schema": SCHEMA_VERSION, "environment": env, "mixed_step": result}, f, indent=1)
            print(f"wrote {args.json}")
        return 0
    bar = progress_bar(len(problems), enabled=not args.no_progress)
    results = []
    for problem in problems:
        if bar is not None:
            bar.set_description(problem.name)
        rows = bench.measure(problem, methods, args.threads, dtype, args.backward, repeats=args.repeat)
        results += [r.as_dict() for r in rows]
        table = format_table(problem, rows, args.backward) + "\n"
        if bar is None:
            print(table, flush=True)
        else:
            bar.update()
            bar.write(table, file=sys.stdout)  # clears the bar, prints, draws it again below
    if bar is not None:
        bar.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"schema": SCHEMA_VERSION, "environment": env, "results": results}, f, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        plot(results, args.plot, env)
        print(f"wrote {args.plot}")
    return 0


def progress_bar(total: int, enabled: bool = True):
    """A tqdm bar over ``total`` problems on stderr, or None: when disabled, when stderr is not
    a terminal, or when tqdm is not installed (the report extra: ``pip install 'fastconv[report]'``)."""
    if not enabled or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, file=sys.stderr, unit="shape", leave=False, dynamic_ncols=True)


def compare_main(args, parser) -> int:
    from . import compare

    if not 0 <= args.threshold < float("inf"):  # NaN fails too
        parser.error(f"--threshold must be a finite fraction >= 0 (0.1 is 10%), got {args.threshold}")
    try:
        a, b = compare.load(args.a), compare.load(args.b)
    except ValueError as exc:
        parser.error(str(exc))
    result = compare.compare(a, b, args.threshold)
    print(compare.format_comparison(result, args.a, args.b))
    return 1 if args.fail_on_regression and result.slower() else 0


def info_main(args) -> int:
    from .info import collect, format_text

    info = collect()
    print(json.dumps(info, indent=1) if args.json else format_text(info))
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "bench":
        return bench_main(args, parser)
    if args.command == "compare":
        return compare_main(args, parser)
    if args.command == "info":
        return info_main(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
