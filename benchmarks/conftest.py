"""pytest-benchmark setup: 2 threads for fastconv, BLAS and PyTorch; the np.matmul reference once per size."""

import pytest

from fastconv import bench

THREADS = 2


@pytest.fixture(scope="session", autouse=True)
def pinned_threads():
    with bench.pinned_threads(THREADS):
        yield


@pytest.fixture
def gemm_gflops(pinned_threads):
    """np.matmul's GFLOP/s on a square problem of ``flops`` FLOPs (measured once per size)."""
    return bench.gemm_gflops
