"""The lecture's worked examples, on every strategy."""

import numpy as np
import pytest

import fastconv
from conftest import FAST_METHODS, ORACLE

X1 = np.array([1.0, 0, 2, 2, 3, 1])
W1 = np.array([3.0, 2, 2])

# The lecture's 4x4 input and 2x2 kernel (single channel).
X2 = np.array([[1.0, 2, 3, 2], [2, 3, 2, 5], [1, 2, 2, 1], [0, 2, 1, 2]])
W2 = np.array([[-1.0, 1], [-1, 1]])


@pytest.mark.parametrize("method", (ORACLE,) + FAST_METHODS)
def test_1d_valid(method):
    y = fastconv.conv1d(X1[None], W1[None, None], method=method)
    np.testing.assert_allclose(y, [[7, 8, 16, 14]])


@pytest.mark.parametrize("method", (ORACLE,) + FAST_METHODS)
def test_1d_same(method):
    y = fastconv.conv1d(X1[None], W1[None, None], padding="same", method=method)
    np.testing.assert_allclose(y, [[2, 7, 8, 16, 14, 11]])


@pytest.mark.parametrize("method", (ORACLE,) + FAST_METHODS)
def test_1d_stride2_padding_right(method):
    y = fastconv.conv1d(X1[None], W1[None, None], stride=2, padding=[(0, 1)], method=method)
    np.testing.assert_allclose(y, [[7, 16, 11]])


def test_quiz_n13_k6_s5():
    assert fastconv.conv_output_size(13, 6, stride=5) == 2
    assert fastconv.resolve_padding("same", (13,), (6,), (5,), (1,)) == ((1, 2),)
    assert fastconv.conv_output_size(13, 6, stride=5, padding=(1, 2)) == 3
    x = np.arange(1.0, 14.0)[None]
    w = np.ones((1, 1, 6))
    valid = fastconv.conv1d(x, w, stride=5)
    same = fastconv.conv1d(x, w, stride=5, padding="same")
    # 'valid' drops inputs 12 and 13; 'same' pads one zero left, two right.
    np.testing.assert_allclose(valid, [[sum(range(1, 7)), sum(range(6, 12))]])
    np.testing.assert_allclose(same, [[sum(range(1, 6)), sum(range(5, 11)), sum(range(10, 14))]])


@pytest.mark.parametrize("method", (ORACLE,) + FAST_METHODS)
def test_2d_4x4_example(method):
    y = fastconv.conv2d(X2[None], W2[None, None], method=method)
    np.testing.assert_allclose(y[0], [[2, 0, 2], [2, -1, 2], [3, -1, 0]])


@pytest.mark.parametrize("method", (ORACLE,) + FAST_METHODS)
def test_2d_multi_channel_multi_kernel_bias(method):
    # Y[l] = sum over input channels of each channel's cross-correlation, plus b[l].
    x = np.stack([X2, 2 * X2])
    w = np.stack([np.stack([W2, W2]), np.stack([np.ones((2, 2)), np.zeros((2, 2))])])
    b = np.array([0.5, -1.0])
    y = fastconv.conv2d(x, w, b, method=method)
    single = fastconv.conv2d(X2[None], W2[None, None], method="loop")[0]
    box = fastconv.conv2d(X2[None], np.ones((1, 1, 2, 2)), method="loop")[0]
    np.testing.assert_allclose(y[0], 3 * single + 0.5)
    np.testing.assert_allclose(y[1], box - 1.0)


def test_pooling_max_and_average_are_per_channel():
    x = np.array([[[1.0, 2, 1], [3, 1, 1], [-1, 0, 0]], [[1.0, 1, 1], [2, 0, 1], [1, 0, 0]]])
    np.testing.assert_allclose(fastconv.max_pool2d(x, 3)[:, 0, 0], [3, 2])
    np.testing.assert_allclose(fastconv.avg_pool2d(x, 3)[:, 0, 0], [8 / 9, 7 / 9])


def test_average_pooling_is_a_convolution_with_constant_kernel():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 9, 9))
    conv = fastconv.conv2d(x, np.full((3, 1, 3, 3), 1 / 9), stride=3, groups=3)
    np.testing.assert_allclose(fastconv.avg_pool2d(x, 3), conv, rtol=1e-12)


FMAP0 = [[1, 2, 1, 2, 3, 4], [2, 2, 3, 1, 2, 0], [1, 1, 2, 1, 0, 1], [2, 1, 2, 1, 1, 3]]
FMAP1 = [[0, 2, 3, 2, 0, 1], [1, 0, 1, 1, 2, 0], [2, 0, 1, 1, 1, 1], [1, 1, 2, 1, 1, 2]]
LECTURE_COLUMNS = [
    [1, 1, 3, 1, 2, 0],
    [2, 2, 4, 1, 1, 1],
    [2, 3, 2, 2, 2, 1],
    [2, 1, 0, 1, 1, 3],
    [0, 3, 0, 2, 1, 1],
    [2, 2, 1, 0, 1, 1],
    [1, 1, 2, 1, 2, 1],
    [0, 1, 0, 1, 1, 2],
]


def test_img2col_matrix_of_the_two_4x6_feature_maps():
    # c_i*k_h*k_w = 2*2*2 = 8 rows, o_h*o_w = 2*3 = 6 columns: a 2x2 kernel with stride 2.
    x = np.array([FMAP0, FMAP1], dtype=np.float64)
    cols = fastconv.im2col(x, 2, stride=2)
    np.testing.assert_array_equal(cols, LECTURE_COLUMNS)
    from fastconv.strategies import vectorized

    geom, _ = fastconv.geometry.conv_problem("t", 2, (1, 2, 4, 6), (1, 2, 2, 2), None, 2, 0, 1, 1)
    np.testing.assert_array_equal(vectorized.im2col(x[None], geom)[0], LECTURE_COLUMNS)


def test_col2im_is_the_adjoint_of_im2col():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 9, 8))
    kw = dict(kernel_size=(3, 2), stride=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2))
    cols = fastconv.im2col(x, **kw)
    c = rng.standard_normal(cols.shape)
    back = fastconv.col2im(c, x.shape, **kw)
    assert back.shape == x.shape
    np.testing.assert_allclose((cols * c).sum(), (x * back).sum(), rtol=1e-12)
    # With non-overlapping windows col2im(im2col(x)) puts every element back once.
    y = rng.standard_normal((1, 2, 4, 6))
    np.testing.assert_array_equal(fastconv.col2im(fastconv.im2col(y, 2, stride=2), y.shape, 2, stride=2), y)
