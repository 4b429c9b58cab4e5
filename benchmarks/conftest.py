"""pytest-benchmark setup: 2 threads for everyone, the np.matmul reference once per session."""

import numpy as np
import pytest

from fastconv import bench, shapes
from fastconv.threads import num_threads

THREADS = 2


@pytest.fixture(scope="session", autouse=True)
def pinned_threads():
    torch = bench.torch_or_none()
    if torch is not None:
        torch.set_num_threads(THREADS)
    with num_threads(THREADS):
        yield


@pytest.fixture(scope="session")
def gemm_gflops(pinned_threads):
    flops = np.median([p.flops() for p in shapes.SHAPES.values() if p.is_conv])
    return bench.gemm_gflops(float(flops))
