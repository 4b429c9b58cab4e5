"""Shared fixtures: tolerances and strategy lists from the registry, PyTorch (optional).

Tolerances: every fast strategy is compared with an oracle computed in float64 from the
*same* (already rounded) inputs. Each strategy states its tolerance per dtype in its
registry record (``fastconv.strategies.Strategy.tolerance``; the default table,
``strategies.DEFAULT_TOLERANCE``, says how it was chosen): :func:`tolerance` reads it.
"""

from __future__ import annotations

import os
import threading

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

#: The reference strategy (the readable loop), which the others are tested against.
ORACLE = next(m for m in strategies.names() if strategies.strategy(m).reference)
#: The general strategies other than the oracle: each implements the six basic ops for every
#: problem of ranks 2 and 3, so the shared tests run them on any geometry they draw.
_BASIC_OPS = {"conv", "conv_backward", "max_pool", "max_pool_backward", "avg_pool", "avg_pool_backward"}
FAST_METHODS = tuple(m for m in strategies.names() if m != ORACLE and _BASIC_OPS <= set(strategies.strategy(m).ops)
                     and set(strategies.strategy(m).ranks) == {2, 3}
                     and strategies.strategy(m).supports is strategies.Strategy.supports)
#: Strategies that compute only some problems (``Strategy.supports``, a few ops or ranks): tested on
#: the problems they accept (tests/test_conv.py, and a test file of their own).
PARTIAL_METHODS = tuple(m for m in strategies.names() if m != ORACLE and m not in FAST_METHODS)
#: The strategies ``auto`` may choose (the Numba kernels and the NumPy one).
AUTO_METHODS = tuple(m for m in strategies.names() if strategies.strategy(m).automatic)
#: The Numba strategies (their modules compile kernels).
JIT_METHODS = ("direct", "img2col")


def host_has(*features) -> bool:
    """Whether this machine's CPU has every one of ``features`` (LLVM's names: 'avx2', 'avx512f', ...)."""
    try:
        from llvmlite import binding

        host = binding.get_host_cpu_features()
    except Exception:  # noqa: BLE001 - no feature list: treat as unknown
        return False
    return all(host.get(f, False) for f in features)


def tolerance(dtype, method=None):
    """``dict(rtol=, atol=)`` for ``method``'s results in ``dtype`` (the registry's table; the
    strictest entry when no method is named)."""
    name = np.dtype(dtype).name
    if method is not None:
        rtol, atol = strategies.strategy(method).tolerance[name]
    else:
        rtol, atol = strategies.DEFAULT_TOLERANCE[name]
    return dict(rtol=rtol, atol=atol)


def central_difference(loss, x, eps=1e-6):
    """d loss() / d x by central differences, one element of ``x`` (float64, changed in place and restored) at a time."""
    grad = np.zeros_like(x)
    for i in range(x.size):
        old = x.flat[i]
        x.flat[i] = old + eps
        up = loss()
        x.flat[i] = old - eps
        down = loss()
        x.flat[i] = old
        grad.flat[i] = (up - down) / (2 * eps)
    return grad


def in_threads(work, count=8, rounds=5):
    """Run ``work()`` ``rounds`` times in each of ``count`` Python threads started together; re-raise the
    first failure (the concurrency tests: kernels launched from several threads at once)."""
    errors, barrier = [], threading.Barrier(count)

    def run():
        try:
            barrier.wait()
            for _ in range(rounds):
                work()
        except Exception as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def assert_close(actual, expected, dtype=None, method=None):
    dtype = np.dtype(dtype or actual.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_allclose(actual, expected, **tolerance(dtype, method))


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
