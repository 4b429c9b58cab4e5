"""Bad input gets a ValueError/TypeError naming the function, the argument and what was expected."""

import numpy as np
import pytest

import fastconv

X = np.zeros((2, 4, 8, 8), np.float32)
W = np.zeros((6, 2, 3, 3), np.float32)


def conv(**kw):
    args = dict(x=X, weight=W, groups=2)
    args.update(kw)
    return fastconv.conv2d(args.pop("x"), args.pop("weight"), **args)


@pytest.mark.parametrize(
    "kwargs, exc, pattern",
    [
        (dict(x=np.zeros((4, 8))), ValueError, r"conv2d: x must be \(N, C_in, H, W\).*2-D"),
        (dict(x=np.zeros((1, 1, 4, 8, 8))), ValueError, r"conv2d: x must be"),
        (dict(weight=np.zeros((6, 2, 3))), ValueError, r"conv2d: weight must be \(C_out, C_in/groups, kH, kW\)"),
        (dict(weight=np.zeros((6, 3, 3, 3))), ValueError, r"input has 4 channels but weight.shape\[1\] \* groups is 3 \* 2 = 6"),
        (dict(groups=3), ValueError, r"groups=3 does not divide the 4 input channels"),
        (dict(weight=np.zeros((5, 2, 3, 3))), ValueError, r"groups=2 does not divide the 5 output channels"),
        (dict(groups=0), ValueError, r"groups must be >= 1"),
        (dict(groups=1.5), TypeError, r"groups must be an integer"),
        (dict(bias=np.zeros(5)), ValueError, r"bias must have shape \(6,\)"),
        (dict(bias=np.zeros((6, 1))), ValueError, r"bias must have shape"),
        (dict(stride=0), ValueError, r"stride must be >= 1"),
        (dict(stride=(1, 2, 3)), ValueError, r"stride must be an int or a sequence of 2 ints"),
        (dict(dilation=-1), ValueError, r"dilation must be >= 1"),
        (dict(stride="2"), TypeError, r"stride must be an integer"),
        (dict(padding=-1), ValueError, r"padding must be >= 0"),
        (dict(padding=((0, -2), (1, 1))), ValueError, r"padding must be >= 0"),
        (dict(padding="full"), ValueError, r"padding must be an int, a tuple, 'valid' or 'same'"),
        (dict(padding=(1, 2, 3)), ValueError, r"padding must have one entry per spatial dimension"),
        (dict(method="fastest"), ValueError, r"method must be one of 'auto', 'measure', 'loop', 'vectorized', 'direct', 'img2col'"),
        (dict(x=np.zeros((1, 4, 2, 8))), ValueError, r"padded input \(2, 8\) is smaller than the dilated kernel \(3, 3\)"),
        (dict(dilation=5), ValueError, r"smaller than the dilated kernel \(11, 11\)"),
        (dict(weight=np.zeros((6, 2, 0, 3))), ValueError, r"weight must not be empty"),
        (dict(x=X.astype(np.complex64)), TypeError, r"conv2d: x must hold real numbers.*complex"),
        (dict(weight=W.astype(object)), TypeError, r"conv2d: weight must hold real numbers.*object"),
        (dict(x=np.full((2, 4, 8, 8), "a")), TypeError, r"conv2d: x must hold real numbers.*string"),
        (dict(x=np.zeros((2, 4, 8, 8), "datetime64[s]")), TypeError, r"conv2d: x must hold real numbers.*datetime"),
        (dict(bias=np.zeros(6, np.complex128)), TypeError, r"conv2d: bias must hold real numbers"),
        (dict(x=None), TypeError, r"conv2d: x must be an array"),
    ],
)
def test_conv2d_rejects(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        conv(**kwargs)


def test_conv1d_names_itself():
    with pytest.raises(ValueError, match=r"conv1d: x must be \(N, C_in, L\) or unbatched \(C_in, L\)"):
        fastconv.conv1d(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 3)))
    with pytest.raises(ValueError, match=r"conv1d: padded input \(2,\) is smaller"):
        fastconv.conv1d(np.zeros((1, 1, 2)), np.zeros((1, 1, 3)))


@pytest.mark.parametrize(
    "make_out, exc, pattern",
    [
        (lambda: np.zeros((2, 6, 8, 8), np.float32), ValueError, r"out must have shape \(2, 6, 6, 6\)"),
        (lambda: np.zeros((2, 6, 6, 6), np.float64), TypeError, r"out must have dtype float32"),
        (lambda: np.zeros((2, 6, 6, 6), np.float32, order="F"), ValueError, r"out must be C-contiguous"),
        (lambda: np.zeros((2, 6, 6, 12), np.float32)[..., ::2], ValueError, r"out must be C-contiguous"),
        (lambda: [[0.0]], TypeError, r"out must be a numpy.ndarray"),
    ],
)
def test_conv2d_rejects_bad_out(make_out, exc, pattern):
    with pytest.raises(exc, match=pattern):
        conv(out=make_out())


def test_conv2d_rejects_readonly_out():
    out = np.zeros((2, 6, 6, 6), np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        conv(out=out)


def test_conv2d_rejects_out_overlapping_an_input():
    # 1x1 kernel: the output has the input's shape, so out=x would be accepted shape-wise.
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 5)).astype(np.float32)
    keep = x.copy()
    with pytest.raises(ValueError, match="out must not overlap the input x"):
        fastconv.conv2d(x, np.ones((2, 2, 1, 1), np.float32), out=x)
    np.testing.assert_array_equal(x, keep)


P = np.zeros((1, 2, 8, 8))


@pytest.mark.parametrize(
    "call, exc, pattern",
    [
        (lambda: fastconv.max_pool2d(P, 3, padding=2), ValueError, r"max_pool2d: padding must be at most half the kernel size"),
        (lambda: fastconv.avg_pool2d(P, (2, 4), padding=(1, 3)), ValueError, r"avg_pool2d: padding must be at most half"),
        (lambda: fastconv.max_pool2d(P, 0), ValueError, r"kernel_size must be >= 1"),
        (lambda: fastconv.max_pool2d(P, 2, stride=0), ValueError, r"stride must be >= 1"),
        (lambda: fastconv.max_pool2d(P, 2, dilation=0), ValueError, r"dilation must be >= 1"),
        (lambda: fastconv.max_pool2d(P, 2, padding=-1), ValueError, r"padding must be >= 0"),
        (lambda: fastconv.max_pool2d(P, 2, padding="same"), ValueError, r"padding must be an int"),
        (lambda: fastconv.max_pool2d(P, 9), ValueError, r"max_pool2d: padded input \(8, 8\) is smaller than the \(dilated\) window \(9, 9\)"),
        (lambda: fastconv.max_pool2d(P, 3, dilation=4), ValueError, r"smaller than the \(dilated\) window \(9, 9\)"),
        (lambda: fastconv.max_pool1d(P, 2), ValueError, r"max_pool1d: x must be \(N, C, L\)"),
        (lambda: fastconv.avg_pool2d(np.zeros(8), 2), ValueError, r"avg_pool2d: x must be \(N, C, H, W\)"),
        (lambda: fastconv.max_pool2d(P.astype(complex), 2), TypeError, r"max_pool2d: x must hold real numbers"),
        (lambda: fastconv.max_pool2d(P, 2, method="magic"), ValueError, r"max_pool2d: method must be one of"),
        (lambda: fastconv.avg_pool2d(P, 2, ceil_mode="yes"), TypeError, r"ceil_mode must be a bool"),
        (lambda: fastconv.avg_pool2d(P, 2, count_include_pad=None), TypeError, r"count_include_pad must be a bool"),
        (lambda: fastconv.max_pool1d(np.zeros((1, 1, 1)), 2, padding=1, dilation=2), ValueError,
         r"max_pool1d: with dilation 2 and padding 1, a window over an input of size 1 holds only padding"),
        (lambda: fastconv.max_pool2d(P, (2, 2, 2)), ValueError, r"kernel_size must be an int or a sequence of 2 ints"),
    ],
)
def test_pool_rejects(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


# divisor_override: None or a non-zero int. PyTorch raises "divisor must be not zero" for 0 and takes
# a negative divisor as it is (the sum divided by it); fastconv does the same.
@pytest.mark.parametrize(
    "divisor_override, exc, pattern",
    [
        (0, ValueError, r"divisor_override must be a non-zero integer or None, got 0"),
        (np.int64(0), ValueError, r"divisor_override must be a non-zero integer"),
        (2.5, TypeError, r"divisor_override must be an integer, got float 2.5"),
        (2.0, TypeError, r"divisor_override must be an integer, got float"),
        (True, TypeError, r"divisor_override must be an integer, got bool"),
        ("4", TypeError, r"divisor_override must be an integer, got str"),
        ((2, 2), TypeError, r"divisor_override must be an integer, got tuple"),
    ],
)
@pytest.mark.parametrize("fn", ["avg_pool2d", "avg_pool2d_backward"])
def test_avg_pool_rejects_bad_divisor_override(fn, divisor_override, exc, pattern):
    if fn == "avg_pool2d":
        call = lambda: fastconv.avg_pool2d(P, 2, divisor_override=divisor_override)  # noqa: E731
    else:
        call = lambda: fastconv.avg_pool2d_backward(np.zeros((1, 2, 4, 4)), P.shape, 2,  # noqa: E731
                                                    divisor_override=divisor_override)
    with pytest.raises(exc, match=rf"{fn}: {pattern}"):
        call()


def test_avg_pool1d_has_no_divisor_override():
    # As in PyTorch: only avg_pool2d (and its backward and layer) take it.
    with pytest.raises(TypeError, match="divisor_override"):
        fastconv.avg_pool1d(np.zeros((1, 1, 8)), 2, divisor_override=2)
    with pytest.raises(TypeError, match="divisor_override"):
        fastconv.avg_pool1d_backward(np.zeros((1, 1, 4)), (1, 1, 8), 2, divisor_override=2)
