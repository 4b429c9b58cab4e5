"""Channels-last memory for conv2d, the channels-last register-tiled kernel, and dL/dx through phases.

* ``conv2d`` on ``(N, C, H, W)`` arrays over ``N, H, W, C`` memory (and unbatched ``(C, H, W)``
  over ``H, W, C``): the values of the NCHW call for every method, the result in channels-last
  memory, the input neither changed nor written (it is read-only);
* the channels-last tile kernel (``_simd_direct.conv2d``) really runs for supported geometries
  (``method='direct'`` and ``'auto'``), not for NCHW input, and agrees with the planar kernel;
* ``explain()`` on channels-last input;
* direct's dL/dx as one stride-1 convolution per phase (``_simd_direct.input_gradient``) against
  PyTorch autograd (or the loop oracle), zero-filled phases, negative phase padding, and
  ``conv_transpose2d(method='direct')`` through the same path.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
from conftest import ORACLE, assert_close, torch_pad_list
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import _simd, workspace
from fastconv.geometry import conv_problem
from fastconv.strategies import _simd_direct

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the loop oracle is the reference then
    torch = None

DTYPES = (np.float32, np.float64)
#: Methods compared on every drawn geometry ('loop' too when the problem is tiny).
METHODS = ("auto", "direct", "img2col", "vectorized")
#: The loop oracle runs when a problem has at most this many multiply-adds (~0.3 us each).
LOOP_MAX_MACS = 40_000

needs_simd = pytest.mark.skipif(not _simd.AVAILABLE, reason=f"no explicit-SIMD layer here: {_simd.REASON}")
# Hypothesis: the profile's example count (conftest: 60, 15 under NUMBA_BOUNDSCHECK=1), no deadline
# (the first examples compile kernels).
HYPOTHESIS = settings(deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# --------------------------------------------------------------------------- helpers


def channels_last(x):
    """``x`` (``(N, C, H, W)`` or ``(C, H, W)``) with the same values over channels-last memory, read-only.

    Returns the view the tests pass to fastconv (what ``x_nhwc.transpose(0, 3, 1, 2)`` gives); its
    base, the ``N, H, W, C`` buffer, is made read-only first, so no path can write into it.
    """
    base = np.ascontiguousarray(np.moveaxis(x, -3, -1))
    base.flags.writeable = False
    view = np.moveaxis(base, -1, -3)
    assert view.base is base and not view.flags.writeable
    return view


def is_channels_last(y) -> bool:
    """Whether ``y`` (``(N, C, H, W)`` or ``(C, H, W)``) lies in channels-last memory."""
    return np.moveaxis(y, -3, -1).flags.c_contiguous


def macs(geom) -> int:
    """Multiply-adds of a convolution problem."""
    return geom.flops // 2


def reference_conv(x, w, b, stride=1, padding=0, dilation=1, groups=1):
    """conv2d in float64 from the same values: PyTorch if installed, else the loop oracle (or, on larger
    problems, the NumPy strategy)."""
    x64 = np.asarray(x, np.float64)
    w64 = np.asarray(w, np.float64)
    b64 = None if b is None else np.asarray(b, np.float64)
    x4 = x64 if x64.ndim == 4 else x64[None]
    if torch is None:  # the loop on small problems; NumPy's strategy (no Numba) on larger ones
        geom = _geometry(x4.shape, w64.shape, stride, padding, dilation, groups, np.float64)
        method = ORACLE if macs(geom) <= LOOP_MAX_MACS else "vectorized"
        y = fastconv.conv2d(x4, w64, b64, stride, padding, dilation, groups, method=method)
    else:
        pads = fastconv.resolve_padding(padding, x4.shape[2:], w64.shape[2:], _pair(stride), _pair(dilation))
        xt = F.pad(torch.from_numpy(x4), torch_pad_list(pads))
        y = F.conv2d(xt, torch.from_numpy(w64), None if b64 is None else torch.from_numpy(b64),
                     stride=stride, dilation=dilation, groups=groups).numpy()
    return y if x64.ndim == 4 else y[0]


def reference_grad_input(gy, x, w, stride=1, padding=0, dilation=1, groups=1):
    """dL/dx in float64: PyTorch autograd if installed, else the loop oracle's conv2d_backward (the NumPy
    strategy's on larger problems)."""
    if torch is None:
        geom = _geometry(x.shape, w.shape, stride, padding, dilation, groups, np.float64)
        method = ORACLE if macs(geom) <= LOOP_MAX_MACS else "vectorized"
        return fastconv.conv2d_backward(np.asarray(gy, np.float64), np.asarray(x, np.float64),
                                        np.asarray(w, np.float64), stride, padding, dilation, groups,
                                        method=method, output_mask=(True, False, False))[0]
    pads = fastconv.resolve_padding(padding, x.shape[2:], w.shape[2:], _pair(stride), _pair(dilation))
    xt = torch.from_numpy(np.array(x, np.float64)).requires_grad_()
    y = F.conv2d(F.pad(xt, torch_pad_list(pads)), torch.from_numpy(np.asarray(w, np.float64)), stride=stride,
                 dilation=dilation, groups=groups)
    y.backward(torch.from_numpy(np.asarray(gy, np.float64)))
    return xt.grad.numpy()


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _geometry(x_shape, w_shape, stride, padding, dilation, groups, dtype):
    geom, _ = conv_problem("conv2d", 2, tuple(x_shape), tuple(w_shape), None, stride, padding, dilation, groups,
                           np.dtype(dtype).name)
    return geom


# --------------------------------------------------------------------------- 1. every method, any geometry


def _axis_size(draw, padding_lo_hi, k, d):
    """An input length that gives at least one output with the axis' padding (None: 'same')."""
    if padding_lo_hi is None:
        return draw(st.integers(1, 12))
    need = max(1, d * (k - 1) + 1 - sum(padding_lo_hi))
    return draw(st.integers(need, need + 9))


@st.composite
def conv_cases(draw):
    """A conv2d call: batch 1-3 or unbatched, 2-40 channels, kernel 1-5, stride 1-3, dilation 1-2,
    padding int / per-axis ints / (lo, hi) pairs / 'same' / 'valid', mixed input dtypes, bias or not."""
    groups = draw(st.sampled_from((1, 1, 1, 2, 3, 4)))
    cg = draw(st.integers(1, 40 // groups))
    if cg * groups < 2:  # one channel is C-contiguous and channels-last at once: not the case under test
        cg = 2
    # half the time 16+ output channels per group (where possible): the tile kernel's range
    cog = draw(st.integers(1, 40 // groups) | st.integers(min(16, 40 // groups), 40 // groups))
    kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    kind = draw(st.sampled_from(("int", "ints", "pairs", "same", "valid")))
    if kind == "int":
        padding = draw(st.integers(0, 2))
        pads = ((padding, padding),) * 2
    elif kind == "ints":
        padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
        pads = tuple((p, p) for p in padding)
    elif kind == "pairs":
        padding = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(2))
        pads = padding
    elif kind == "same":
        padding, pads = "same", (None, None)
    else:
        padding, pads = "valid", ((0, 0), (0, 0))
    H = _axis_size(draw, pads[0], kernel[0], dilation[0])
    W = _axis_size(draw, pads[1], kernel[1], dilation[1])
    if H * W == 1:  # a 1x1 image is C-contiguous and channels-last at once
        W = 2
    x_dtype = draw(st.sampled_from(("float32", "float64", "float32", "float64", "int16", "int64")))
    w_dtype = x_dtype if x_dtype.startswith("float") and draw(st.booleans()) else draw(st.sampled_from(DTYPES))
    return dict(seed=draw(st.integers(0, 2**32 - 1)), batch=draw(st.sampled_from((None, 1, 2, 3))), groups=groups,
                in_channels=cg * groups, out_channels=cog * groups, size=(H, W), kernel=kernel, stride=stride,
                dilation=dilation, padding=padding, x_dtype=np.dtype(x_dtype), w_dtype=np.dtype(w_dtype),
                bias=draw(st.booleans()))


def _arrays(case):
    rng = np.random.default_rng(case["seed"])
    shape = ((case["batch"],) if case["batch"] is not None else ()) + (case["in_channels"],) + case["size"]
    if case["x_dtype"].kind == "i":
        x = rng.integers(-3, 4, size=shape).astype(case["x_dtype"])
    else:
        x = rng.standard_normal(shape).astype(case["x_dtype"])
    w = rng.standard_normal((case["out_channels"], case["in_channels"] // case["groups"])
                            + case["kernel"]).astype(case["w_dtype"])
    b = rng.standard_normal(case["out_channels"]).astype(case["w_dtype"]) if case["bias"] else None
    return x, w, b


def _check_every_method(case):
    x, w, b = _arrays(case)
    kw = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"], groups=case["groups"])
    x_cl = channels_last(x)
    assert not x_cl.flags.c_contiguous and is_channels_last(x_cl)
    before = x_cl.copy()
    dtype = np.result_type(x, w, np.float32)
    x4 = x if x.ndim == 4 else x[None]
    geom = _geometry(x4.shape, w.shape, case["stride"], case["padding"], case["dilation"], case["groups"], dtype)
    methods = METHODS + (("loop",) if macs(geom) <= LOOP_MAX_MACS else ())
    oracle = reference_conv(x, w, b, **kw)
    for method in methods:
        y = fastconv.conv2d(x_cl, w, b, **kw, method=method)
        expected = fastconv.conv2d(np.ascontiguousarray(x), w, b, **kw, method=method)
        assert y.dtype == dtype == expected.dtype, (method, y.dtype, expected.dtype)
        assert y.shape == expected.shape == oracle.shape, (method, y.shape, expected.shape, oracle.shape)
        assert is_channels_last(y), (method, y.strides)
        assert_close(y, expected, dtype, None if method == "auto" else method)
        assert_close(y, oracle, dtype, None if method == "auto" else method)
        np.testing.assert_array_equal(x_cl, before)
    return _simd_direct.supports(geom)


def test_channels_last_equals_nchw_for_every_method():
    """conv2d on a read-only channels-last input gives the NCHW call's values (and the float64
    reference's) for auto, direct, img2col, vectorized and, on tiny problems, loop, over random geometries
    (some in the tile kernel's range, some not); the result has the right shape and dtype, lies in
    channels-last memory, and the input is unchanged."""
    counts = [0, 0]

    @HYPOTHESIS
    @given(case=conv_cases())
    def check(case):
        supported = _check_every_method(case)
        counts[0] += 1
        counts[1] += supported

    check()
    print(f"channels-last tile kernel's geometries: {counts[1]} of {counts[0]}")
    if _simd.AVAILABLE:
        assert counts[1] >= 1, counts


def test_channels_last_with_out_uses_the_nchw_path():
    """With out= given, a channels-last input is computed into the (C-contiguous) out, for every
    method, with the values of the NCHW call; the input is unchanged."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 24, 7, 9)).astype(np.float32)
    w = rng.standard_normal((32, 24, 3, 3)).astype(np.float32)
    x_cl = channels_last(x)
    expected = reference_conv(x, w, None, 2, 1, 1, 1)
    for method in METHODS:
        out = np.full(expected.shape, np.nan, np.float32)
        y = fastconv.conv2d(x_cl, w, stride=2, padding=1, method=method, out=out)
        assert y is out and out.flags.c_contiguous
        assert_close(out, expected, np.float32, None if method == "auto" else method)
    np.testing.assert_array_equal(x_cl, x)


def test_channels_last_empty_batch():
    """An empty batch in channels-last memory gives an empty result of the right shape and dtype."""
    x = np.zeros((0, 5, 5, 8), np.float32).transpose(0, 3, 1, 2)
    w = np.ones((16, 8, 3, 3), np.float32)
    for method in METHODS:
        y = fastconv.conv2d(x, w, padding=1, method=method)
        assert y.shape == (0, 16, 5, 5) and y.dtype == np.float32


# --------------------------------------------------------------------------- 2. the channels-last tile kernel


def _tile_rows(dtype):
    return _simd_direct.tile_kernel(dtype)[2]


def _tile_block(dtype):
    _, lanes, _, vectors = _simd_direct.tile_kernel(dtype)
    return lanes * vectors


def _tile_cases(dtype):
    """Geometries the channels-last tile kernel runs: (name, x shape, w shape, conv2d keywords).

    Sized from this CPU's tile: output channels per group at and around a block, one below it
    (but at least half a block), and inputs whose flat output positions are exactly a tile's rows
    (read in place) or one fewer (packed).
    """
    block, rows = _tile_block(dtype), _tile_rows(dtype)
    half = block // 2
    return [
        ("in-place", (2, 16, 6, 11), (block + 3, 16, 3, 3), dict()),
        ("in-place-exactly-a-tile", (1, 8, 3, rows + 2), (block, 8, 3, 3), dict()),
        ("packed-one-short-of-a-tile", (1, 8, 3, rows + 1), (block, 8, 3, 3), dict()),
        ("in-place-dilated", (2, 12, 9, 10), (2 * block - 1, 12, 2, 3), dict(dilation=(2, 1))),
        ("padded", (3, 16, 7, 7), (half, 16, 3, 3), dict(padding=1)),
        ("strided-asymmetric", (2, 4, 13, 12), (block + half + 1, 4, 5, 4),
         dict(stride=(3, 2), padding=((2, 0), (1, 2)))),
        ("groups", (2, 24, 8, 9), (3 * (half + 2), 8, 3, 3), dict(groups=3, padding=((0, 1), (1, 0)))),
        ("same-stride-2", (1, 32, 9, 10), (block * 2, 32, 3, 3), dict(stride=2, padding="same")),
        ("1x1-strided", (2, 40, 6, 7), (block, 40, 1, 1), dict(stride=2)),
        ("dilated-padded-unbatched", (20, 8, 9), (half + 5, 20, 3, 2), dict(dilation=2, padding=(2, 1))),
    ]


def _tile_case(name, dtype):
    return next(case for case in _tile_cases(dtype) if case[0] == name)


_TILE_NAMES = [case[0] for case in _tile_cases(np.float32)] if _simd.AVAILABLE else ["in-place"]


def _spy_tile_kernel(monkeypatch):
    """Replace _simd_direct.conv2d with a wrapper that records (geometry, channels-last x, channels-last out)."""
    calls = []
    real = _simd_direct.conv2d

    def spy(x, weight, bias, geom, out, *args, **kwargs):
        calls.append((geom, is_channels_last(x), is_channels_last(out)))
        return real(x, weight, bias, geom, out, *args, **kwargs)

    monkeypatch.setattr(_simd_direct, "conv2d", spy)
    return calls


@needs_simd
@pytest.mark.parametrize("bias", (True, False), ids=("bias", "no-bias"))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", _TILE_NAMES)
def test_tile_kernel_runs_and_matches(name, dtype, bias, monkeypatch):
    """On supported geometries (in place, packed, groups, strides, dilations, asymmetric padding,
    channel counts off the block) conv2d(method='direct'/'auto') on channels-last input runs the
    channels-last tile kernel once and matches the NCHW planar result and the float64 reference;
    NCHW input never reaches that kernel."""
    _, x_shape, w_shape, kw = _tile_case(name, dtype)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype) if bias else None
    x4 = x if x.ndim == 4 else x[None]
    geom = _geometry(x4.shape, w.shape, kw.get("stride", 1), kw.get("padding", 0), kw.get("dilation", 1),
                     kw.get("groups", 1), dtype)
    assert _simd_direct.supports(geom)
    if name.startswith("in-place"):
        assert _simd_direct._plan(geom.channels_last(), workspace.get_workspace_limit()).in_place
    if name.startswith("packed"):
        assert not _simd_direct._plan(geom.channels_last(), workspace.get_workspace_limit()).in_place
    oracle = reference_conv(x, w, b, kw.get("stride", 1), kw.get("padding", 0), kw.get("dilation", 1),
                            kw.get("groups", 1))
    planar = None
    if _simd_direct.planar_supports(geom):  # the NCHW register-tiled result, computed directly
        planar = np.full(geom.output_shape, np.nan, dtype)
        _simd_direct.conv2d_planar(np.ascontiguousarray(x4), w, b, geom, planar)
        planar = planar if x.ndim == 4 else planar[0]
    calls = _spy_tile_kernel(monkeypatch)
    x_cl = channels_last(x)
    for method in ("direct", "auto"):
        calls.clear()
        y = fastconv.conv2d(x_cl, w, b, **kw, method=method)
        assert calls == [(geom.channels_last(), True, True)], (method, calls)
        assert is_channels_last(y) and y.shape == oracle.shape
        assert not np.isnan(y).any()
        assert_close(y, oracle, dtype, "direct")
        if planar is not None:
            assert_close(y, planar, dtype, "direct")
    calls.clear()
    y_nchw = fastconv.conv2d(np.ascontiguousarray(x), w, b, **kw, method="direct")
    assert calls == []
    assert_close(y_nchw, oracle, dtype, "direct")
    np.testing.assert_array_equal(x_cl, x)


@needs_simd
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", ("strided-asymmetric", "in-place"))
def test_tile_kernel_under_a_small_workspace_cap(name, dtype, monkeypatch):
    """With a workspace cap of about two packed images, a batch of 3 still runs through the tile kernel
    and every image of the result matches the reference: packed, in chunks of 2 + 1 images; read in
    place (nothing to pack), all of it."""
    _, x_shape, w_shape, kw = _tile_case(name, dtype)
    x_shape = (3,) + x_shape[1:]
    rng = np.random.default_rng(21)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    stride, padding = kw.get("stride", 1), kw.get("padding", 0)
    geom = _geometry(x.shape, w.shape, stride, padding, 1, 1, dtype).channels_last()
    saved = workspace.get_workspace_limit()
    try:
        plan = _simd_direct._plan(geom, saved)
        per_image = plan.pixels * geom.in_channels * np.dtype(dtype).itemsize
        workspace.set_workspace_limit(2 * per_image + 1)
        assert _simd_direct.supports(geom)
        small = _simd_direct._plan(geom, workspace.get_workspace_limit())
        assert small.in_place == (name == "in-place")
        if not small.in_place:
            assert small.images == 2
        calls = _spy_tile_kernel(monkeypatch)
        y = fastconv.conv2d(channels_last(x), w, b, **kw, method="direct")
    finally:
        workspace.set_workspace_limit(saved)
    assert len(calls) == 1
    assert is_channels_last(y)
    expected = reference_conv(x, w, b, stride, padding)
    for n in range(3):
        assert_close(y[n], expected[n], dtype, "direct")


@needs_simd
def test_unsupported_channels_last_geometry_falls_back(monkeypatch):
    """Too few output channels for the tile kernel: direct does not call it on channels-last input,
    and the result is still right and channels-last."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 16, 8, 8)).astype(np.float32)
    w = rng.standard_normal((3, 16, 3, 3)).astype(np.float32)
    assert not _simd_direct.supports(_geometry(x.shape, w.shape, 1, 1, 1, 1, np.float32))
    calls = _spy_tile_kernel(monkeypatch)
    y = fastconv.conv2d(channels_last(x), w, padding=1, method="direct")
    assert calls == []
    assert is_channels_last(y)
    assert_close(y, reference_conv(x, w, None, 1, 1, 1, 1), np.float32, "direct")


# --------------------------------------------------------------------------- 3. explain


def test_explain_channels_last():
    """explain() on a channels-last array names direct, says why (channels-last) and prints the memory
    line, even for a layer the rules send to img2col in NCHW; the NCHW array of the same shape gets
    the rules' choice for the shape, without the memory line. Under precision "highest" (under "high"
    these 3x3 layers go to Winograd, which reads channels-last memory too: tests/test_winograd.py)."""
    for c_out in (32, 256):  # 256 outputs: the rules pick a GEMM for NCHW
        x = np.zeros((1, 64, 14, 14), np.float32)
        w = np.zeros((c_out, 64, 3, 3), np.float32)
        with fastconv.precision("highest"):
            e = fastconv.explain("conv2d", channels_last(x), w, padding=1)
        assert e.method == "direct"
        assert "channels-last" in e.reason
        assert e.geometry.layout == "channels_last"
        assert "memory: channels-last" in str(e)
        with fastconv.precision("highest"):
            plain = fastconv.explain("conv2d", x, w, padding=1)
            assert plain.method == fastconv.explain("conv2d", x.shape, w.shape, padding=1).method
        assert plain.geometry.layout == "channels_first"
        assert "channels-last" not in plain.reason and "memory: channels-last" not in str(plain)
        # what explain says is what auto runs
        geom = _geometry(x.shape, w.shape, 1, 1, 1, 1, np.float32)
        with fastconv.precision("highest"):
            assert fastconv.dispatch.choose_method("conv", geom.channels_last(), np.float32) == "direct"


# --------------------------------------------------------------------------- 4. dL/dx through phases


@st.composite
def gradient_cases(draw):
    """A conv2d whose dL/dx the phase path usually takes: 8-24 inputs and 16-48 outputs per group."""
    groups = draw(st.sampled_from((1, 1, 2)))
    kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    if draw(st.booleans()):
        p = draw(st.integers(0, 2))
        padding, pads = p, ((p, p), (p, p))
    else:
        padding = pads = tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(2))
    size = tuple(draw(st.integers(max(1, d * (k - 1) + 1 - lo - hi), max(1, d * (k - 1) + 1 - lo - hi) + 8))
                 for k, d, (lo, hi) in zip(kernel, dilation, pads))
    return dict(seed=draw(st.integers(0, 2**32 - 1)), batch=draw(st.integers(1, 2)), groups=groups,
                cg=draw(st.integers(16, 32)), cog=draw(st.integers(16, 48)), size=size, kernel=kernel,
                stride=stride, dilation=dilation, padding=padding)


def _check_grad_input(x, w, gy, kw):
    gx, gw, gb = fastconv.conv2d_backward(gy, x, w, **kw, method="direct", output_mask=(True, False, False))
    assert gw is None and gb is None
    assert gx.shape == x.shape and gx.dtype == np.float64
    assert_close(gx, reference_grad_input(gy, x, w, **kw), np.float64, "direct")


def test_input_gradient_through_phases(monkeypatch):
    """direct's dL/dx (float64) equals PyTorch autograd's (or the loop's) on random strides,
    dilations, kernels, paddings (asymmetric too) and groups; the phase path (_simd_direct.input_gradient)
    is taken exactly when input_gradient_problems says so, and for most drawn geometries."""
    taken = []
    real = _simd_direct.input_gradient

    def spy(grad_out, weight, geom, grad_x):
        ran = real(grad_out, weight, geom, grad_x)
        taken.append((geom, ran))
        return ran

    monkeypatch.setattr(_simd_direct, "input_gradient", spy)

    @HYPOTHESIS
    @given(case=gradient_cases())
    def check(case):
        rng = np.random.default_rng(case["seed"])
        G = case["groups"]
        x = rng.standard_normal((case["batch"], G * case["cg"]) + case["size"])
        w = rng.standard_normal((G * case["cog"], case["cg"]) + case["kernel"])
        kw = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"], groups=G)
        geom = _geometry(x.shape, w.shape, *kw.values(), np.float64)
        gy = rng.standard_normal(geom.output_shape)
        taken.clear()
        _check_grad_input(x, w, gy, kw)
        assert len(taken) == 1 and taken[0][0] == geom
        predicted = _simd.AVAILABLE and _simd_direct.input_gradient_problems(geom) is not None
        assert taken[0][1] == predicted
        counts[0] += 1
        counts[1] += predicted

    counts = [0, 0]
    check()
    print(f"dL/dx through phases on the tile kernel: {counts[1]} of {counts[0]} geometries")
    if _simd.AVAILABLE:
        assert counts[1] >= counts[0] // 2, counts


#: Fixed dL/dx geometries: (name, x shape, w shape, keywords). Phases no tap reaches (kernel 1 at
#: stride 2, kernel 2 at stride 3), phases with negative padding (their dy is cropped), DCGAN's
#: kernel 4 / stride 2 / padding 1, a dilated 5x5 at stride 2.
GRAD_FIXED = {
    "k1-s2-empty-phases": ((2, 16, 9, 8), (32, 16, 1, 1), dict(stride=2)),
    "k2-s3-empty-phases": ((1, 16, 10, 11), (64, 16, 2, 2), dict(stride=3, padding=1)),
    "k4-s2-p1": ((2, 16, 8, 9), (32, 16, 4, 4), dict(stride=2, padding=1)),
    "k5-s2-p2-d3": ((1, 16, 11, 12), (40, 16, 5, 5), dict(stride=2, padding=2, dilation=3)),
    "k3-s3-p1-negative": ((2, 16, 10, 11), (48, 16, 3, 3), dict(stride=3, padding=1)),
    "k3-s2-asymmetric-negative": ((1, 32, 9, 10), (64, 16, 3, 3), dict(stride=2, padding=((2, 0), (0, 3)), groups=2)),
}


def _has_empty_phase(problems):
    return any(p is None for *_, p in problems)


def _has_negative_padding(problems):
    return any(p is not None and min(min(pair) for pair in p.padding) < 0 for *_, p in problems)


@needs_simd
@pytest.mark.parametrize("name", GRAD_FIXED)
def test_input_gradient_fixed_phases(name):
    """On chosen geometries the phase path applies, writes every element of dL/dx (NaN-filled before:
    zero-filled phases included) and matches the reference; the cases do have empty phases and
    negative phase padding where their names say so."""
    x_shape, w_shape, kw = GRAD_FIXED[name]
    rng = np.random.default_rng(31)
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    geom = _geometry(x.shape, w.shape, kw.get("stride", 1), kw.get("padding", 0), kw.get("dilation", 1),
                     kw.get("groups", 1), np.float64)
    problems = _simd_direct.input_gradient_problems(geom)
    assert problems is not None
    assert len(problems) == math.prod(geom.stride)
    assert _has_empty_phase(problems) == ("empty" in name)
    if "negative" in name:
        assert _has_negative_padding(problems)
    gy = rng.standard_normal(geom.output_shape)
    expected = reference_grad_input(gy, x, w, **kw)
    gx = np.full(x.shape, np.nan)
    assert _simd_direct.input_gradient(gy, w, geom, gx)
    assert not np.isnan(gx).any()
    assert_close(gx, expected, np.float64, "direct")
    if "empty" in name:  # the phases no tap reaches are exactly zero
        for rh, rw, _, _, phase in problems:
            if phase is None:
                assert not gx[:, :, rh::geom.stride[0], rw::geom.stride[1]].any()
    _check_grad_input(x, w, gy, kw)


@pytest.mark.parametrize("name", GRAD_FIXED)
def test_input_gradient_fixed_float32(name):
    """The same geometries in float32 through conv2d_backward(method='direct') (phase path or not)
    match the float64 reference within direct's float32 tolerance."""
    x_shape, w_shape, kw = GRAD_FIXED[name]
    rng = np.random.default_rng(32)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    geom = _geometry(x.shape, w.shape, kw.get("stride", 1), kw.get("padding", 0), kw.get("dilation", 1),
                     kw.get("groups", 1), np.float32)
    gy = rng.standard_normal(geom.output_shape).astype(np.float32)
    gx = fastconv.conv2d_backward(gy, x, w, **kw, method="direct", output_mask=(True, False, False))[0]
    assert gx.dtype == np.float32
    assert_close(gx, reference_grad_input(gy, x, w, **kw), np.float32, "direct")


# --------------------------------------------------------------------------- 5. conv_transpose2d through phases


TRANSPOSE_CASES = {  # DCGAN-like up-sampling layers: (x shape, weight shape (C_in, C_out, k, k), keywords)
    "k4-s2-p1": ((2, 64, 4, 4), (64, 32, 4, 4), dict(stride=2, padding=1)),
    "k4-s2-p1-unbatched": ((48, 5, 6), (48, 16, 4, 4), dict(stride=2, padding=1)),
    "k5-s2-p2-op1": ((2, 32, 4, 5), (32, 24, 5, 5), dict(stride=2, padding=2, output_padding=1)),
    "k3-s2-p1-op1-groups": ((1, 64, 6, 5), (64, 16, 3, 3), dict(stride=2, padding=1, output_padding=1, groups=2)),
}


def _reference_transpose(x, w, b, stride=1, padding=0, output_padding=0, groups=1):
    if torch is None:
        return fastconv.conv_transpose2d(x, w, b, stride, padding, output_padding, groups, method=ORACLE)
    return F.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w), None if b is None else torch.from_numpy(b),
                              stride=stride, padding=padding, output_padding=output_padding, groups=groups).numpy()


@pytest.mark.parametrize("name", TRANSPOSE_CASES)
def test_conv_transpose2d_direct_through_phases(name, monkeypatch):
    """conv_transpose2d(method='direct') in float64 equals PyTorch's (or the loop's) on DCGAN-like
    layers, and (with the SIMD layer) computes through the phase path of the input gradient."""
    x_shape, w_shape, kw = TRANSPOSE_CASES[name]
    rng = np.random.default_rng(41)
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[1] * kw.get("groups", 1))
    taken = []
    real = _simd_direct.input_gradient

    def spy(*args):
        taken.append(real(*args))
        return taken[-1]

    monkeypatch.setattr(_simd_direct, "input_gradient", spy)
    y = fastconv.conv_transpose2d(x, w, b, **kw, method="direct")
    assert y.dtype == np.float64
    assert_close(y, _reference_transpose(x, w, b, **kw), np.float64, "direct")
    assert taken == [_simd.AVAILABLE]
