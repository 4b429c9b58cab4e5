"""pytest-benchmark setup: 2 threads for everyone, the np.matmul reference once per size."""

import pytest

from fastconv import bench
from fastconv.threads import num_threads

THREADS = 2


@pytest.fixture(scope="session", autouse=True)
def pinned_threads():
    torch = bench.torch_or_none()
    if torch is not None:
        torch.set_num_threads(THREADS)
    with num_threads(THREADS):
        yield


@pytest.fixture
def gemm_gflops(pinned_threads):
    """np.matmul's GFLOP/s on a square problem of ``flops`` FLOPs (measured once per size)."""
    return bench.gemm_gflops
