"""Shared fixtures: the dtype -> tolerance table, PyTorch (optional), strategy lists.

Tolerances: every fast strategy is compared with an oracle computed in float64
from the *same* (already rounded) inputs. A float32 convolution output is a sum
of K = C_in/groups*kH*kW products of O(1) values, rounded once per add (or
reassociated by the JIT), so its error grows like sqrt(K) * 6e-8 * |terms|.
With K <= ~600 and |values| <= ~30 in these tests, errors stayed below 2e-5
in practice (found by experiment over thousands of hypothesis examples); the
float32 bounds below leave ~5x headroom. float64 is held to 1e-10.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from fastconv import strategies

# Hypothesis: 60 random geometries per property by default; fewer under NUMBA_BOUNDSCHECK=1
# (CI's second pass), where every kernel is compiled again with bounds checks.
settings.register_profile("default", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("boundscheck", max_examples=15, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("FASTCONV_HYPOTHESIS_PROFILE", "default"))

TOLERANCES = {
    np.dtype(np.float32): dict(rtol=1e-4, atol=1e-4),
    np.dtype(np.float64): dict(rtol=1e-10, atol=1e-10),
}

#: The strategies other than the oracle.
FAST_METHODS = tuple(m for m in strategies.NAMES if m != "loop")
#: The Numba strategies.
JIT_METHODS = ("direct", "img2col")


def tolerance(dtype):
    return TOLERANCES[np.dtype(dtype)]


def assert_close(actual, expected, dtype=None):
    dtype = np.dtype(dtype or actual.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_allclose(actual, expected, **tolerance(dtype))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def torch():
    """PyTorch, or a clean skip when it is not installed."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


def torch_pad_list(pads):
    """fastconv ``((lo, hi), ...)`` pairs -> ``F.pad``'s list (last dimension first)."""
    out = []
    for lo, hi in reversed(pads):
        out += [lo, hi]
    return out
