"""Re-derive the dispatcher's rules: time every candidate strategy on the shape set and a grid around it.

    python benchmarks/derive_dispatch.py [--threads 2] [--json out.json] [--shape-set-only | --shapes a,b]

Prints, for each problem, each candidate's median time and the winner, next to what
``method="auto"`` currently picks and how far that is from the best (the issue's bar: within
10%). The rules in ``fastconv/dispatch.py`` (``_rules``) were written from this output; when
it disagrees on a new machine, update the rules and ``TUNED_ON``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np

from fastconv import bench, shapes, strategies


def grid():
    """Problems around the shape set: channel counts, image sizes, kernel sizes, batch sizes."""
    out = list(shapes.SHAPES.values())
    for c in (1, 3, 16, 64, 256):
        for hw in (7, 28, 112):
            for k in (1, 3, 5):
                if c * hw * hw * c * k * k > 2e9:
                    continue
                out.append(shapes.Problem(f"grid_c{c}_hw{hw}_k{k}", "conv2d", 1, c, (hw, hw), c, (k, k), 1, k // 2))
    for n in (1, 8, 32):
        out.append(shapes.Problem(f"grid_dw_n{n}", "conv2d", n, 32, (56, 56), 32, (3, 3), 1, 1, groups=32))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    parser.add_argument("--shape-set-only", action="store_true")
    parser.add_argument("--shapes", help="comma-separated names from the shape set: only these")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds per problem (best median kept)")
    args = parser.parse_args(argv)
    problems = list(shapes.SHAPES.values()) if args.shape_set_only else grid()
    if args.shapes:
        problems = [shapes.SHAPES[name] for name in args.shapes.split(",")]
    automatic = tuple(n for n in strategies.names() if strategies.strategy(n).automatic)
    records = []
    print(f"{'problem':<22}{'op':<20}" + "".join(f"{m:>12}" for m in automatic) + f"{'best':>12}{'auto':>12}{'auto/best':>10}")
    for problem in problems:
        for backward in (False, True):
            if backward and not problem.is_conv and problem.op not in ("max_pool2d", "avg_pool2d"):
                continue
            rows = bench.measure(problem, automatic, args.threads, np.float32, backward,
                                 repeats=args.repeat)
            times = {r.method: r.ms for r in rows}
            best = min(times, key=times.get)
            auto = bench.auto_method_for(problem, np.float32, backward)
            ratio = times[auto] / times[best]
            op = problem.op + ("_backward" if backward else "")
            print(f"{problem.name:<22}{op:<20}" + "".join(f"{times[m]:>12.3f}" if m in times else f"{'-':>12}"
                                                          for m in automatic)
                  + f"{best:>12}{auto:>12}{ratio:>10.2f}", flush=True)
            records.append({"problem": dataclasses.asdict(problem), "op": op, "ms": times, "best": best,
                            "auto": auto, "auto_over_best": ratio})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1, default=list)


if __name__ == "__main__":
    main()
