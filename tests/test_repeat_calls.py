"""The public functions' repeated-call path (dispatch.Calls, Strategy.bound, _jit.SmallCall).

A call with the same shapes, dtypes and plain arguments as an earlier one skips the checks, the
resolution and the plan: these tests hold it to the slow path's results and errors, and to what
the cache key must notice (FASTCONV_METHOD, the registry, argument types).
"""

import dataclasses
import os
import subprocess
import sys

import numba
import numpy as np
import pytest

import fastconv
from fastconv import _jit, conv, pool, strategies

RNG = np.random.default_rng(7)


def _fresh():
    conv._calls.clear()
    pool._calls.clear()


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv("FASTCONV_METHOD", raising=False)
    _fresh()
    yield
    _fresh()


CONV_CASES = [  # (x shape, weight shape, kwargs): tiny (serial twins) and not, 1D and 2D, bias or not
    ((1, 1, 8, 8), (1, 1, 3, 3), {}),
    ((2, 3, 9, 7), (4, 3, 3, 2), {"padding": 1}),
    ((3, 9, 7), (6, 1, 1, 3), {"groups": 3, "padding": "same"}),
    ((2, 4, 30, 30), (6, 4, 3, 3), {"stride": 2, "dilation": 2}),
    ((2, 16, 20, 20), (16, 16, 3, 3), {"padding": 1}),
    ((2, 3, 50), (4, 3, 5), {"padding": 2}),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("x_shape, w_shape, kw", CONV_CASES)
@pytest.mark.parametrize("method", ["auto", "direct", "img2col"])
def test_repeated_convolutions_equal_the_checked_path(x_shape, w_shape, kw, method, with_bias, dtype):
    fn = fastconv.conv1d if len(w_shape) == 3 else fastconv.conv2d
    x = RNG.standard_normal(x_shape).astype(dtype)
    w = RNG.standard_normal(w_shape).astype(dtype)
    b = RNG.standard_normal(w_shape[0]).astype(dtype) if with_bias else None
    # tuple arguments and out= take the checked path every time: the reference
    tagged = {k: (v if isinstance(v, str) or k == "groups" else (v,) * (len(w_shape) - 2)) for k, v in kw.items()}
    expected = fn(x, w, b, **tagged, method=method)
    first = fn(x, w, b, **kw, method=method)
    assert len(conv._calls) == 1
    for _ in range(3):
        np.testing.assert_array_equal(fn(x, w, b, **kw, method=method), expected)
    np.testing.assert_array_equal(first, expected)
    x2 = RNG.standard_normal(x_shape).astype(dtype)  # new values, same shape: a new result
    np.testing.assert_array_equal(fn(x2, w, b, **kw, method=method), fn(x2, w, b, **tagged, method=method))
    into = np.empty_like(expected)
    assert fn(x, w, b, **kw, method=method, out=into) is into
    np.testing.assert_array_equal(into, expected)


POOL_CASES = [
    ((1, 1, 8, 8), dict(kernel_size=2)),
    ((2, 3, 9, 9), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ((2, 4, 64, 64), dict(kernel_size=2)),
    ((3, 40), dict(kernel_size=3, stride=1)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, kw", POOL_CASES)
@pytest.mark.parametrize("method", ["auto", "direct", "vectorized"])
def test_repeated_poolings_equal_the_checked_path(shape, kw, method, dtype):
    nd = len(shape) - 1 if len(shape) == 2 else len(shape) - 2
    max_pool = getattr(fastconv, f"max_pool{nd}d")
    avg_pool = getattr(fastconv, f"avg_pool{nd}d")
    x = RNG.standard_normal(shape).astype(dtype)
    x[..., 0] = np.nan  # NaN wins max pooling: the bound kernels keep PyTorch's rules
    tagged = {k: (v,) * nd if k in ("kernel_size", "stride", "padding") else v for k, v in kw.items()}
    want_max, want_idx = max_pool(x, **tagged, return_indices=True, method=method)
    want_avg = avg_pool(x, **tagged, method=method)
    for _ in range(3):
        got, idx = max_pool(x, **kw, return_indices=True, method=method)
        np.testing.assert_array_equal(got, want_max)
        np.testing.assert_array_equal(idx, want_idx)
        np.testing.assert_array_equal(max_pool(x, **kw, method=method), want_max)  # without indices: its own entry
        np.testing.assert_array_equal(avg_pool(x, **kw, method=method), want_avg)
    if nd == 2:
        want = avg_pool(x, **tagged, divisor_override=3, method=method)
        for _ in range(2):
            np.testing.assert_array_equal(avg_pool(x, **kw, divisor_override=3, method=method), want)


def test_read_only_inputs_take_the_repeated_path():
    x = RNG.standard_normal((1, 2, 8, 8)).astype(np.float32)
    w = RNG.standard_normal((3, 2, 3, 3)).astype(np.float32)
    expected_conv, expected_pool = fastconv.conv2d(x, w), fastconv.max_pool2d(x, 2)
    x.setflags(write=False)
    w.setflags(write=False)
    for _ in range(2):
        np.testing.assert_array_equal(fastconv.conv2d(x, w), expected_conv)
        np.testing.assert_array_equal(fastconv.max_pool2d(x, 2), expected_pool)


def test_argument_types_are_checked_after_a_cached_call():
    """2.0 == 2 and True == 1 as dict keys: a cached call must not let them skip their checks."""
    x = RNG.standard_normal((1, 2, 8, 8)).astype(np.float32)
    fastconv.max_pool2d(x, 2)
    fastconv.max_pool2d(x, 2)
    with pytest.raises(TypeError, match="max_pool2d: kernel_size"):
        fastconv.max_pool2d(x, 2.0)
    w = np.ones((1, 2, 3, 3), np.float32)
    fastconv.conv2d(x, w, stride=1)
    with pytest.raises(TypeError, match="conv2d: stride"):
        fastconv.conv2d(x, w, stride=1.0)
    with pytest.raises(TypeError, match="conv2d: stride"):
        fastconv.conv2d(x, w, stride=True)
    # ceil_mode=1 (an int) behaves as it does without a cache, whatever True did before
    fastconv.max_pool2d(x, 3, ceil_mode=True)
    try:
        cached = ("result", fastconv.max_pool2d(x, 3, ceil_mode=1))
    except (TypeError, ValueError) as exc:
        cached = ("error", type(exc))
    _fresh()
    try:
        fresh = ("result", fastconv.max_pool2d(x, 3, ceil_mode=1))
    except (TypeError, ValueError) as exc:
        fresh = ("error", type(exc))
    assert cached[0] == fresh[0]
    if cached[0] == "result":
        np.testing.assert_array_equal(cached[1], fresh[1])
    else:
        assert cached[1] is fresh[1]


def test_the_method_variable_and_the_registry_are_part_of_the_key(monkeypatch):
    x = RNG.standard_normal((1, 2, 8, 8)).astype(np.float32)
    w = RNG.standard_normal((3, 2, 3, 3)).astype(np.float32)
    fastconv.conv2d(x, w)
    fastconv.max_pool2d(x, 2)
    monkeypatch.setenv("FASTCONV_METHOD", "no-such-method")
    with pytest.raises(ValueError, match="FASTCONV_METHOD must be one of"):
        fastconv.conv2d(x, w)
    with pytest.raises(ValueError, match="FASTCONV_METHOD must be one of"):
        fastconv.max_pool2d(x, 2)
    monkeypatch.delenv("FASTCONV_METHOD")
    ran = []
    original = strategies.strategy("direct")
    recorded = {op: (lambda op, f: lambda *a: (ran.append(op), f(*a))[1])(op, f) for op, f in original.ops.items()}
    strategies.register(dataclasses.replace(original, ops=recorded, bind=None), replace=True)
    try:
        fastconv.conv2d(x, w, method="direct")
        fastconv.max_pool2d(x, 2, method="direct")
    finally:
        strategies.register(original, replace=True)
    assert ran == ["conv", "max_pool"]


def test_serial_twins_are_cached_under_their_own_name():
    from fastconv.strategies import _pool_kernels

    twin = _jit.serial(_pool_kernels._max_pool_kernel)
    assert twin is _jit.serial(_pool_kernels._max_pool_kernel)
    assert twin.py_func.__qualname__ == "_max_pool_kernel__serial"
    assert twin.py_func.__code__ is _pool_kernels._max_pool_kernel.py_func.__code__
    assert not twin.targetoptions.get("parallel")
    assert _jit.pick(_pool_kernels._max_pool_kernel, _jit.SERIAL_WORK - 1).__class__ is _jit.SmallCall
    assert _jit.pick(_pool_kernels._max_pool_kernel, _jit.SERIAL_WORK).__class__ is _jit.ParallelCall


GUARD_PROBE = """
import numpy as np
from fastconv import _jit
from fastconv.strategies import _pool_kernels
call = _jit.pick(_pool_kernels._global_avg_kernel, 1)
x = np.ones(8, np.float32); out = np.empty(2, np.float32)
call(x, out, 4, np.float32(4), 1)
call(x, out, 4, np.float32(4), 1)
assert out.tolist() == [1.0, 1.0], out
try:
    call(x.astype(np.float64), out.astype(np.float64), 4, np.float64(4), 1)
except TypeError as exc:
    print("refused:", exc)
"""


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="needs compiled kernels")
def test_a_small_call_checks_its_argument_types_under_bounds_checking(tmp_path):
    """A SmallCall calls the compiled entry point without typing its arguments: under NUMBA_BOUNDSCHECK
    (CI's checked pass) every call checks they have the first call's types."""
    env = {**os.environ, "NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", GUARD_PROBE], env=env, capture_output=True, text=True, check=True)
    assert "refused: _global_avg_kernel__serial: a SmallCall typed" in done.stdout, done.stdout + done.stderr


def test_tiny_calls_are_independent_of_the_thread_count():
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    w = RNG.standard_normal((2, 3, 3, 3)).astype(np.float32)
    results = []
    for n in (1, 2):
        with fastconv.num_threads(n):
            results.append((fastconv.conv2d(x, w, padding=1), fastconv.max_pool2d(x, 2), fastconv.avg_pool2d(x, 3)))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
