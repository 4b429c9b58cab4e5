"""The one definition of the geometry: output sizes and padding resolution."""

import math

import pytest
from hypothesis import given, strategies as st

import fastconv
from fastconv.geometry import conv_output_size, pool_output_size, resolve_padding, same_padding


def test_output_size_formula_examples():
    assert fastconv.conv_output_size(6, 3) == 4
    assert fastconv.conv_output_size(6, 3, padding=1) == 6
    assert fastconv.conv_output_size(6, 3, stride=2, padding=(0, 1)) == 3   # (6+1-3)//2+1
    assert fastconv.conv_output_size(6, 3, stride=2, padding=(1, 1)) == 3   # (6+2-3)//2+1
    assert fastconv.conv_output_size(7, 3, dilation=3) == 1
    assert fastconv.conv_output_size(2, 3) == 0


def test_resolve_padding_forms():
    r = fastconv.resolve_padding
    assert r(0, (5, 5), (3, 3), (1, 1), (1, 1)) == ((0, 0), (0, 0))
    assert r(2, (5, 5), (3, 3), (1, 1), (1, 1)) == ((2, 2), (2, 2))
    assert r((1, 2), (5, 5), (3, 3), (1, 1), (1, 1)) == ((1, 1), (2, 2))
    assert r(((0, 1), (2, 3)), (5, 5), (3, 3), (1, 1), (1, 1)) == ((0, 1), (2, 3))
    assert r("valid", (5, 5), (3, 3), (1, 1), (1, 1)) == ((0, 0), (0, 0))
    assert r("SAME", (5, 6), (3, 4), (1, 1), (1, 1)) == ((1, 1), (1, 2))


@given(n=st.integers(1, 60), k=st.integers(1, 9), s=st.integers(1, 6), d=st.integers(1, 3))
def test_same_padding_gives_ceil_n_over_s_outputs(n, k, s, d):
    lo, hi = same_padding(n, k, s, d)
    assert lo == (lo + hi) // 2 and hi - lo in (0, 1)
    p = max(s * (math.ceil(n / s) - 1) + d * (k - 1) + 1 - n, 0)
    assert lo + hi == p
    assert fastconv.conv_output_size(n, k, s, (lo, hi), d) == math.ceil(n / s)


def test_same_matches_pytorch_at_stride_1(torch):
    import numpy as np

    F = torch.nn.functional
    x = np.random.default_rng(0).standard_normal((1, 2, 7, 8))
    w = np.random.default_rng(1).standard_normal((3, 2, 4, 3))
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding="same", dilation=(2, 1)).numpy()
    np.testing.assert_allclose(fastconv.conv2d(x, w, padding="same", dilation=(2, 1)), ref, rtol=1e-12, atol=1e-12)


@given(n=st.integers(1, 40), k=st.integers(1, 6), s=st.integers(1, 5), d=st.integers(1, 3),
       ceil_mode=st.booleans(), data=st.data())
def test_pool_output_size_matches_pytorch_rule(n, k, s, d, ceil_mode, data):
    p = data.draw(st.integers(0, k // 2))
    span = d * (k - 1) + 1
    o = pool_output_size(n, k, s, p, d, ceil_mode)
    if n + 2 * p < span:
        assert o == 0
        return
    rounding = math.ceil if ceil_mode else math.floor
    expected = rounding((n + 2 * p - span) / s) + 1
    if ceil_mode and (expected - 1) * s >= n + p:
        expected -= 1
    assert o == expected
    # The last window starts inside the input or the left padding.
    assert (o - 1) * s - p < n


@pytest.mark.parametrize("bad", ["full", "SAME ", 1.5, -1, ((1, 2, 3),), [(0, -1)]])
def test_resolve_padding_rejects(bad):
    with pytest.raises((ValueError, TypeError), match="padding"):
        fastconv.resolve_padding(bad, (5,), (3,), (1,), (1,))


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: conv_output_size(6, 3, stride=0), ValueError, "conv_output_size: stride must be >= 1, got 0"),
        (lambda: conv_output_size(6, 3, padding=-2), ValueError, "conv_output_size: padding must be >= 0, got -2"),
        (lambda: conv_output_size(6, 3.5), TypeError, "conv_output_size: k must be an integer"),
        (lambda: pool_output_size(5, 2, 0, 0), ValueError, "pool_output_size: stride must be >= 1, got 0"),
        (lambda: same_padding(5, 0), ValueError, "same_padding: k must be >= 1, got 0"),
        (lambda: resolve_padding("same", (5, 5), (3,), (1,), (1,)), ValueError,
         "kernel_size must have one entry per spatial dimension of input_size"),
    ],
)
def test_public_geometry_rejects_bad_arguments(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_max_pool_backward_has_a_record_of_its_own():
    """Max pooling's backward is a scatter by indices: planes and sizes, no window that could lie."""
    from fastconv.geometry import ScatterGeometry, scatter_problem

    geom, shape = scatter_problem("f", 1, (2, 3, 10), (2, 3, 4), "float64")
    assert isinstance(geom, ScatterGeometry) and shape == (2, 3, 10)
    assert (geom.in_size, geom.out_size, geom.dtype) == ((1, 10), (1, 4), "float64")
    assert geom.input_shape == (2, 3, 1, 10) and geom.output_shape == (2, 3, 1, 4)
    assert not hasattr(geom, "kernel")
    assert scatter_problem("f", 3, (3, 4, 5, 6), (3, 2, 2, 3))[0].batch == 1  # unbatched
    assert geom.channels_last().layout == "channels_last" and geom.channels_last() is geom.channels_last()
    with pytest.raises(ValueError, match="f: grad_output must be the pooled output"):
        scatter_problem("f", 2, (2, 3, 8, 8), (2, 4, 4, 4))
    with pytest.raises(ValueError, match="f: input_shape must be"):
        scatter_problem("f", 2, (8, 8), (4, 4))
