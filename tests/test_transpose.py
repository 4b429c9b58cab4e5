"""Transposed convolution, 1D to 3D, forward and backward: every strategy against PyTorch, the loop
oracle and central differences; the nn layers against PyTorch's; bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastconv
from conftest import FAST_METHODS, ORACLE, assert_close, central_difference

METHODS = (ORACLE,) + FAST_METHODS


@st.composite
def cases(draw, nd=None, dtype=None):
    nd = draw(st.sampled_from([1, 2, 3])) if nd is None else nd
    dtype = draw(st.sampled_from([np.float32, np.float64])) if dtype is None else dtype
    groups = draw(st.sampled_from([1, 1, 2]))
    c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    size = tuple(draw(st.integers(1, 4 if nd == 3 else 6)) for _ in range(nd))
    full = [(n - 1) * s + d * (k - 1) + 1 for n, s, d, k in zip(size, stride, dilation, kernel)]
    if draw(st.booleans()):  # PyTorch's symmetric int padding
        padding = tuple(draw(st.integers(0, (f - 1) // 2)) for f in full)
    else:  # fastconv's (lo, hi) pairs
        padding = tuple((draw(st.integers(0, (f - 1) // 2)), draw(st.integers(0, (f - 1) // 2))) for f in full)
    batch = draw(st.integers(1, 2))
    unbatched = batch == 1 and draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal(((c_in,) if unbatched else (batch, c_in)) + size).astype(dtype)
    w = rng.standard_normal((c_in, c_out // groups) + kernel).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype) if draw(st.booleans()) else None
    return nd, x, w, b, dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups,
                             dilation=dilation)


def _torch_reference(torch, nd, x, w, b, kw):
    """PyTorch's result and gradients; (lo, hi) pairs as symmetric padding plus a crop."""
    F = torch.nn.functional
    pads = kw["padding"]
    pairs = [p if isinstance(p, tuple) else (p, p) for p in pads]
    tx = torch.from_numpy(x).requires_grad_(True)
    tw = torch.from_numpy(w).requires_grad_(True)
    tb = None if b is None else torch.from_numpy(b).requires_grad_(True)
    y = getattr(F, f"conv_transpose{nd}d")(tx, tw, tb, stride=kw["stride"], padding=0,
                                           output_padding=kw["output_padding"], groups=kw["groups"],
                                           dilation=kw["dilation"])
    index = (Ellipsis,) + tuple(slice(lo, y.shape[y.ndim - nd + i] - hi) for i, (lo, hi) in enumerate(pairs))
    return y[index], tx, tw, tb


@pytest.mark.torch
@pytest.mark.parametrize("method", METHODS)
@given(case=cases())
def test_matches_pytorch(torch, method, case):
    nd, x, w, b, kw = case
    ref, tx, tw, tb = _torch_reference(torch, nd, x, w, b, kw)
    y = getattr(fastconv, f"conv_transpose{nd}d")(x, w, b, **kw, method=method)
    assert y.dtype == x.dtype
    assert_close(y, ref.detach().numpy(), method=method)
    g = np.random.default_rng(1).standard_normal(y.shape).astype(y.dtype)
    ref.backward(torch.from_numpy(g))
    gx, gw, gb = getattr(fastconv, f"conv_transpose{nd}d_backward")(g, x, w, **kw, method=method)
    assert_close(gx, tx.grad.numpy(), method=method)
    assert_close(gw, tw.grad.numpy(), method=method)
    if b is not None:
        assert_close(gb, tb.grad.numpy(), method=method)


@pytest.mark.parametrize("method", FAST_METHODS)
@given(case=cases())
def test_matches_loop(method, case):
    nd, x, w, b, kw = case
    fn = getattr(fastconv, f"conv_transpose{nd}d")
    assert_close(fn(x, w, b, **kw, method=method), fn(x, w, b, **kw, method=ORACLE), method=method)


@pytest.mark.parametrize("method", METHODS)
def test_backward_matches_central_differences(method):
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((2, 2, 3, 4)), rng.standard_normal((2, 2, 3, 2)), rng.standard_normal(4)
    kw = dict(stride=(2, 1), padding=((1, 0), (0, 1)), output_padding=(1, 0), groups=2, dilation=(1, 2))
    g = rng.standard_normal(fastconv.conv_transpose2d(x, w, b, **kw).shape)

    def loss():
        return float((fastconv.conv_transpose2d(x, w, b, **kw, method=method) * g).sum())

    gx, gw, gb = fastconv.conv_transpose2d_backward(g, x, w, **kw, method=method)
    for analytic, wrt in ((gx, x), (gw, w), (gb, b)):
        np.testing.assert_allclose(analytic, central_difference(loss, wrt), rtol=1e-6, atol=1e-7)


def test_output_mask_and_empty_batch():
    x, w = np.ones((0, 2, 3, 3)), np.ones((2, 3, 2, 2))
    assert fastconv.conv_transpose2d(x, w, stride=2).shape == (0, 3, 6, 6)
    gx, gw, gb = fastconv.conv_transpose2d_backward(np.ones((0, 3, 6, 6)), x, w, stride=2)
    assert gx.shape == (0, 2, 3, 3) and not gw.any() and not gb.any()
    x = np.ones((1, 2, 3, 3))
    gx, gw, gb = fastconv.conv_transpose2d_backward(np.ones((1, 3, 6, 6)), x, w, stride=2,
                                                    output_mask=(False, True, False))
    assert gx is None and gb is None and gw.shape == w.shape


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(padding="same"), ValueError, "not defined for transposed convolution"),
    (dict(stride=2, output_padding=2), ValueError, "output_padding must be smaller than either stride or dilation"),
    (dict(output_padding=-1), ValueError, "output_padding must be >= 0"),
    (dict(padding=3), ValueError, "the output would be empty"),
    (dict(groups=3), ValueError, "groups=3 does not divide the 4 input channels"),
    (dict(stride=0), ValueError, "stride must be >= 1"),
    (dict(stride=1.5), TypeError, "stride must be an integer"),
    (dict(method="fourier"), ValueError, "method must be one of"),
])
def test_bad_arguments_are_named(kwargs, error, message):
    x, w = np.ones((1, 4, 3, 3)), np.ones((4, 2, 3, 3))
    with pytest.raises(error, match=message):
        fastconv.conv_transpose2d(x, w, **kwargs)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"conv_transpose2d: input has 4 channels but weight.shape\[0\]"):
        fastconv.conv_transpose2d(np.ones((1, 4, 3, 3)), np.ones((3, 2, 3, 3)))
    with pytest.raises(ValueError, match="conv_transpose2d: bias must have shape"):
        fastconv.conv_transpose2d(np.ones((1, 4, 3, 3)), np.ones((4, 2, 3, 3)), np.ones(3))
    with pytest.raises(ValueError, match="conv_transpose1d: x must be"):
        fastconv.conv_transpose1d(np.ones((1, 1, 4, 3, 3)), np.ones((4, 2, 3)))
    with pytest.raises(ValueError, match="grad_output must have the forward output's shape"):
        fastconv.conv_transpose2d_backward(np.ones((1, 2, 4, 4)), np.ones((1, 4, 3, 3)), np.ones((4, 2, 3, 3)))
    with pytest.raises(TypeError, match="x must hold real numbers"):
        fastconv.conv_transpose2d(np.ones((1, 4, 3, 3), complex), np.ones((4, 2, 3, 3)))


def test_inputs_are_not_modified():
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((1, 2, 4, 4)), rng.standard_normal((2, 3, 3, 3)), rng.standard_normal(3)
    copies = [a.copy() for a in (x, w, b)]
    y = fastconv.conv_transpose2d(x, w, b, stride=2, padding=1)
    fastconv.conv_transpose2d_backward(np.ones_like(y), x, w, stride=2, padding=1)
    for a, c in zip((x, w, b), copies):
        np.testing.assert_array_equal(a, c)


@pytest.mark.torch
@pytest.mark.parametrize("nd, args, kwargs", [
    (1, (4, 6, 4), dict(stride=2, padding=1)),
    (2, (4, 6, 3), dict(stride=2, padding=1, output_padding=1, groups=2)),
    (2, (2, 3, (2, 3)), dict(dilation=(2, 1), bias=False)),
    (3, (2, 4, 2), dict(stride=2)),
])
def test_layers_match_pytorch(torch, nd, args, kwargs):
    layer = getattr(fastconv.nn, f"ConvTranspose{nd}d")(*args, **kwargs, dtype=np.float64, rng=0)
    ref = getattr(torch.nn, f"ConvTranspose{nd}d")(*args, **kwargs).double()
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(layer.weight))
        if layer.bias is not None:
            ref.bias.copy_(torch.from_numpy(layer.bias))
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, args[0]) + (5,) * nd)
    tx = torch.from_numpy(x).requires_grad_(True)
    ty = ref(tx)
    y = layer(x)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-10)
    g = rng.standard_normal(y.shape)
    ty.backward(torch.from_numpy(g))
    np.testing.assert_allclose(layer.backward(g), tx.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(layer.grads["weight"], ref.weight.grad.numpy(), rtol=1e-10, atol=1e-10)
    bound = 1 / np.sqrt(ref.weight.shape[1] * np.prod(ref.weight.shape[2:]))  # PyTorch's fan_in
    assert layer.weight.shape == tuple(ref.weight.shape) and np.abs(layer.weight).max() <= bound
