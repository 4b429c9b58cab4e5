"""conv1d / conv2d: every strategy against the loop oracle and against PyTorch."""

import functools

import numpy as np
import pytest
from hypothesis import given

import fastconv
from conftest import FAST_METHODS, assert_close, torch_pad_list
from geometries import conv_cases

def loop_reference(case):
    """The oracle, computed in float64 from the same (rounded) input values."""
    b = None if case.bias is None else case.bias.astype(np.float64)
    return case.fn(case.x.astype(np.float64), case.weight.astype(np.float64), method="loop",
                   **{**case.kwargs(), "bias": b})


@pytest.mark.parametrize("method", FAST_METHODS)
@given(case=conv_cases())
def test_matches_loop(method, case):
    y = case.run(method)
    assert y.dtype == case.x.dtype
    assert_close(y, loop_reference(case).astype(y.dtype), y.dtype)


def torch_reference(torch, case):
    F = torch.nn.functional
    x = torch.from_numpy(case.x.astype(np.float64))
    unbatched = case.x.ndim == case.nd + 1
    if unbatched:
        x = x[None]
    x = F.pad(x, torch_pad_list(case.pads()))
    w = torch.from_numpy(case.weight.astype(np.float64))
    b = None if case.bias is None else torch.from_numpy(case.bias.astype(np.float64))
    conv = F.conv1d if case.nd == 1 else F.conv2d
    y = conv(x, w, b, case.stride, 0, case.dilation, case.groups).numpy()
    return y[0] if unbatched else y


@pytest.mark.torch
@pytest.mark.parametrize("method", ("loop",) + FAST_METHODS)
@given(case=conv_cases())
def test_matches_pytorch(torch, method, case):
    y = case.run(method)
    assert_close(y, torch_reference(torch, case).astype(y.dtype), y.dtype)


@pytest.mark.parametrize("method", FAST_METHODS)
def test_batch_and_unbatched_agree(method, rng):
    x = rng.standard_normal((3, 4, 10, 9))
    w = rng.standard_normal((6, 2, 3, 3))
    b = rng.standard_normal(6)
    batched = fastconv.conv2d(x, w, b, stride=(2, 1), padding="same", groups=2, method=method)
    for n in range(3):
        single = fastconv.conv2d(x[n], w, b, stride=(2, 1), padding="same", groups=2, method=method)
        np.testing.assert_allclose(single, batched[n], rtol=1e-12, atol=1e-12)


def _layouts(a):
    """The same values as ``a`` in other memory layouts: Fortran, strided, reversed, read-only."""
    fortran = np.asfortranarray(a)
    strided = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)[..., ::2]
    strided[...] = a
    reversed_ = np.ascontiguousarray(a[..., ::-1])[..., ::-1]
    readonly = a.copy()
    readonly.flags.writeable = False
    return {"fortran": fortran, "strided": strided, "negative": reversed_, "readonly": readonly}


@pytest.mark.parametrize("method", FAST_METHODS)
def test_any_layout_gives_the_contiguous_result(method, rng):
    x = rng.standard_normal((2, 3, 11, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 2)).astype(np.float32)
    expected = fastconv.conv2d(x, w, padding=1, method=method)
    for name, xl in _layouts(x).items():
        for wname, wl in _layouts(w).items():
            y = fastconv.conv2d(xl, wl, padding=1, method=method)
            np.testing.assert_array_equal(y, expected, err_msg=f"x {name}, weight {wname}")


@pytest.mark.parametrize("method", FAST_METHODS)
def test_inputs_are_not_modified(method, rng):
    x = rng.standard_normal((2, 4, 7, 7))
    w = rng.standard_normal((4, 2, 3, 3))
    b = rng.standard_normal(4)
    copies = [a.copy() for a in (x, w, b)]
    fastconv.conv2d(x, w, b, padding=((1, 2), (0, 1)), groups=2, method=method)
    for a, c in zip((x, w, b), copies):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize(
    "x_dtype, w_dtype, expected",
    [
        (np.float32, np.float32, np.float32),
        (np.float64, np.float64, np.float64),
        (np.float32, np.float64, np.float64),
        (np.int8, np.float32, np.float32),
        (np.int64, np.float32, np.float64),
        (np.uint8, np.uint8, np.float32),
        (np.float16, np.float16, np.float32),
        (np.bool_, np.float32, np.float32),
    ],
)
def test_result_dtype_follows_numpy_promotion(x_dtype, w_dtype, expected):
    x = np.arange(2 * 8 * 8).reshape(1, 2, 8, 8) % 5
    w = np.ones((3, 2, 3, 3))
    y = fastconv.conv2d(x.astype(x_dtype), w.astype(w_dtype))
    assert y.dtype == expected
    ref = fastconv.conv2d(x.astype(x_dtype).astype(np.float64), w.astype(w_dtype).astype(np.float64), method="loop")
    np.testing.assert_allclose(y, ref, rtol=1e-5)


def test_result_dtype_comes_from_input_and_weight_not_bias():
    x = np.arange(2 * 8 * 8, dtype=np.float32).reshape(1, 2, 8, 8) % 5
    w = np.ones((3, 2, 3, 3), np.float32)
    for bias in (np.array([0.5, 1.0, -2.0]), np.array([1, 2, 3], np.int64)):
        y = fastconv.conv2d(x, w, bias)
        assert y.dtype == np.float32
        np.testing.assert_allclose(y, fastconv.conv2d(x, w, bias.astype(np.float32)), rtol=0, atol=0)


@pytest.mark.parametrize("method", FAST_METHODS)
def test_empty_batch_gives_empty_result(method):
    y = fastconv.conv2d(np.zeros((0, 3, 8, 8), np.float32), np.zeros((5, 3, 3, 3), np.float32), padding=1, method=method)
    assert y.shape == (0, 5, 8, 8) and y.dtype == np.float32
    y1 = fastconv.conv1d(np.zeros((0, 2, 8)), np.zeros((4, 2, 3)), method=method)
    assert y1.shape == (0, 4, 6)


@pytest.mark.parametrize("method", FAST_METHODS)
def test_out_argument(method, rng):
    x = rng.standard_normal((2, 3, 9, 9))
    w = rng.standard_normal((4, 3, 3, 3))
    out = np.full((2, 4, 9, 9), np.nan)
    result = fastconv.conv2d(x, w, padding="same", method=method, out=out)
    assert result is out
    np.testing.assert_allclose(out, fastconv.conv2d(x, w, padding="same", method="loop"), rtol=1e-12, atol=1e-12)
    out1 = np.empty((4, 9, 9))  # unbatched
    fastconv.conv2d(x[0], w, padding="same", method=method, out=out1)
    np.testing.assert_allclose(out1, out[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", FAST_METHODS)
def test_nan_and_inf_propagate(method):
    x = np.ones((1, 1, 5, 5))
    x[0, 0, 2, 2] = np.nan
    x[0, 0, 0, 4] = np.inf
    y = fastconv.conv2d(x, np.ones((1, 1, 3, 3)), padding=1, method=method)
    ref = fastconv.conv2d(x, np.ones((1, 1, 3, 3)), padding=1, method="loop")
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(ref))
    assert np.isnan(y[0, 0, 1:4, 1:4]).all() and np.isinf(y[0, 0, 0, 4])


@functools.lru_cache(maxsize=None)
def _larger_problem(dtype):
    """Arrays of :func:`test_larger_problem_against_loop` and the loop's result on them (0.6 s: once per dtype)."""
    rng = np.random.default_rng(12345)
    x = rng.standard_normal((2, 10, 23, 37)).astype(dtype)
    w = rng.standard_normal((13, 10, 3, 3)).astype(dtype)
    b = rng.standard_normal(13).astype(dtype)
    ref = fastconv.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), padding=1, method="loop")
    return x, w, b, ref.astype(dtype)


@pytest.mark.parametrize("method", FAST_METHODS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_larger_problem_against_loop(method, dtype):
    # Big enough to cross the kernels' blocking boundaries: 13 output channels are a block of 8
    # and a padded block of 5 in direct, and the 23x37 output spans 4 column tiles.
    x, w, b, ref = _larger_problem(dtype)
    assert_close(fastconv.conv2d(x, w, b, padding=1, method=method), ref, dtype)
