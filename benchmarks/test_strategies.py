"""Every strategy (and PyTorch where installed) on the shape set, a benchmark group per ``op|shape``.

Run with ``pytest benchmarks --benchmark-only`` (the README's test command does not run these).
Each row's ``extra_info`` holds the FLOP count, GFLOP/s (GB/s for pooling), the method and, for
``auto``, the strategy it chose. Warm-up calls exclude JIT compile time. The loop strategy is
not benchmarked here (it would take hours on these shapes): ``fastconv bench`` reports it,
timed on a shrunken copy and extrapolated.
"""

import numpy as np
import pytest

from fastconv import bench, dispatch, shapes

FAST = ("vectorized", "direct", "img2col", "auto", "torch", "scipy")
CASES = [(name, method) for name in shapes.SHAPES for method in FAST]
BACKWARD_CASES = [(name, method) for name in shapes.BACKWARD for method in FAST]


def _run(benchmark, problem, method, backward, gemm_gflops):
    if method in ("torch", "scipy"):
        call = (bench.make_torch_call if method == "torch" else bench.make_scipy_call)(problem, np.float32, backward)
        if call is None:
            pytest.skip(f"{method} is not installed or does not compute this problem")
    else:
        call = bench.make_call(problem, method, np.float32, backward)
    op = problem.op + ("_backward" if backward else "")
    benchmark.group = f"{op}|{problem.name}"
    benchmark.extra_info.update(op=op, shape=problem.name, method=method,
                                flops=problem.flops() * (2 if backward and problem.is_conv else 1))
    if method == "auto":
        benchmark.extra_info["chosen"] = dispatch.auto_method_for(problem, np.float32, backward)
    benchmark.pedantic(call, warmup_rounds=1, rounds=max(3, min(50, int(2e9 / max(problem.flops(), 1)))),
                       iterations=1)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info["gflops"] = benchmark.extra_info["flops"] / seconds / 1e9
    benchmark.extra_info["gbps"] = problem.bytes_moved() * (2 if backward else 1) / seconds / 1e9
    if problem.is_conv:
        benchmark.extra_info["fraction_of_gemm"] = benchmark.extra_info["gflops"] / gemm_gflops(problem.flops())


@pytest.mark.parametrize("name, method", CASES)
def test_forward(benchmark, gemm_gflops, name, method):
    _run(benchmark, shapes.SHAPES[name], method, False, gemm_gflops)


@pytest.mark.parametrize("name, method", BACKWARD_CASES)
def test_backward(benchmark, gemm_gflops, name, method):
    _run(benchmark, shapes.SHAPES[name], method, True, gemm_gflops)
