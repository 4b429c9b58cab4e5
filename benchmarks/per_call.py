"""Per-call time of tiny calls, fastconv against PyTorch, in one process.

    python benchmarks/per_call.py [--calls 2000]

The calls of issue 10's target: ``conv2d`` of a 1x1x8x8 image with a 3x3 kernel and
``max_pool2d`` of it with a 2x2 window (plus ``avg_pool2d`` and a 16-channel padded conv2d).
Each side runs in blocks (a few hundred untimed calls, then the timed ones, one at a time: the
median of single calls), never alternating call by call between the libraries.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _median_us(f, calls):
    for _ in range(max(200, calls // 10)):
        f()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args(argv)

    import fastconv
    from fastconv._machine import cpu_model

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 1, 8, 8)).astype(np.float32)
    w = rng.standard_normal((1, 1, 3, 3)).astype(np.float32)
    x16 = rng.standard_normal((1, 16, 8, 8)).astype(np.float32)
    w16 = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    cases = [
        ("conv2d 1x1x8x8, 3x3", lambda F, a: F.conv2d(a["x"], a["w"])),
        ("max_pool2d 1x1x8x8, 2x2", lambda F, a: F.max_pool2d(a["x"], 2)),
        ("avg_pool2d 1x1x8x8, 2x2", lambda F, a: F.avg_pool2d(a["x"], 2)),
        ("conv2d 1x16x8x8, 16x3x3, padding 1", lambda F, a: F.conv2d(a["x16"], a["w16"], padding=1)),
    ]
    ours = {"x": x, "w": w, "x16": x16, "w16": w16}
    try:
        import torch
        import torch.nn.functional as tf

        torch.set_num_threads(fastconv.get_num_threads())
        theirs = {k: torch.from_numpy(v) for k, v in ours.items()}
    except ImportError:
        tf = None
    print(f"per-call time, median of {args.calls} calls, {fastconv.get_num_threads()} threads, "
          f"{cpu_model()}")
    for name, call in cases:
        mine = _median_us(lambda: call(fastconv, ours), args.calls)
        if tf is None:
            print(f"  {name:40s} fastconv {mine:6.2f} us")
            continue
        torch_us = _median_us(lambda: call(tf, theirs), args.calls)
        print(f"  {name:40s} fastconv {mine:6.2f} us   PyTorch {torch_us:6.2f} us   ratio {mine / torch_us:4.2f}")


if __name__ == "__main__":
    main()
