"""A small CNN step in plain NumPy: fastconv's calls between NumPy's own, timed alone and in the step.

The step (``fastconv bench --mixed``, and the ``mixed_step`` group of ``benchmarks/``) is what a
NumPy training or inference loop does: conv2d (64x3x32x32 -> 32, 3x3, padding 1), ReLU,
max_pool2d(2), conv2d (32 -> 64), ReLU, max_pool2d(2), then a dense layer ``h = features @ W``
with ``W`` 4096x256 (BLAS). Each op is also timed alone on the same input, so the ratio
in-step / alone shows what the ops cost each other (idle thread pools spinning on the cores
the next op needs; fresh pages of newly allocated arrays). Two more rows time a convolution
right after a 256x256 ``np.matmul``, against the same convolution alone.
"""

from __future__ import annotations

import time

import numpy as np

from . import conv as _conv
from . import pool as _pool
from .bench import settle_seconds


def _arrays(seed: int):
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((64, 3, 32, 32), dtype=np.float32),
        "w1": rng.standard_normal((32, 3, 3, 3), dtype=np.float32) * 0.2,
        "w2": rng.standard_normal((64, 32, 3, 3), dtype=np.float32) * 0.06,
        "W": rng.standard_normal((4096, 256), dtype=np.float32) * 0.02,
        "A": rng.standard_normal((256, 256), dtype=np.float32),
        "layer_x": rng.standard_normal((1, 64, 56, 56), dtype=np.float32),
        "layer_w": rng.standard_normal((64, 64, 3, 3), dtype=np.float32),
        "image": rng.standard_normal((1, 1, 512, 512), dtype=np.float32),
        "filter": rng.standard_normal((1, 1, 3, 3), dtype=np.float32),
    }


def _ops(a):
    """The step as a list of (name, function of the previous op's output)."""
    return [
        ("conv1", lambda _: _conv.conv2d(a["x"], a["w1"], padding=1)),
        ("relu+pool1", lambda y: _pool.max_pool2d(np.maximum(y, 0), 2)),
        ("conv2", lambda y: _conv.conv2d(y, a["w2"], padding=1)),
        ("relu+pool2", lambda y: _pool.max_pool2d(np.maximum(y, 0), 2)),
        ("dense", lambda y: y.reshape(y.shape[0], -1) @ a["W"]),
    ]


def make_step(seed: int = 0):
    """The step as a zero-argument callable returning the dense layer's output (for pytest-benchmark)."""
    ops = _ops(_arrays(seed))

    def step():
        y = None
        for _, fn in ops:
            y = fn(y)
        return y

    return step


def _block(fn, calls: int, before=None) -> float:
    """Median seconds of ``fn()`` over ``calls`` timed calls (``before()`` untimed ahead of each)."""
    time.sleep(settle_seconds())
    times = []
    for i in range(calls + 3):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def mixed_step(steps: int = 30, seed: int = 0) -> dict:
    """Time the step and each of its ops, alone and inside it, with the current thread settings.

    Parameters
    ----------
    steps : int
        Timed steps (and timed calls of each op alone), after 3 untimed ones.
    seed : int
        Seed of the random inputs.

    Returns
    -------
    dict
        ``step_ms`` (median step), ``ops`` (name -> ``{"alone_ms", "in_step_ms", "ratio"}``) and
        ``after_matmul`` (name -> ``{"alone_ms", "after_matmul_ms", "ratio"}``).
    """
    a = _arrays(seed)
    ops = _ops(a)
    per_op = {name: [] for name, _ in ops}
    inputs = {}
    step_times = []
    time.sleep(settle_seconds())
    for i in range(steps + 3):
        y = None
        t_start = t = time.perf_counter()
        for name, fn in ops:
            inputs.setdefault(name, y)
            y = fn(y)
            now = time.perf_counter()
            if i >= 3:
                per_op[name].append(now - t)
            t = now
        if i >= 3:
            step_times.append(t - t_start)
    result = {"step_ms": float(np.median(step_times)) * 1e3, "ops": {}, "after_matmul": {}}
    for name, fn in ops:
        alone = _block(lambda fn=fn, x=inputs[name]: fn(x), steps)
        in_step = float(np.median(per_op[name]))
        result["ops"][name] = {"alone_ms": alone * 1e3, "in_step_ms": in_step * 1e3, "ratio": in_step / alone}
    cases = {
        "conv 64x56x56 3x3": lambda: _conv.conv2d(a["layer_x"], a["layer_w"], padding=1),
        "filter 512x512 3x3": lambda: _conv.conv2d(a["image"], a["filter"], padding=1),
    }
    A = a["A"]
    for name, fn in cases.items():
        alone = _block(fn, steps)
        after = _block(fn, steps, before=lambda: A @ A)
        result["after_matmul"][name] = {"alone_ms": alone * 1e3, "after_matmul_ms": after * 1e3,
                                        "ratio": after / alone}
    return result


def format_mixed(result: dict) -> str:
    """The mixed step's figures as a small table."""
    lines = [f"mixed NumPy CNN step: {result['step_ms']:.2f} ms per step",
             f"  {'op':<20} {'alone ms':>9} {'in step ms':>11} {'ratio':>6}"]
    for name, r in result["ops"].items():
        lines.append(f"  {name:<20} {r['alone_ms']:9.3f} {r['in_step_ms']:11.3f} {r['ratio']:6.2f}")
    lines.append(f"  {'right after a 256x256 @':<20} {'alone ms':>9} {'after @ ms':>11} {'ratio':>6}")
    for name, r in result["after_matmul"].items():
        lines.append(f"  {name:<20} {r['alone_ms']:9.3f} {r['after_matmul_ms']:11.3f} {r['ratio']:6.2f}")
    return "\n".join(lines)
