"""The fft strategy: convolution through real FFTs (scipy.fft, or numpy.fft without SciPy)."""

import os
from unittest import mock

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import fastconv
from fastconv.strategies import fft

CONV = {1: fastconv.conv1d, 2: fastconv.conv2d, 3: fastconv.conv3d}


def _relative_error(y, ref):
    scale = np.abs(ref).max()
    return np.abs(y - ref).max() / scale if scale else np.abs(y).max()


def _reference(nd, x, w, b, **kw):
    return CONV[nd](x.astype(np.float64), w.astype(np.float64), None if b is None else b.astype(np.float64),
                    method="direct", **kw)


@given(nd=st.integers(1, 3), n=st.integers(1, 2), groups=st.integers(1, 2), c_per=st.integers(1, 3),
       c_out_per=st.integers(1, 3), size=st.integers(1, 20), k=st.integers(2, 12), stride=st.integers(1, 3),
       dilation=st.integers(1, 2), lo=st.integers(0, 3), hi=st.integers(0, 3),
       dtype=st.sampled_from([np.float32, np.float64]), with_bias=st.booleans(), seed=st.integers(0, 2**16),
       full_cost=st.sampled_from([0, 10**9]))
def test_fft_matches_a_float64_reference_within_its_bound(nd, n, groups, c_per, c_out_per, size, k, stride, dilation,
                                                           lo, hi, dtype, with_bias, seed, full_cost):
    """Both forms (FULL_COST 0: always the full form; huge: the rows form wherever it applies)."""
    assume(size + lo + hi >= dilation * (k - 1) + 1 and k ** nd >= fft.MIN_TAPS)
    rng = np.random.default_rng(seed)
    spatial = tuple(size + a for a in range(nd))  # unequal axes
    x = rng.standard_normal((n, groups * c_per) + spatial).astype(dtype)
    w = rng.standard_normal((groups * c_out_per, c_per) + (k,) * nd).astype(dtype)
    b = rng.standard_normal(groups * c_out_per).astype(dtype) if with_bias else None
    kw = dict(stride=stride, dilation=dilation, padding=[(lo, hi)] * nd, groups=groups)
    x0, w0 = x.copy(), w.copy()
    with mock.patch.object(fft, "FULL_COST", full_cost):
        y = CONV[nd](x, w, b, method="fft", **kw)
    np.testing.assert_array_equal(x, x0)  # inputs never modified
    np.testing.assert_array_equal(w, w0)
    ref = _reference(nd, x, w, b, **kw)
    assert y.dtype == dtype and y.shape == ref.shape
    assert _relative_error(y, ref) <= fft.ERROR_BOUND[np.dtype(dtype).name]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape, w_shape, padding", [
    ((1, 1, 512, 512), (1, 1, 31, 31), 15),          # filter_31x31, smaller
    ((1, 8, 96, 96), (8, 8, 15, 15), 7),             # multichannel_15x15, smaller
    ((1, 1, 50000), (1, 1, 511), 255),               # long1d_k511, shorter
    ((2, 4, 40, 48), (6, 4, 21, 21), 10),
])
def test_error_bound_holds_on_large_kernels(x_shape, w_shape, padding, dtype):
    """The bound the dispatcher trusts, with normal, uniform and offset data."""
    rng = np.random.default_rng(len(x_shape) + w_shape[-1])
    nd = len(x_shape) - 2
    for x, w in ((rng.standard_normal(x_shape), rng.standard_normal(w_shape)),
                 (rng.random(x_shape), rng.random(w_shape)),
                 (rng.standard_normal(x_shape) * 10 + 5, rng.standard_normal(w_shape) * 0.1)):
        x, w = x.astype(dtype), w.astype(dtype)
        y = CONV[nd](x, w, padding=padding, method="fft")
        assert _relative_error(y, _reference(nd, x, w, None, padding=padding)) <= fft.ERROR_BOUND[np.dtype(dtype).name]


@pytest.mark.parametrize("full_cost", [0, 10**9])
@pytest.mark.parametrize("backend", fft.BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_installed_backend_agrees_within_the_bound(monkeypatch, backend, dtype, full_cost):
    """ducc0, scipy.fft and numpy.fft (float64 transforms) behind FASTCONV_FFT: same results within the bound,
    on 'same', 'valid', strided, dilated, grouped and long-kernel (placed grid) problems."""
    if fft._load(backend) is None:
        pytest.skip(f"{backend} is not installed")
    monkeypatch.setenv(fft.BACKEND_ENV, backend)
    monkeypatch.setattr(fft, "FULL_COST", full_cost)  # 0: the full form; huge: the rows form where it applies
    assert fft.transforms().name == backend
    rng = np.random.default_rng(1)
    cases = [((2, 3, 30, 26), (4, 3, 9, 7), dict(padding=(4, 3))),
             ((1, 2, 33, 40), (2, 2, 11, 11), dict(padding=0)),
             ((1, 4, 31, 29), (6, 2, 7, 9), dict(padding=((5, 1), (0, 6)), stride=(2, 3), dilation=(1, 2), groups=2)),
             ((3, 5, 37, 35), (7, 5, 6, 8), dict(padding=((4, 1), (2, 5)), stride=(3, 2), dilation=(2, 1))),
             ((2, 2, 12, 13, 14), (3, 2, 5, 4, 3), dict(padding=2)),
             ((1, 2, 900), (2, 2, fft.DFT_MAX_TAPS + 9), dict(padding=40))]
    for x_shape, w_shape, kw in cases:
        x = rng.standard_normal(x_shape).astype(dtype)
        w = rng.standard_normal(w_shape).astype(dtype)
        nd = len(x_shape) - 2
        y = CONV[nd](x, w, method="fft", **kw)
        assert y.dtype == dtype
        assert _relative_error(y, _reference(nd, x, w, None, **kw)) <= fft.ERROR_BOUND[np.dtype(dtype).name]


def test_an_unknown_or_missing_backend_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(fft.BACKEND_ENV, "fftw")
    with pytest.raises(ValueError, match="FASTCONV_FFT='fftw': expected one of ducc0, scipy, numpy"):
        fastconv.conv2d(np.ones((1, 1, 20, 20)), np.ones((1, 1, 5, 5)), method="fft")
    monkeypatch.setattr(fft, "_load", lambda name: None)
    monkeypatch.setenv(fft.BACKEND_ENV, "ducc0")
    with pytest.raises(ValueError, match="FASTCONV_FFT='ducc0': ducc0 is not installed"):
        fft.transforms()


@given(n=st.integers(1, 40), k=st.integers(1, 12), stride=st.integers(1, 3), dilation=st.integers(1, 3),
       lo=st.integers(0, 12), hi=st.integers(0, 12))
def test_the_plan_is_as_short_as_the_wrap_around_allows(n, k, stride, dilation, lo, hi):
    """Every output reads, through the circular index, exactly x or its zero padding (checked against the
    definition on one axis); the length is smooth and never longer than the padded input's ('same' needs
    ``n + max(lo, hi)``, not ``n + lo + hi``)."""
    assume(n + lo + hi >= dilation * (k - 1) + 1)
    geom = fastconv.explain("conv1d", (1, 1, n), (1, 1, k), stride=stride, dilation=dilation,
                            padding=[(lo, hi)]).geometry

    outputs = geom.out_size[-1]  # conv1d runs as a 2D problem of height 1

    def wraps_correctly(L):
        for o in range(outputs):
            for t in range(k):
                p = o * stride + t * dilation - lo
                if (0 <= p < n) != (p % L < n) or (0 <= p < n and p % L != p):
                    return False
        return len({(t * dilation - lo) % L for t in range(k)}) == k and (outputs - 1) * stride < L

    L = fft.plan(geom).lengths[-1]
    assert wraps_correctly(L)
    assert L == fft.next_fast_len(L) and L <= fft.next_fast_len(n + lo + hi)
    if stride == 1 and lo + hi == dilation * (k - 1) and lo >= hi:  # 'same'
        assert L == fft.next_fast_len(max(n + lo, dilation * (k - 1) + 1))


def test_long_kernels_take_the_placed_grid_path():
    """More than DFT_MAX_TAPS taps along an axis: the kernel is placed on the grid and transformed."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 2, 3000)).astype(np.float64)
    w = rng.standard_normal((3, 2, fft.DFT_MAX_TAPS + 37)).astype(np.float64)
    y = fastconv.conv1d(x, w, padding=50, dilation=2, method="fft")
    assert _relative_error(y, _reference(1, x, w, None, padding=50, dilation=2)) <= fft.ERROR_BOUND["float64"]


def test_workspace_chunks_and_thread_counts_give_the_same_result():
    """Equal up to the transforms' rounding (ducc0 vectorises across lines, so how many images go through one
    call moves the last bits; scipy.fft's results are the same bit for bit)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 40, 40)).astype(np.float32)
    w = rng.standard_normal((5, 3, 11, 11)).astype(np.float32)
    expected = fastconv.conv2d(x, w, padding=5, method="fft")
    limit = fastconv.get_workspace_limit()
    try:
        fastconv.set_workspace_limit(64 * 1024)  # one image per chunk
        chunked = fastconv.conv2d(x, w, padding=5, method="fft")
        if fft.transforms().name == "scipy":
            np.testing.assert_array_equal(chunked, expected)
        assert _relative_error(chunked, expected.astype(np.float64)) < 1e-6
    finally:
        fastconv.set_workspace_limit(limit)
    with fastconv.num_threads(1):
        assert _relative_error(fastconv.conv2d(x, w, padding=5, method="fft"), expected.astype(np.float64)) < 1e-6


def test_auto_chooses_it_for_large_kernels_only_under_high_precision(monkeypatch):
    monkeypatch.delenv("FASTCONV_METHOD", raising=False)
    with fastconv.precision("high"):
        assert fastconv.explain("conv2d", (1, 1, 1024, 1024), (1, 1, 31, 31), padding=15).method == "fft"
        assert fastconv.explain("conv2d", (1, 16, 256, 256), (16, 16, 15, 15), padding=7).method == "fft"
        assert fastconv.explain("conv2d", (1, 4, 256, 256), (4, 4, 15, 15), padding=7).method == "fft"
        small = fastconv.explain("conv2d", (1, 1, 512, 512), (1, 1, 15, 15), padding=7).method
        rows = fft.transforms().single and fastconv._simd.AVAILABLE  # the rows form (or ducc0) pays from 225 taps
        assert (small == "fft") == (rows or fft.transforms().name == "ducc0")
        assert fastconv.explain("conv2d", (1, 1, 512, 512), (1, 1, 11, 11), padding=5).method != "fft"
        # 7x7: the rows form with 16+ channels where most of its padded frequencies are real ones
        seven = fastconv.explain("conv2d", (1, 16, 256, 256), (16, 16, 7, 7), padding=3).method
        assert (seven == "fft") == rows
        assert fastconv.explain("conv2d", (1, 8, 256, 256), (8, 8, 7, 7), padding=3).method != "fft"
        assert fastconv.explain("conv2d", (1, 128, 32, 32), (128, 128, 7, 7), padding=3).method != "fft"
        assert fastconv.explain("conv2d", (1, 16, 256, 256), (16, 16, 5, 5), padding=2).method != "fft"
        nine = fastconv.explain("conv2d", (1, 4, 256, 256), (4, 4, 9, 9), padding=4).method
        assert (nine == "fft") == rows
        assert fastconv.explain("conv1d", (1, 1, 200000), (1, 1, 511), padding=255).method != "fft"
    with fastconv.precision("highest"):
        explained = fastconv.explain("conv2d", (1, 1, 1024, 1024), (1, 1, 31, 31), padding=15)
        assert explained.method != "fft" and "fft" not in explained.candidates


def test_small_kernels_and_huge_spectra_are_refused_clearly():
    with pytest.raises(ValueError, match="conv2d: method='fft' does not compute this problem"):
        fastconv.conv2d(np.ones((1, 2, 8, 8), np.float32), np.ones((2, 2, 3, 3), np.float32), method="fft")
    geom = fastconv.explain("conv2d", (1, 64, 224, 224), (64, 64, 5, 5), padding=2).geometry
    assert not fft.supports("conv", geom)  # 64 x 64 spectra of 228 x 115: 860 MB > a quarter of the cap
    assert "fft" not in fastconv.dispatch.candidates("conv", geom)


def test_pooling_is_not_an_fft_op():
    with pytest.raises(ValueError, match="max_pool2d: method='fft' does not compute this problem"):
        fastconv.max_pool2d(np.ones((1, 1, 4, 4), np.float32), 2, method="fft")


def test_next_fast_len():
    for n in list(range(1, 200)) + [1025, 200510]:
        m = fft.next_fast_len(n)
        assert m >= n
        rest = m
        for p in (2, 3, 5):
            while rest % p == 0:
                rest //= p
        assert rest == 1
        assert all(not _smooth(v) for v in range(n, m)), (n, m)


def _smooth(v):
    for p in (2, 3, 5):
        while v % p == 0:
            v //= p
    return v == 1


def test_the_rows_form_for_one_image_with_many_channels_the_full_form_for_batches_and_layers():
    """The cost model's choices on the shapes it was measured on (the rows form needs the SIMD layer)."""
    def geometry(x_shape, w_shape, padding):
        return fastconv.explain(f"conv{len(x_shape) - 2}d", x_shape, w_shape, padding=padding).geometry

    rows = "rows" if fastconv._simd.AVAILABLE else "full"
    assert fft.form(geometry((1, 16, 256, 256), (16, 16, 15, 15), 7)) == rows
    assert fft.form(geometry((2, 3, 512, 512), (8, 3, 21, 21), 10)) == rows
    assert fft.form(geometry((4, 16, 256, 256), (16, 16, 15, 15), 7)) == rows  # 42 ms against 50
    assert fft.form(geometry((16, 8, 128, 128), (8, 8, 11, 11), 5)) == "full"  # 11.3 ms against 13.1
    assert fft.form(geometry((1, 4, 16, 16, 16), (4, 4, 5, 5, 5), 2)) == "full"  # rank 3
    assert fft.form(geometry((1, 1, 200000), (1, 1, 511), 255)) == "full"  # 1D: one row, no columns to sum
    with fastconv.WeightCache():  # a layer's: the full form's spectra are computed once
        assert fft.form(geometry((1, 16, 256, 256), (16, 16, 15, 15), 7)) == "full"


def test_the_rows_form_under_a_weight_cache_and_with_odd_sizes():
    """Odd output channels and rows (padded to pairs), frequencies padded to whole vectors, kept kernels reused
    and never stale."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 3, 29, 41)).astype(np.float32)
    w = rng.standard_normal((5, 3, 7, 9)).astype(np.float32)
    ref = _reference(2, x, w, None, padding=(3, 4))
    cache = fastconv.WeightCache()
    with mock.patch.object(fft, "FULL_COST", 10**9):
        first = fastconv.conv2d(x, w, padding=(3, 4), method="fft")
        with cache:
            kept = [fastconv.conv2d(x, w, padding=(3, 4), method="fft") for _ in range(2)]
            w[2, 1, 3, 4] += 1.0  # in place: the kept row spectra must not be used
            changed = fastconv.conv2d(x, w, padding=(3, 4), method="fft")
    assert _relative_error(first, ref) <= fft.ERROR_BOUND["float32"]
    for y in kept:
        np.testing.assert_array_equal(y, first)
    assert _relative_error(changed, _reference(2, x, w, None, padding=(3, 4))) <= fft.ERROR_BOUND["float32"]


@pytest.mark.skipif(not fastconv._simd.AVAILABLE, reason="the rows form needs the SIMD layer")
def test_the_rows_form_transforms_long_kernel_rows():
    """Kernel rows longer than DFT_MAX_TAPS get their spectra by FFT, never from a taps x frequencies table (a
    511-tap filter on 200k samples would need 400 MB of it): one-row kernels on 3 rows, and 2-row kernels."""
    if not fft.transforms().single:
        pytest.skip("numpy.fft's double-precision transforms: the rows form does not run")
    rng = np.random.default_rng(8)
    with mock.patch.object(fft, "FULL_COST", 10**9), mock.patch.object(fft, "_dft_parts", side_effect=AssertionError):
        for x_shape, w_shape, padding in (((2, 1, 3, 3000), (1, 1, 1, 201), (0, 100)),
                                          ((1, 3, 5, 400), (5, 3, 2, 80), (1, 40))):
            x = rng.standard_normal(x_shape).astype(np.float32)
            w = rng.standard_normal(w_shape).astype(np.float32)
            assert fft.form(fastconv.explain("conv2d", x, w, padding=padding).geometry) == "rows"
            y = fastconv.conv2d(x, w, padding=padding, method="fft")
            assert _relative_error(y, _reference(2, x, w, None, padding=padding)) <= fft.ERROR_BOUND["float32"]


ROWS_PROBE = """
import re, sys
import numpy as np
import fastconv
from fastconv import _simd
from fastconv.strategies import fft
fft.FULL_COST = 10**9  # the rows form wherever it applies
rng = np.random.default_rng(0)
for dtype in (np.float32, np.float64):
    x = rng.standard_normal((2, 6, 23, 30)).astype(dtype)
    w = rng.standard_normal((5, 6, 9, 8)).astype(dtype)
    y = fastconv.conv2d(x, w, padding=(4, 3), method="fft")
    ref = fastconv.conv2d(x.astype(np.float64), w.astype(np.float64), padding=(4, 3), method="direct")
    err = np.abs(y - ref).max() / np.abs(ref).max()
    assert err <= fft.ERROR_BOUND[np.dtype(dtype).name], (dtype, err)
kernel = fft._ROW_PRODUCTS[_simd.LANES["float32"]]
asm = kernel.inspect_asm(kernel.signatures[0])
blocks = re.split(r"\\n(?=\\.LBB\\d+_\\d+:)", asm)
loop = max(blocks, key=lambda b: b.count("vfmadd"))
print(_simd.ISA, loop.count("vfmadd"), len(re.findall(r"vfmadd\\w+\\s+[^\\n]*%" + sys.argv[1], loop)),
      loop.count("(%rsp)"))
"""


@pytest.mark.skipif(not fastconv._simd.AVAILABLE or os.environ.get("NUMBA_BOUNDSCHECK") == "1",
                    reason="inspects the production build of the SIMD layer's rows kernel")
@pytest.mark.parametrize("simd, register", [(None, "zmm"), ("avx2", "ymm")])
def test_the_rows_kernel_is_right_and_keeps_its_tile_in_vector_registers(simd, register):
    """In a fresh process (FASTCONV_SIMD=avx2 for the 8-lane build, also on an AVX-512 machine): float32 and
    float64 within the bound; the product loop's FMAs on the expected registers, few stack references (LLVM
    unrolls the tap loop 4x, its loop-invariant offsets may live on the stack)."""
    from test_simd import _env, _run

    if simd is None and fastconv._simd.ISA != "avx512":
        pytest.skip("needs AVX-512 for the zmm build")
    if not fft.transforms().single:
        pytest.skip("numpy.fft's double-precision transforms: the rows form does not run")
    done = _run(ROWS_PROBE, _env(FASTCONV_SIMD=simd, FASTCONV_JIT_CACHE="0"), register, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    isa, fmas, on_register, stack = done.stdout.split()[-4:]
    assert isa == ("avx2" if simd else "avx512")
    assert int(fmas) >= 16 and int(on_register) == int(fmas), done.stdout
    assert int(stack) <= int(fmas) // 2, done.stdout
