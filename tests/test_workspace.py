"""The workspace cap: chunked computation gives the unchunked answer; the cap is settable."""

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
