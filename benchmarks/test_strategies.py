"""Every strategy (and PyTorch where installed) on the shape set, a benchmark group per ``op|shape``.

Run with ``pytest benchmarks --benchmark-only`` (the README's test command does not run these).
Each row's ``extra_info`` holds the FLOP count, GFLOP/s (GB/s for pooling), the method and, for
``auto``, the strategy it chose. Warm-up calls exclude JIT compile time. The loop strategy would
take minutes to hours on these shapes: its rows time a shrunken copy of each problem (same
kernel, stride and padding; ``extra_info["shrunken_to"]`` says which), so compare its GFLOP/s,
not its time. Pooling problems also get an ``np.copyto`` row (the input copied once), the
bandwidth a memory-bound kernel is judged against.
"""

import numpy as np
import pytest

from fastconv import bench, shapes, strategies

#: The report's table of methods (fastconv.bench.report_methods()): the registered strategies, auto, torch, scipy, copyto.
CASES = [(name, method) for name in shapes.SHAPES for method in bench.report_methods()]
BACKWARD_CASES = [(name, method) for name in shapes.BACKWARD for method in bench.report_methods() if method != "copyto"]


def _is_reference(method):
    return method in strategies.names() and strategies.strategy(method).reference


def _run(benchmark, problem, method, backward, gemm_gflops):
    op = problem.op + ("_backward" if backward else "")
    benchmark.group = f"{op}|{problem.name}"
    if _is_reference(method):
        problem = bench.shrink(problem)
        benchmark.extra_info["shrunken_to"] = problem.describe()
    if method == "copyto":
        if problem.is_conv:
            pytest.skip("np.copyto is the reference for pooling only")
        call, copied = bench.make_copy_call(problem, np.float32)
        benchmark.extra_info.update(op=op, shape=problem.name, method=method, flops=0)
        benchmark.pedantic(call, warmup_rounds=1, rounds=50, iterations=1)
        benchmark.extra_info["gbps"] = copied / benchmark.stats.stats.median / 1e9
        return
    if method in ("torch", "scipy"):
        call = (bench.make_torch_call if method == "torch" else bench.make_scipy_call)(problem, np.float32, backward)
        if call is None:
            pytest.skip(f"{method} is not installed or does not compute this problem")
    else:
        if not bench.implements(method, op):
            pytest.skip(f"{method} does not implement {op}")
        call = bench.make_call(problem, method, np.float32, backward)
    benchmark.extra_info.update(op=op, shape=problem.name, method=method,
                                flops=problem.flops() * (2 if backward and problem.is_conv else 1))
    if method == "auto":
        benchmark.extra_info["chosen"] = bench.auto_method_for(problem, np.float32, backward)
    rounds = 1 if _is_reference(method) else max(3, min(50, int(2e9 / max(problem.flops(), 1))))
    benchmark.pedantic(call, warmup_rounds=0 if _is_reference(method) else 1, rounds=rounds, iterations=1)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info["gflops"] = benchmark.extra_info["flops"] / seconds / 1e9
    benchmark.extra_info["gbps"] = problem.bytes_moved() * (2 if backward else 1) / seconds / 1e9
    if problem.is_conv and not _is_reference(method):
        benchmark.extra_info["fraction_of_gemm"] = benchmark.extra_info["gflops"] / gemm_gflops(problem.flops())


@pytest.mark.parametrize("name, method", CASES)
def test_forward(benchmark, gemm_gflops, name, method):
    _run(benchmark, shapes.SHAPES[name], method, False, gemm_gflops)


@pytest.mark.parametrize("name, method", BACKWARD_CASES)
def test_backward(benchmark, gemm_gflops, name, method):
    _run(benchmark, shapes.SHAPES[name], method, True, gemm_gflops)
