"""The direct strategy's specialised paths, each checked against the loop oracle on geometries that reach it.

The hypothesis properties draw small problems (a few channels, planes up to ~9 wide),
which never reach the paths chosen for large planes: the in-place row kernel of the
forward pass (output rows >= ``ROWS_MIN_WIDTH``), the 8-channel tiles over several
tiles of positions, and the row-by-row sums of the backward pass (images x output
columns >= ``MIN_ROW``). These fixed geometries do, and each test first asserts that
the path it means to check is the one taken.
"""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import fastconv
from conftest import assert_close
from fastconv.strategies import _direct_backward, direct


def _geometry(x, w, **kw):
    return fastconv.explain("conv2d", x.shape, w.shape, dtype=x.dtype, **kw).geometry


ROW_KERNEL = [
    # (x shape, weight shape, geometry): depthwise, single-channel filters, 1D-like, strided rows
    ((1, 4, 7, 100), (4, 1, 3, 3), dict(padding=1, groups=4, dilation=(2, 1))),  # (3x3 stride 1: _depthwise3x3)
    ((2, 1, 6, 120), (1, 1, 3, 3), dict(padding=((2, 0), (1, 3)), dilation=(1, 2))),
    ((1, 2, 1, 130), (2, 1, 1, 5), dict(padding=((0, 0), (2, 2)), groups=2)),
    ((1, 3, 9, 104), (3, 1, 3, 3), dict(padding=1, stride=(2, 1), groups=3)),
    ((1, 2, 5, 98), (2, 1, 2, 2), dict(padding="same", groups=2)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("xs, ws, kw", ROW_KERNEL)
def test_row_kernel_matches_the_loop(xs, ws, kw, dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    assert direct._uses_rows_kernel(_geometry(x, w, **kw)) and not direct._uses_depthwise3x3(_geometry(x, w, **kw))
    assert_close(fastconv.conv2d(x, w, b, **kw, method="direct"), fastconv.conv2d(x, w, b, **kw, method="loop"))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, padding", [((2, 5, 9, 11), 1), ((1, 3, 1, 1), 1), ((1, 4, 2, 3), 2), ((1, 2, 7, 130), 1),
                                            ((1, 3, 5, 6), 0), ((2, 3, 6, 8), ((2, 0), (0, 3))), ((1, 1, 3, 3), 0),
                                            ((1, 2, 4, 4), ((3, 3), (2, 1)))])
def test_depthwise_three_by_three_matches_the_loop(shape, padding, dtype):
    """One vectorised pass per output row; zero rows above and below, the edge columns one by one."""
    rng = np.random.default_rng(4)
    C = shape[1]
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((C, 1, 3, 3)).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    kw = dict(padding=padding, groups=C)
    assert direct._uses_depthwise3x3(_geometry(x, w, **kw))
    for bias in (b, None):
        assert_close(fastconv.conv2d(x, w, bias, **kw, method="direct"), fastconv.conv2d(x, w, bias, **kw, method="loop"))
    g = rng.standard_normal(fastconv.conv2d(x, w, **kw, method="loop").shape).astype(dtype)  # dL/dx: the flipped kernel
    for ours, loop in zip(fastconv.conv2d_backward(g, x, w, **kw, method="direct"),
                          fastconv.conv2d_backward(g, x, w, **kw, method="loop")):
        assert_close(ours, loop, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_channel_tiles_over_many_positions_match_the_loop(dtype):
    # 13 output channels: one full block of 8 and a block of 5 (which reads padded weight rows);
    # 40x36 positions: several tiles of TILE positions, the last one partial
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 3, 40, 36)).astype(dtype)
    w = rng.standard_normal((13, 3, 3, 3)).astype(dtype)
    b = rng.standard_normal(13).astype(dtype)
    for kw in (dict(padding=1), {}, dict(padding=(2, 0), stride=(1, 2), dilation=2)):
        geom = _geometry(x, w, **kw)
        assert not direct._uses_rows_kernel(geom) and geom.out_size[0] * geom.out_size[1] > direct.TILE
        assert_close(fastconv.conv2d(x, w, b, **kw, method="direct"), fastconv.conv2d(x, w, b, **kw, method="loop"))


BACKWARD_ROWS = [
    ((2, 3, 12, 70), (5, 3, 3, 3), dict(padding=1)),
    ((1, 4, 9, 140), (4, 2, 3, 2), dict(padding=((1, 0), (0, 2)), stride=(2, 1), groups=2)),
    ((3, 2, 6, 90), (3, 2, 2, 3), dict(stride=(1, 2), dilation=(2, 1))),
    ((1, 4, 8, 130), (4, 1, 3, 3), dict(padding=1, groups=4)),
]


@pytest.mark.parametrize("xs, ws, kw", BACKWARD_ROWS)
def test_backward_row_by_row_matches_the_loop(xs, ws, kw):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(xs)
    w = rng.standard_normal(ws)
    geom = _geometry(x, w, **kw)
    assert geom.out_size[1] * geom.batch >= _direct_backward.MIN_ROW
    gy = rng.standard_normal((geom.batch, geom.out_channels) + geom.out_size)
    expected = fastconv.conv2d_backward(gy, x, w, **kw, method="loop")
    for got, ref in zip(fastconv.conv2d_backward(gy, x, w, **kw, method="direct"), expected):
        assert_close(got, ref)


# img2col's col2im where the windows do not overlap (kernel <= stride): rows written once, not added,
# the gaps between windows zeroed; windows past the edge (ceil_mode pooling) and leftover rows/columns
# (output_padding) take the general path or are zeroed.
TILING = [
    ("conv_transpose2d", (2, 6, 5, 7), (6, 4, 2, 2), dict(stride=2)),
    ("conv_transpose2d", (2, 6, 5, 7), (6, 4, 1, 1), dict(stride=2)),  # a strided 1x1 layer's dL/dx
    ("conv_transpose2d", (1, 5, 4, 6), (5, 3, 2, 1), dict(stride=(3, 2), output_padding=(1, 1))),
    ("conv_transpose2d", (1, 5, 4, 6), (5, 3, 1, 2), dict(stride=(2, 3))),
    ("conv_transpose2d", (1, 5, 4, 3), (5, 3, 3, 2), dict(stride=(3, 2), output_padding=(2, 1))),
    ("conv_transpose2d", (1, 4, 3, 6), (4, 2, 3, 3), dict(stride=3, padding=1)),  # padding: general path
]


@pytest.mark.parametrize("op, xs, ws, kw", TILING)
def test_tiling_col2im_matches_the_loop(op, xs, ws, kw):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(xs)
    w = rng.standard_normal(ws)
    fn = getattr(fastconv, op)
    assert_close(fn(x, w, **kw, method="img2col"), fn(x, w, **kw, method="loop"), np.float64)
    limit = fastconv.get_workspace_limit()
    try:  # rows of windows in chunks: later chunks write into rows the first one zeroed
        fastconv.set_workspace_limit(2048)
        assert_close(fn(x, w, **kw, method="img2col"), fn(x, w, **kw, method="loop"), np.float64)
    finally:
        fastconv.set_workspace_limit(limit)


@pytest.mark.parametrize("shape, k, s, ceil", [((2, 3, 8, 6), 2, 2, False), ((1, 2, 7, 5), 2, 2, True),
                                               ((2, 3, 11, 10), 2, 3, False), ((1, 2, 9, 8), (1, 2), (3, 2), True),
                                               ((1, 2, 9, 9), 3, 3, True), ((1, 1, 6, 9), (2, 3), (2, 3), False)])
def test_tiling_col2im_in_the_pooling_backward(shape, k, s, ceil):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape)
    y = fastconv.avg_pool2d(x, k, s, ceil_mode=ceil, method="img2col")
    g = rng.standard_normal(y.shape)
    assert_close(fastconv.avg_pool2d_backward(g, x.shape, k, s, ceil_mode=ceil, method="img2col"),
                 fastconv.avg_pool2d_backward(g, x.shape, k, s, ceil_mode=ceil, method="loop"), np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("xs, ws, stride, output_padding", [((1, 40, 6, 7), (40, 16, 2, 2), 2, 0),
                                                            ((2, 36, 4, 5), (36, 8, 3, 3), 3, 2),
                                                            ((1, 33, 3, 3), (33, 9, 2, 2), 2, (1, 0))])
def test_tiling_input_gradient_matches_the_loop(xs, ws, stride, output_padding, dtype):
    """direct's dL/dx where the windows tile the image (a transposed convolution with kernel == stride):
    one pointwise product for all the stride phases, then depth to space (zeros past the last window)."""
    from fastconv.strategies import _simd_direct

    rng = np.random.default_rng(6)
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    kw = dict(stride=stride, output_padding=output_padding)
    if not fastconv._simd.AVAILABLE:
        pytest.skip("the register-tiled kernel does not run here")
    assert _simd_direct._tiling_problem(fastconv.explain("conv_transpose2d", x, w, **kw).geometry) is not None
    assert_close(fastconv.conv_transpose2d(x, w, **kw, method="direct"),
                 fastconv.conv_transpose2d(x, w, **kw, method="loop"), dtype)


@given(h=st.integers(1, 12), w=st.integers(1, 40), k=st.tuples(st.integers(1, 5), st.integers(1, 5)),
       stride=st.tuples(st.integers(1, 3), st.integers(1, 3)), pad=st.tuples(*[st.integers(0, 4)] * 4),
       dilation=st.sampled_from([(1, 1), (2, 1), (1, 2)]), groups=st.sampled_from([1, 2]),
       rows_per_item=st.integers(1, 5), dtype=st.sampled_from([np.float32, np.float64]))
def test_phase_packing_matches_a_strided_slice(h, w, k, stride, pad, dilation, groups, rows_per_item, dtype):
    """``_pack_phases`` (one pass per phase plane, or whole rows dealt out to two or four planes with stride 2
    along the row) equals the padded input sliced per phase; the packed tail is zero."""
    top, bottom, left, right = pad
    kH, kW = (k[0] - 1) * dilation[0] + 1, (k[1] - 1) * dilation[1] + 1
    assume(h + top + bottom >= kH and w + left + right >= kW)
    rng = np.random.default_rng(h * 1000 + w)
    C = 2 * groups
    x = rng.standard_normal((2, C, h, w)).astype(dtype)
    weight = np.zeros((groups, C // groups, *k), dtype=dtype)
    geom = _geometry(x, weight, stride=stride, padding=((top, bottom), (left, right)), dilation=dilation, groups=groups)
    phases = direct._phase_layout(geom)
    layout = direct._PackLayout(top=top, left=left, stride_h=stride[0], stride_w=stride[1], plane_h=int(phases.plane_h),
                                plane_w=int(phases.plane_w), rows_per_item=rows_per_item)
    plane = phases.plane_h * phases.plane_w
    n_phases = phases.phase_h.size
    xs = np.full((2, C, n_phases * plane + 5), np.nan, dtype=dtype)
    before = x.copy()
    direct._pack_phases(x, 0, groups, layout, phases.phase_h, phases.phase_w, xs)
    np.testing.assert_array_equal(x, before)
    big = np.zeros((2, C, (phases.plane_h + 1) * stride[0] + h + top, (phases.plane_w + 1) * stride[1] + w + left),
                   dtype=dtype)
    big[:, :, top:top + h, left:left + w] = x
    for s in range(n_phases):
        rh, rw = phases.phase_h[s], phases.phase_w[s]
        want = big[:, :, rh::stride[0], rw::stride[1]][:, :, :phases.plane_h, :phases.plane_w]
        got = xs[:, :, s * plane:(s + 1) * plane].reshape(2, C, phases.plane_h, phases.plane_w)
        np.testing.assert_array_equal(got, want, err_msg=f"phase {s} ({rh}, {rw})")
    np.testing.assert_array_equal(xs[:, :, n_phases * plane:], 0)
