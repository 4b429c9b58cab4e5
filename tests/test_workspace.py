"""The workspace cap: chunked computation gives the unchunked answer; the cap is settable."""

import subprocess
import sys

import numpy as np
import pytest

import fastconv
from conftest import FAST_METHODS
from fastconv import workspace


@pytest.fixture
def limit():
    saved = workspace.get_workspace_limit()
    yield workspace.set_workspace_limit
    workspace.set_workspace_limit(saved)


@pytest.mark.parametrize("method", FAST_METHODS)
@pytest.mark.parametrize("cap", [1, 3000, 40_000])
def test_chunks_give_the_unchunked_result(method, cap, limit):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 13, 10))
    w = rng.standard_normal((6, 2, 3, 3))
    b = rng.standard_normal(6)
    kw = dict(stride=(2, 1), padding=((1, 2), (1, 0)), dilation=(1, 2), groups=2)
    y = fastconv.conv2d(x, w, b, **kw, method=method)
    gy = rng.standard_normal(y.shape)
    grads = fastconv.conv2d_backward(gy, x, w, **kw, method=method)
    limit(cap)
    np.testing.assert_allclose(fastconv.conv2d(x, w, b, **kw, method=method), y, rtol=1e-12, atol=1e-12)
    for g, ref in zip(fastconv.conv2d_backward(gy, x, w, **kw, method=method), grads):
        np.testing.assert_allclose(g, ref, rtol=1e-12, atol=1e-12)


def test_limit_validation(limit):
    with pytest.raises(ValueError, match="set_workspace_limit: nbytes must be >= 1"):
        limit(0)
    with pytest.raises(TypeError, match="set_workspace_limit: nbytes must be an int"):
        limit(1.5)


@pytest.mark.parametrize("text, value", [("512M", 512 << 20), ("2G", 2 << 30), ("1GiB", 1 << 30), ("4096", 4096)])
def test_limit_from_environment_syntax(text, value):
    assert workspace._parse(text) == value
    with pytest.raises(ValueError, match="FASTCONV_WORKSPACE_LIMIT"):
        workspace._parse("lots")


PEAK_MEMORY_SCRIPT = """
import resource, numpy as np, fastconv
x = np.ones((16, 64, 224, 224), np.float32)          # 196 MiB
w = np.ones((3, 64, 9, 9), np.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
y = fastconv.conv2d(x, w)                            # method="auto"
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert y.shape == (16, 3, 216, 216) and float(y[0, 0, 0, 0]) == 64 * 81, y[0, 0, 0, 0]
ran = sorted({name for name, _ in fastconv.dispatch._resolved.values()})  # what the call itself resolved to
print(fastconv.explain("conv2d", x, w).method, before // 1024, after // 1024, ",".join(ran))
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
def test_large_kernel_layer_stays_under_3_gib():
    # issue 5: the 16x64x224x224 / 9x9 / 3-output layer that made PyTorch's CPU path use 16 GB;
    # its im2col matrix alone would be 15 GiB. Peak resident memory of a fresh process, in MiB.
    done = subprocess.run([sys.executable, "-c", PEAK_MEMORY_SCRIPT], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    method, _, peak, ran = done.stdout.split()
    # Typically 360-400 MiB. Two of seven fresh-clone CI runs on 2026-12-05 (Zen 4) measured 2114 and
    # 2124 MiB with the call resolved to direct, which no local run reproduced (cause not found yet):
    # the bound stays far below the 15 GiB im2col matrix and PyTorch's 16 GB while that is open.
    assert int(peak) < 3072, f"peak resident memory {peak} MiB with {method} (the call ran {ran})"
