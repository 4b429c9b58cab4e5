"""The ``fft`` strategy: convolution through real FFTs, for large kernels.

The cross-correlation theorem: the correlation of ``x`` with ``w`` is ``irfft(rfft(x) * conj(rfft(w)))``
when both are zero-padded to a length ``L`` the wrap-around cannot reach. Per call:

1. the kernels, dilated and placed so that tap ``t`` sits at ``(t*dilation - lo) mod L`` (the leading
   padding ``lo`` becomes a circular shift: the input itself is only zero-extended at the end, by
   the FFT), are transformed once: ``Wf (C_out, C_in/groups, F)``;
2. every input channel is transformed once: ``Xf (N, C_in, F)``;
3. per frequency, a small complex matrix product sums over the input channels
   (``Yf[n, o, f] = sum_c Xf[n, c, f] * conj(Wf[o, c, f])``, :func:`_products`, vectorised over
   frequencies);
4. one inverse transform per output channel, then the outputs are read at the stride (a stride
   above 1 computes every stride-1 output and keeps some: it pays only while the kernel is large).

The cost is
``O((N*C_in + N*C_out + C_out*C_in) * L log L)`` for the transforms and ``N*C_out*C_in*F`` complex
multiply-adds, whatever the kernel's size: FFT wins for large kernels and loses for small ones
(``fastconv.dispatch`` decides with a measured cost model). With one image and many channels the
kernels' spectra (``C_out x C_in`` full-size transforms, 75 MB for 16 -> 16 15x15 kernels on 256x256)
are most of the work and memory traffic, so 2D problems have a second form, the **rows form**
(:func:`_conv_rows`): transforms along the last axis only, and per frequency the convolution along
the other axis summed directly, ``kH`` taps (:func:`_row_products`, a register-tiled kernel on the
SIMD layer at the FMA peak on Zen 4), with kernel spectra of ``kH`` rows only. :func:`form` picks
the form with fewer weighted multiply-adds (16 -> 16 15x15 on 256x256: 10.2 ms against 25+).

``L`` per axis is the smallest 2-3-5-smooth length at which the wrap-around reaches no output
(:func:`plan`: ``n + max(lo, hi)`` for a 'same' convolution, ``n`` for a 'valid' one).

The transforms (:func:`transforms`) are ducc0's where it is installed (``pip install fastconv[ducc]``;
ducc0 is GPL-2.0-or-later, so fastconv never installs it by itself: 1.5-1.8x faster than
scipy.fft on the bench shapes, Zen 4, 2026-12-05), else scipy.fft's (``pip install fastconv[fft]``),
both with fastconv's thread count and float32 kept float32; else numpy.fft's (single-threaded,
float64 internally). ``FASTCONV_FFT=ducc0|scipy|numpy`` picks one. Rounding differs from a sum of
products: the error is relative to the whole signal's energy, not to each output (measured bounds in :data:`ERROR_BOUND`; below direct's
own float32 error on the layers measured), so ``auto`` considers it under the precision setting
"high" only, like Winograd.
"""

from __future__ import annotations

import functools
import importlib
import math
import os
from typing import NamedTuple

import numba
import numpy as np
from numba import prange

from .. import _jit, _simd
from .._jit import inlined, kernel
from .._simd import vbroadcast, vfma, vload, vstore, vsub, vzero
from .._prepared import keeping, prepared
from ..workspace import get_workspace_limit, scratch
from . import Strategy

#: Measured error bound, max |y - y64| / max |y64| (y64: float64 direct on the same rounded inputs):
#: random normal, uniform and offset data on filter_31x31-, long1d_k511-, 16 -> 16 15x15- and
#: 4 -> 8 21x21-sized layers (Zen 4, 2026-12-05): at most 4.8e-7 in float32 (SciPy's float32
#: transforms; direct float32 erred 0.9-4.0e-6 on the same data) and 7.2e-15 in float64. These
#: leave ~3x headroom; tests/test_fft.py holds the strategy to them.
ERROR_BOUND = {"float32": 2e-6, "float64": 2e-14}

#: Frequencies per work item of :func:`_products` (complex64: 8 KB of one channel's spectrum).
FREQ_BLOCK = 1024


#: The environment variable that picks the transforms: ``ducc0``, ``scipy`` or ``numpy`` (unset: the first
#: of them that is installed).
BACKEND_ENV = "FASTCONV_FFT"
BACKENDS = ("ducc0", "scipy", "numpy")


class Transforms(NamedTuple):
    """One FFT library behind the strategy. ``forward(x, lengths, threads, scratch=False)``: ``rfftn`` over the
    last ``len(lengths)`` axes of ``x`` zero-extended to ``lengths``; ``inverse(spectra, lengths, threads,
    scratch=False)``: its inverse (``spectra`` may be overwritten). With ``scratch`` the result may live in the
    calling thread's reusable buffers (:func:`fastconv.workspace.scratch`: no fresh pages per call), valid
    until the next such call. ``single``: float32 is transformed in float32."""

    name: str
    single: bool
    forward: object
    inverse: object


def _buffer(shape, dtype, slot, reuse):
    """An uninitialised array: a reusable scratch buffer (``slot``) or a new one."""
    if reuse:
        return scratch(math.prod(shape), dtype, slot).reshape(shape)
    return np.empty(shape, dtype=dtype)


def _zero_extended(x, lengths):
    """``x`` zero-extended at the end of its last ``len(lengths)`` axes (``x`` itself when it needs nothing), in
    a scratch buffer."""
    rank = len(lengths)
    if tuple(x.shape[-rank:]) == tuple(lengths):
        return x
    buf = _buffer(x.shape[:-rank] + tuple(lengths), x.dtype, "fft-extended", True)
    buf[(Ellipsis,) + tuple(slice(0, n) for n in x.shape[-rank:])] = x
    for axis, n in enumerate(x.shape[-rank:]):
        buf[(Ellipsis,) + (slice(None),) * axis + (slice(n, None),) + (slice(None),) * (rank - 1 - axis)] = 0
    return buf


def _ducc0(module):
    fft = module.fft

    def forward(x, lengths, threads, scratch=False):
        axes = tuple(range(x.ndim - len(lengths), x.ndim))
        shape = x.shape[:-len(lengths)] + tuple(lengths[:-1]) + (lengths[-1] // 2 + 1,)
        out = _buffer(shape, np.complex64 if x.dtype == np.float32 else np.complex128, "fft-forward", scratch)
        return fft.r2c(_zero_extended(x, lengths), axes=axes, nthreads=threads, out=out)

    def inverse(spectra, lengths, threads, scratch=False):
        axes = tuple(range(spectra.ndim - len(lengths), spectra.ndim))
        real = np.float32 if spectra.dtype == np.complex64 else np.float64
        out = _buffer(spectra.shape[:-len(lengths)] + tuple(lengths), real, "fft-inverse", scratch)
        return fft.c2r(spectra, axes=axes, lastsize=lengths[-1], forward=False, inorm=2, nthreads=threads,
                       allow_overwriting_input=True, out=out)

    return Transforms("ducc0", True, forward, inverse)


def _scipy(module):
    def forward(x, lengths, threads, scratch=False):
        return module.rfftn(x, s=lengths, axes=tuple(range(x.ndim - len(lengths), x.ndim)), workers=threads)

    def inverse(spectra, lengths, threads, scratch=False):
        return module.irfftn(spectra, s=lengths, axes=tuple(range(spectra.ndim - len(lengths), spectra.ndim)),
                             workers=threads, overwrite_x=True)

    return Transforms("scipy", True, forward, inverse)


def _numpy(module):
    def forward(x, lengths, threads, scratch=False):
        return module.rfftn(x, s=lengths, axes=tuple(range(x.ndim - len(lengths), x.ndim)))

    def inverse(spectra, lengths, threads, scratch=False):
        return module.irfftn(spectra, s=lengths, axes=tuple(range(spectra.ndim - len(lengths), spectra.ndim)))

    return Transforms("numpy", False, forward, inverse)


_MODULES = {"ducc0": ("ducc0", _ducc0), "scipy": ("scipy.fft", _scipy), "numpy": ("numpy.fft", _numpy)}


@functools.lru_cache(maxsize=None)
def _load(name):
    module, wrap = _MODULES[name]
    try:
        return wrap(importlib.import_module(module))
    except ImportError:
        return None


def transforms() -> Transforms:
    """The transforms in use: ``$FASTCONV_FFT`` if set (a clear error when it names something unknown or
    not installed), else ducc0, scipy.fft or numpy.fft, the first installed."""
    choice = os.environ.get(BACKEND_ENV, "").strip().lower()
    if choice:
        if choice not in BACKENDS:
            raise ValueError(f"{BACKEND_ENV}={choice!r}: expected one of {', '.join(BACKENDS)}")
        found = _load(choice)
        if found is None:
            raise ValueError(f"{BACKEND_ENV}={choice!r}: {_MODULES[choice][0]} is not installed")
        return found
    return next(t for t in map(_load, BACKENDS) if t is not None)


def next_fast_len(n: int) -> int:
    """The smallest 2-3-5-smooth integer >= ``n`` (the lengths pocketfft transforms fastest)."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


class FftPlan(NamedTuple):
    """Lengths and index maps of one problem (rank 2 or 3: every spatial axis)."""

    lengths: tuple       # L per axis
    spectrum: tuple      # rfftn's output shape per axis: L, ..., L_last // 2 + 1
    taps: tuple          # per axis: where each kernel tap sits in the length-L kernel array
    crops: tuple         # per axis: the slice of the circular result that is the output


@functools.lru_cache(maxsize=64)
def plan(geom) -> FftPlan:
    lengths, taps, crops = [], [], []
    for n, k, s, d, (lo, hi), o in zip(geom.in_size, geom.kernel, geom.stride, geom.dilation, geom.padding,
                                       geom.out_size):
        # Output j reads positions j*s + t*d - lo; wrapped around L they must land on x itself or on the
        # zeros after it: the negative ones (down to -lo) at L - lo >= n, the last one below L; taps apart.
        last = (o - 1) * s + (k - 1) * d - lo
        L = next_fast_len(max(n + lo, last + 1, (k - 1) * d + 1, (o - 1) * s + 1))
        lengths.append(L)
        taps.append(tuple((t * d - lo) % L for t in range(k)))
        crops.append(slice(0, (o - 1) * s + 1, s))
    spectrum = tuple(lengths[:-1]) + (lengths[-1] // 2 + 1,)
    return FftPlan(lengths=tuple(lengths), spectrum=spectrum, taps=tuple(taps), crops=tuple(crops))


#: Fewest kernel taps per output the strategy takes: below it a transform costs more than the sums
#: it replaces on every layer measured (image_filter, 3x3: 2.1 ms against direct's 0.09), and measure
#: mode should not time it there.
MIN_TAPS = 16


def supports(op, geom) -> bool:
    """Convolutions (forward) of any geometry in float32 or float64 with at least :data:`MIN_TAPS` taps,
    whose kernel spectra (computed once per call, ``C_out x C_in/groups x`` the transform's size) fit a
    quarter of the workspace cap (so that measure mode never times a call that would allocate a GiB)."""
    if op != "conv" or geom.dtype not in ("float32", "float64") or math.prod(geom.kernel) < MIN_TAPS:
        return False
    spectra = geom.out_channels * (geom.in_channels // geom.groups) * math.prod(plan(geom).spectrum)
    return spectra * 2 * np.dtype(geom.dtype).itemsize <= get_workspace_limit() // 4


@kernel
def _products(xf, wf, groups, yf):
    """``yf[n, g*Cog + o, f] = sum_c xf[n, g*Cg + c, f] * conj(wf[g*Cog + o, c, f])``: flat spectra,
    ``xf (N, C_in, F)``, ``wf (C_out, Cg, F)``, ``yf (N, C_out, F)``; frequencies innermost, in blocks
    that stay in L1 while every input channel adds its products."""
    N, C_in, F = xf.shape
    C_out, cg = wf.shape[0], wf.shape[1]
    cog = C_out // groups
    blocks = (F + 1023) // 1024
    for item in prange(N * C_out * blocks):
        b = item % blocks
        co = (item // blocks) % C_out
        n = item // (blocks * C_out)
        g = co // cog
        f0 = b * 1024
        f1 = min(F, f0 + 1024)
        acc = yf[n, co, f0:f1]
        acc[:] = 0
        for c in range(cg):
            xs = xf[n, g * cg + c, f0:f1]
            ws = wf[co, c, f0:f1]
            for f in range(f1 - f0):
                acc[f] += xs[f] * ws[f].conjugate()


def _angles(taps, frequencies, L):
    """``-2 pi f t / L`` for taps ``t`` (rows) and frequencies ``f`` (columns), the phase reduced modulo ``L``
    in integers first, so it stays accurate for long transforms."""
    return (-2 * np.pi / L) * (np.outer(np.asarray(taps, dtype=np.int64), np.arange(frequencies, dtype=np.int64)) % L)


@functools.lru_cache(maxsize=32)
def _dft(taps, frequencies, L, complex_dtype):
    """``exp(-2 pi i f t / L)`` (:func:`_angles`). Kept per plan (read-only): the complex exponentials cost
    more than the products they feed on a one-channel 31x31 filter."""
    matrix = np.exp(1j * _angles(taps, frequencies, L)).astype(complex_dtype)
    matrix.flags.writeable = False
    return matrix


#: Kernels with more taps than this along an axis are transformed by placing them on the whole grid
#: and calling the FFT (the DFT-matrix products cost taps x frequencies per axis).
DFT_MAX_TAPS = 64


def kernel_spectra(weight, geom, complex_dtype, fft=None):
    """The kernels' spectra, ``(C_out, Cg, F)``: :func:`_dft_spectra` for short kernels, else the kernels
    placed on the grid (taps at distinct positions: :func:`plan` makes ``L`` long enough) through ``fft``,
    a :class:`Transforms`."""
    p = plan(geom)
    if max(weight.shape[2:]) <= DFT_MAX_TAPS or fft is None:
        return _dft_spectra(weight, geom, complex_dtype)
    real = np.float32 if np.dtype(complex_dtype) == np.complex64 else np.float64
    placed = np.zeros(weight.shape[:2] + p.lengths, dtype=real)
    placed[(slice(None), slice(None)) + np.ix_(*[np.asarray(t) for t in p.taps])] = weight
    return fft.forward(placed, p.lengths, numba.get_num_threads()).astype(complex_dtype, copy=False).reshape(
        weight.shape[0], weight.shape[1], -1)


def _dft_spectra(weight, geom, complex_dtype):
    """``rfftn`` of every kernel placed on the ``L``-grid (tap ``t`` at ``(t*dilation - lo) mod L``), without
    building that mostly-zero grid: along each axis the transform of ``k`` taps at known positions is a
    product with a ``(k x F)`` DFT matrix, last axis first (the real one: ``L//2 + 1`` frequencies),
    each stage one BLAS call or a batch of them writing the next layout directly.
    Returns ``(C_out, Cg, F)``."""
    p = plan(geom)
    C_out, cg, *ks = weight.shape
    last = len(ks) - 1
    spectra = weight.astype(complex_dtype).reshape(-1, ks[last]) @ _dft(p.taps[last], p.spectrum[last],
                                                                         p.lengths[last], complex_dtype)
    after = p.spectrum[last]  # frequencies of the axes already transformed, flattened
    for axis in reversed(range(last)):
        before = math.prod(ks[:axis])
        matrix = _dft(p.taps[axis], p.spectrum[axis], p.lengths[axis], complex_dtype).T  # (F_axis, k_axis)
        spectra = np.matmul(matrix, spectra.reshape(C_out, cg, before, ks[axis], after))
        after *= p.spectrum[axis]
    return spectra.reshape(C_out, cg, -1)


@inlined
def _row_products(xs, ks, images, channels, rows_in, taps, stride, dilation, out_channels, out_rows, freqs, ys, width):
    """The "rows" form (:func:`_conv_rows`): ``Y[n, o, i, f] = sum_c sum_a X[n, c, i*stride + a*dilation, f] *
    conj(K[o, c, a, f])`` on spectra split into real and imaginary parts, vectorised over the frequencies
    ``f``, in blocks of ``width`` (``B = freqs // width`` of them, flat arrays):

    - ``xs (images, channels, rows_in, B, 2, width)``: real, imaginary;
    - ``ks (out_channels // 2, channels, taps, B, 6, width)``: real, imaginary, negated imaginary of an
      even output channel, then of the odd one;
    - ``ys (images, out_channels, out_rows, B, 2, width)``.

    ``out_channels`` and ``out_rows`` even. A tile of 2 output channels x 2 rows x one vector of frequencies,
    real and imaginary parts (8 accumulators), stays in registers over every channel and tap; every load but
    the second row's sits at a constant offset from one of two addresses, so the loop needs few integer
    registers. Inlined into the kernels of 8 and 4 lanes (``_row_products_w8``, ``_w4``: ``width`` a literal there;
    16 lanes run :func:`_row_products_r4`)."""
    blocks = freqs // width
    r_blocks = out_rows // 2
    o_pairs = out_channels // 2
    row = 2 * freqs             # one row of xs and ys
    step = stride * row         # from output row i0 to i0 + 1
    k_tap = 6 * freqs           # one tap of an output channel pair
    for item in prange(images * o_pairs * r_blocks * blocks):
        b = item % blocks
        rest = item // blocks
        i0 = (rest % r_blocks) * 2
        rest //= r_blocks
        pair = rest % o_pairs
        n = rest // o_pairs
        a0r = vzero(ys, width)
        a0i = a0r
        a1r = a0r
        a1i = a0r
        b0r = a0r
        b0i = a0r
        b1r = a0r
        b1i = a0r
        for c in range(channels):
            x_at = ((n * channels + c) * rows_in + i0 * stride) * row + b * 2 * width
            k_at = (pair * channels + c) * taps * k_tap + b * 6 * width
            for a in range(taps):
                x0r = vload(xs, x_at, width)
                x0i = vload(xs, x_at + width, width)
                x1r = vload(xs, x_at + step, width)
                x1i = vload(xs, x_at + step + width, width)
                k_r = vload(ks, k_at, width)  # the even output channel: rows i0 (a0) and i0 + 1 (a1)
                k_i = vload(ks, k_at + width, width)
                k_n = vload(ks, k_at + 2 * width, width)
                a0r = vfma(x0i, k_i, vfma(x0r, k_r, a0r))
                a1r = vfma(x1i, k_i, vfma(x1r, k_r, a1r))
                a0i = vfma(x0r, k_n, vfma(x0i, k_r, a0i))
                a1i = vfma(x1r, k_n, vfma(x1i, k_r, a1i))
                k_r = vload(ks, k_at + 3 * width, width)  # the odd one (b0, b1)
                k_i = vload(ks, k_at + 4 * width, width)
                k_n = vload(ks, k_at + 5 * width, width)
                b0r = vfma(x0i, k_i, vfma(x0r, k_r, b0r))
                b1r = vfma(x1i, k_i, vfma(x1r, k_r, b1r))
                b0i = vfma(x0r, k_n, vfma(x0i, k_r, b0i))
                b1i = vfma(x1r, k_n, vfma(x1i, k_r, b1i))
                x_at += dilation * row
                k_at += k_tap
        y0 = ((n * out_channels + 2 * pair) * out_rows + i0) * row + b * 2 * width
        y1 = y0 + out_rows * row
        vstore(ys, y0, a0r)
        vstore(ys, y0 + width, a0i)
        vstore(ys, y0 + row, a1r)
        vstore(ys, y0 + row + width, a1i)
        vstore(ys, y1, b0r)
        vstore(ys, y1 + width, b0i)
        vstore(ys, y1 + row, b1r)
        vstore(ys, y1 + row + width, b1i)


@inlined
def _row_products_r4(xs, ks, images, channels, rows_in, taps, stride, dilation, out_channels, out_rows, freqs, ys,
                     width):
    """:func:`_row_products` with a tile of 2 output channels x 4 rows (16 accumulators: for 32 vector
    registers): each kernel vector loaded serves 4 rows, not 2 (14 loads per 32 FMAs instead of 10 per 16).
    multichannel_15x15's products 5.7 ms against 8.9 with the 2-row tile (Zen 4). ``out_rows`` a multiple
    of 4; each output summed in the same order as there (bit for bit the same results)."""
    blocks = freqs // width
    r_blocks = out_rows // 4
    o_pairs = out_channels // 2
    row = 2 * freqs
    step = stride * row
    k_tap = 6 * freqs
    for item in prange(images * o_pairs * r_blocks * blocks):
        b = item % blocks
        rest = item // blocks
        i0 = (rest % r_blocks) * 4
        rest //= r_blocks
        pair = rest % o_pairs
        n = rest // o_pairs
        a0r = vzero(ys, width)
        a0i = a0r
        a1r = a0r
        a1i = a0r
        a2r = a0r
        a2i = a0r
        a3r = a0r
        a3i = a0r
        b0r = a0r
        b0i = a0r
        b1r = a0r
        b1i = a0r
        b2r = a0r
        b2i = a0r
        b3r = a0r
        b3i = a0r
        for c in range(channels):
            x_at = ((n * channels + c) * rows_in + i0 * stride) * row + b * 2 * width
            k_at = (pair * channels + c) * taps * k_tap + b * 6 * width
            for a in range(taps):
                k_r = vload(ks, k_at, width)  # the even output channel (a: rows i0 .. i0 + 3)
                k_i = vload(ks, k_at + width, width)
                k_n = vload(ks, k_at + 2 * width, width)
                l_r = vload(ks, k_at + 3 * width, width)  # the odd one (b)
                l_i = vload(ks, k_at + 4 * width, width)
                l_n = vload(ks, k_at + 5 * width, width)
                xr = vload(xs, x_at, width)
                xi = vload(xs, x_at + width, width)
                a0r = vfma(xi, k_i, vfma(xr, k_r, a0r))
                a0i = vfma(xr, k_n, vfma(xi, k_r, a0i))
                b0r = vfma(xi, l_i, vfma(xr, l_r, b0r))
                b0i = vfma(xr, l_n, vfma(xi, l_r, b0i))
                xr = vload(xs, x_at + step, width)
                xi = vload(xs, x_at + step + width, width)
                a1r = vfma(xi, k_i, vfma(xr, k_r, a1r))
                a1i = vfma(xr, k_n, vfma(xi, k_r, a1i))
                b1r = vfma(xi, l_i, vfma(xr, l_r, b1r))
                b1i = vfma(xr, l_n, vfma(xi, l_r, b1i))
                xr = vload(xs, x_at + 2 * step, width)
                xi = vload(xs, x_at + 2 * step + width, width)
                a2r = vfma(xi, k_i, vfma(xr, k_r, a2r))
                a2i = vfma(xr, k_n, vfma(xi, k_r, a2i))
                b2r = vfma(xi, l_i, vfma(xr, l_r, b2r))
                b2i = vfma(xr, l_n, vfma(xi, l_r, b2i))
                xr = vload(xs, x_at + 3 * step, width)
                xi = vload(xs, x_at + 3 * step + width, width)
                a3r = vfma(xi, k_i, vfma(xr, k_r, a3r))
                a3i = vfma(xr, k_n, vfma(xi, k_r, a3i))
                b3r = vfma(xi, l_i, vfma(xr, l_r, b3r))
                b3i = vfma(xr, l_n, vfma(xi, l_r, b3i))
                x_at += dilation * row
                k_at += k_tap
        y0 = ((n * out_channels + 2 * pair) * out_rows + i0) * row + b * 2 * width
        y1 = y0 + out_rows * row
        vstore(ys, y0, a0r)
        vstore(ys, y0 + width, a0i)
        vstore(ys, y0 + row, a1r)
        vstore(ys, y0 + row + width, a1i)
        vstore(ys, y0 + 2 * row, a2r)
        vstore(ys, y0 + 2 * row + width, a2i)
        vstore(ys, y0 + 3 * row, a3r)
        vstore(ys, y0 + 3 * row + width, a3i)
        vstore(ys, y1, b0r)
        vstore(ys, y1 + width, b0i)
        vstore(ys, y1 + row, b1r)
        vstore(ys, y1 + row + width, b1i)
        vstore(ys, y1 + 2 * row, b2r)
        vstore(ys, y1 + 2 * row + width, b2i)
        vstore(ys, y1 + 3 * row, b3r)
        vstore(ys, y1 + 3 * row + width, b3i)


# One kernel per vector width (a literal in each: the layout's blocks have that width), named for it so
# that a cached build is never used with another width (FASTCONV_SIMD=avx2 on an AVX-512 machine).
@kernel
def _row_products_w16(xs, ks, images, channels, rows_in, taps, stride, dilation, out_channels, out_rows, freqs, ys):
    _row_products_r4(xs, ks, images, channels, rows_in, taps, stride, dilation, out_channels, out_rows, freqs, ys, 16)


@kernel
def _row_products_w8(xs, ks, images, channels, rows_in, taps, stride, dilation, out_channels, out_rows, freqs, ys):
    _row_products(xs, ks, images, channels, rows_in, taps, stride, dilation, out_channels, out_rows, freqs, ys, 8)


@kernel
def _row_products_w4(xs, ks, images, channels, rows_in, taps, stride, dilation, out_channels, out_rows, freqs, ys):
    _row_products(xs, ks, images, channels, rows_in, taps, stride, dilation, out_channels, out_rows, freqs, ys, 4)


_ROW_PRODUCTS = {16: _row_products_w16, 8: _row_products_w8, 4: _row_products_w4}
#: Output rows per register tile of each width's kernel: 4 with 16 lanes (AVX-512's 32 registers hold the
#: 16 accumulators), 2 with 8 or 4 (AVX2's 16 registers; float64 on AVX-512 too: one kernel per width).
TILE_ROWS = {16: 4, 8: 2, 4: 2}


def _even(n: int) -> int:
    return n + (n & 1)


class RowsPlan(NamedTuple):
    """The "rows" form's sizes: input rows padded (``rows_in``), output channels padded to even, output rows to
    whole register tiles (:data:`TILE_ROWS`), frequencies to whole vectors (``freqs``; ``F`` of them real)."""

    rows_in: int
    out_channels: int
    out_rows: int
    F: int
    freqs: int


def rows_plan(geom) -> RowsPlan:
    lanes = _simd.LANES[geom.dtype]
    L = plan(geom).lengths[-1]
    F = L // 2 + 1
    tile = TILE_ROWS[lanes]
    out_rows = -(-geom.out_size[0] // tile) * tile
    (lo, _), k, s, d = geom.padding[0], geom.kernel[0], geom.stride[0], geom.dilation[0]
    rows_in = max(lo + geom.in_size[0], (out_rows - 1) * s + (k - 1) * d + 1)
    return RowsPlan(rows_in, _even(geom.out_channels), out_rows, F, -(-F // lanes) * lanes)


#: What a complex multiply-add of the full form costs against one of the rows form's (memory-bound spectra
#: and per-frequency products against a register-tiled kernel), measured (Zen 4, 2026-12-05, rows / full ms,
#: rows form's multiply-adds over the full form's in brackets): 16 -> 16 channels 15x15 on 256x256 10.6 / 25+
#: (0.94), batch 4 42 / 50 (3.2), batch 8 88 / 107 (5.2); 4 -> 4 batch 8 10.0 / 11.3 (5.2); 8 -> 8 11x11 on
#: 128x128 batch 16 13.1 / 11.3 (7.3); 3 -> 8 21x21 on 512x512 batch 2 15.9 / 18.1 (1.7); one channel 31x31
#: on 1024x1024 4.6 / 5.6 (1.9). The forms break even near 6.
FULL_COST = 6


def form(geom, kept: bool | None = None) -> str:
    """``"rows"`` (one FFT axis, the other summed directly: :func:`_conv_rows`) or ``"full"`` (the module
    docstring's): the one with fewer weighted complex multiply-adds. The rows form needs rank 2, one group and
    the SIMD layer, and more than one row (a 1D layer, lifted to one row, has no columns to sum: its
    register tile would compute padding rows; long1d_k511 4.2 ms full, 5.0-6.4 rows, Zen 4); the full form's
    kernel spectra cost nothing after the first call under a :class:`~fastconv.WeightCache` (a layer's), so it
    is costed without them there (``kept``: whether they are kept; by default, whether a WeightCache is
    current)."""
    if (geom.rank != 2 or geom.groups != 1 or not _simd.AVAILABLE or geom.dtype not in ("float32", "float64")
            or geom.in_size[0] == 1):
        return "full"
    r, p = rows_plan(geom), plan(geom)
    pairs = geom.out_channels * geom.in_channels
    F0, F1 = p.spectrum
    kept = keeping() if kept is None else kept
    full = pairs * F0 * F1 * (geom.batch + (0 if kept else geom.kernel[0]))
    rows = geom.batch * r.out_channels * geom.in_channels * geom.kernel[0] * r.out_rows * r.freqs
    return "rows" if rows <= FULL_COST * full else "full"


def _rows_images_per_chunk(geom, itemsize) -> int:
    """Images the rows form transforms at once: as many as the workspace cap holds (at least one)."""
    return max(1, min(geom.batch, get_workspace_limit() // max(1, _rows_image_bytes(geom, itemsize))))


def _rows_image_bytes(geom, itemsize) -> int:
    r = rows_plan(geom)
    L = plan(geom).lengths[-1]
    return itemsize * (2 * geom.in_channels * (r.rows_in * r.freqs + geom.in_size[0] * r.F)  # spectra, split
                       + 2 * r.out_channels * r.out_rows * r.freqs + 2 * geom.out_channels * geom.out_size[0] * r.F
                       + geom.out_channels * geom.out_size[0] * L + geom.in_channels * geom.in_size[0] * L)


@kernel
def _split_rows(spectra, lo, out):
    """``out[n, c, lo + h, b, 0 | 1, w] = spectra[n, c, h, b*width + w]``'s real | imaginary part: row spectra
    ``(N, C, H, F)`` into :func:`_row_products`' layout ``(N, C, rows, B, 2, width)``; every other element of
    ``out`` (the padding rows and frequencies) set to zero."""
    N, C, H, F = spectra.shape
    rows, blocks, width = out.shape[2], out.shape[3], out.shape[5]
    zero = out.dtype.type(0)
    for item in prange(N * C * rows):
        r = item % rows
        c = (item // rows) % C
        n = item // (rows * C)
        h = r - lo
        inside = 0 <= h < H
        for b in range(blocks):
            for w in range(width):
                f = b * width + w
                if inside and f < F:
                    v = spectra[n, c, h, f]
                    out[n, c, r, b, 0, w] = v.real
                    out[n, c, r, b, 1, w] = v.imag
                else:
                    out[n, c, r, b, 0, w] = zero
                    out[n, c, r, b, 1, w] = zero


@inlined
def _row_spectra(weight, cos, sin, out, shape, width):
    """Every kernel row's spectrum along the last axis, straight into :func:`_row_products`' layout (flat
    arrays): ``out (pairs, Cg, kH, B, 6, width)[p, c, a, :, 3j + (0, 1, 2), :]`` = real, imaginary, negated
    imaginary part of ``sum_t weight[2p + j, c, a, t] * (cos[t] + 1j * sin[t])``; ``weight (C_out, Cg, kH, kW)``,
    ``cos``, ``sin`` the DFT matrix's parts ``(kW, B * width)``, zero past the real frequencies; ``shape`` is
    ``(C_out, Cg, kH, kW, pairs, B)``. Zero for the channels beyond ``C_out``. Two vector FMAs per tap and
    block of frequencies (as a complex GEMM followed by a reordering copy it took 1.2 ms for 16 x 16 15x15
    kernels on a 270 grid, Zen 4: OpenBLAS's complex GEMM with 15-long sums). Inlined into one kernel per
    width (``_row_spectra_w16``, ...)."""
    C_out, cg, k0, k1, pairs, blocks = shape
    freqs = blocks * width
    zero = vzero(out, width)
    for item in prange(2 * pairs * cg * k0):
        j = item % 2
        rest = item // 2
        o = 2 * (rest // (k0 * cg)) + j
        at = rest * blocks * 6 * width + 3 * j * width
        w_at = ((o * cg + (rest // k0) % cg) * k0 + rest % k0) * k1
        for b in range(blocks):
            re = zero
            im = zero
            if o < C_out:
                for t in range(k1):
                    v = vbroadcast(weight, w_at + t, width)
                    re = vfma(v, vload(cos, t * freqs + b * width, width), re)
                    im = vfma(v, vload(sin, t * freqs + b * width, width), im)
            vstore(out, at, re)
            vstore(out, at + width, im)
            vstore(out, at + 2 * width, vsub(zero, im))
            at += 6 * width


@kernel
def _row_spectra_w16(weight, cos, sin, out, shape):
    _row_spectra(weight, cos, sin, out, shape, 16)


@kernel
def _row_spectra_w8(weight, cos, sin, out, shape):
    _row_spectra(weight, cos, sin, out, shape, 8)


@kernel
def _row_spectra_w4(weight, cos, sin, out, shape):
    _row_spectra(weight, cos, sin, out, shape, 4)


_ROW_SPECTRA = {16: _row_spectra_w16, 8: _row_spectra_w8, 4: _row_spectra_w4}


@kernel
def _join_rows(ys, out):
    """``out[n, o, i, f] = ys[n, o, i, f // width, 0, f % width] + 1j * ys[..., 1, ...]`` for the ``out``'s
    channels, rows and frequencies: :func:`_row_products`' result back to complex row spectra."""
    N, C, H, F = out.shape
    width = ys.shape[5]
    for item in prange(N * C * H):
        h = item % H
        c = (item // H) % C
        n = item // (H * C)
        for b in range((F + width - 1) // width):
            for w in range(min(width, F - b * width)):
                out[n, c, h, b * width + w] = complex(ys[n, c, h, b, 0, w], ys[n, c, h, b, 1, w])


def _row_kernels(weight, geom, owned):
    """``(C_out // 2 (rounded up), C_in, kH, B, 6, width)`` (the layout of :func:`_row_products`): real,
    imaginary and negated imaginary parts of every kernel row's spectrum along the last axis, zero in the
    padding."""
    r, p = rows_plan(geom), plan(geom)
    C_out, cg, k0, k1 = weight.shape
    width = _simd.LANES[geom.dtype]
    shape = (r.out_channels // 2, cg, k0, r.freqs // width, 6, width)
    parts = np.empty(shape, weight.dtype) if owned else scratch(math.prod(shape), weight.dtype, "fft-rows-k").reshape(shape)
    if k1 > DFT_MAX_TAPS:  # long rows (a 1D filter): by FFT, as the full form's (a taps x frequencies table is huge)
        L = p.lengths[-1]
        placed = np.zeros((C_out, cg, k0, L), weight.dtype)
        placed[..., list(p.taps[-1])] = weight
        spectra = transforms().forward(placed, (L,), numba.get_num_threads())  # (C_out, cg, k0, F)
        parts[...] = 0
        for j in range(2):
            rows = spectra[j::2]
            padded = np.zeros(rows.shape[:3] + (r.freqs,), spectra.dtype)
            padded[..., :r.F] = rows
            padded = padded.reshape(rows.shape[:3] + shape[3:4] + (width,))
            parts[:len(rows), :, :, :, 3 * j] = padded.real
            parts[:len(rows), :, :, :, 3 * j + 1] = padded.imag
            parts[:len(rows), :, :, :, 3 * j + 2] = -padded.imag
        return parts
    cos, sin = _dft_parts(p.taps[-1], r.F, r.freqs, p.lengths[-1], weight.dtype.str)
    with _jit.launch():
        _ROW_SPECTRA[width](np.ascontiguousarray(weight).reshape(-1), cos, sin, parts.reshape(-1),
                            (C_out, cg, k0, k1, shape[0], shape[3]))
    return parts


@functools.lru_cache(maxsize=32)
def _dft_parts(taps, frequencies, padded, L, dtype):
    """The real and imaginary parts of :func:`_dft`'s matrix in ``dtype``, ``(taps, padded)`` flat, zero past
    ``frequencies`` (read-only, kept per plan; at most :data:`DFT_MAX_TAPS` taps)."""
    angle = _angles(taps, frequencies, L)
    parts = np.zeros((2, len(taps) * padded), dtype)
    parts.reshape(2, len(taps), padded)[0, :, :frequencies] = np.cos(angle)
    parts.reshape(2, len(taps), padded)[1, :, :frequencies] = np.sin(angle)
    parts.flags.writeable = False
    return parts[0], parts[1]


def _conv_rows(x, weight, bias, geom, out, fft):
    """The "rows" form: real FFTs along the last axis only; per frequency, the convolution along the other
    axis summed directly (:func:`_row_products`) with the kernels' row spectra; inverse along the last axis.
    ``kH`` times the complex products of the full form's, but no 2D transforms and no ``C_out x C_in``
    full-size kernel spectra: the faster form for one image with many channels."""
    r, p = rows_plan(geom), plan(geom)
    L, threads = p.lengths[-1], numba.get_num_threads()
    real = x.dtype.type if x.dtype in (np.float32, np.float64) else np.float64
    parts = prepared("fft-rows", weight, (L, p.taps[-1], r.freqs, np.dtype(real).str),
                     lambda owned: _row_kernels(weight.astype(real, copy=False), geom, owned))
    lo = geom.padding[0][0]
    H, oH, C, C_out = geom.in_size[0], geom.out_size[0], geom.in_channels, geom.out_channels
    images = _rows_images_per_chunk(geom, np.dtype(real).itemsize)
    width = _simd.LANES[np.dtype(real).name]
    products = _ROW_PRODUCTS[width]
    for n0 in range(0, geom.batch, images):
        n1 = min(geom.batch, n0 + images)
        m = n1 - n0
        xs = fft.forward(x[n0:n1].astype(real, copy=False), (L,), threads, scratch=True)  # (m, C, H, F)
        shape = (m, C, r.rows_in, r.freqs // width, 2, width)
        split = scratch(math.prod(shape), real, "fft-rows-x").reshape(shape)
        with _jit.launch():
            _split_rows(xs, lo, split)
        del xs
        shape = (m, r.out_channels, r.out_rows, r.freqs // width, 2, width)
        y = scratch(math.prod(shape), real, "fft-rows-y").reshape(shape)
        with _jit.launch():
            products(split.reshape(-1), parts.reshape(-1), m, C, r.rows_in, geom.kernel[0], geom.stride[0],
                     geom.dilation[0], r.out_channels, r.out_rows, r.freqs, y.reshape(-1))
        del split
        ys = _buffer((m, C_out, oH, r.F), np.complex64 if real == np.float32 else np.complex128, "fft-rows-spectra",
                     True)
        with _jit.launch():
            _join_rows(y, ys)
        del y
        rows = fft.inverse(ys, (L,), threads, scratch=True)
        crop = (slice(None), slice(None), slice(None), p.crops[-1])
        if bias is not None:
            np.add(rows[crop], bias.reshape(1, -1, 1, 1), out=out[n0:n1], casting="unsafe")
        else:
            np.copyto(out[n0:n1], rows[crop], casting="unsafe")


def _spectra_dtype(dtype, fft):
    """Complex dtype of the spectra: complex64 for float32 where the transforms keep single precision."""
    return np.complex64 if (fft.single and np.dtype(dtype) == np.float32) else np.complex128


def _per_image_bytes(geom, complex_size) -> int:
    """One image's input spectra, its output spectra, the inverse transforms' real output and the
    zero-extended input copy (ducc0's transforms do not extend)."""
    p = plan(geom)
    F, L = math.prod(p.spectrum), math.prod(p.lengths)
    return (geom.in_channels + geom.out_channels) * F * complex_size + (
        geom.out_channels + geom.in_channels) * L * complex_size // 2


def _images_per_chunk(geom, complex_size, limit) -> int:
    fixed = geom.out_channels * (geom.in_channels // geom.groups) * math.prod(plan(geom).spectrum) * complex_size
    return max(1, min(geom.batch, (limit - fixed) // max(_per_image_bytes(geom, complex_size), 1)))


def workspace_bytes(op, geom, itemsize) -> int:
    """Kernel spectra, and per chunk of images the input and output spectra and the inverse transforms."""
    if not supports(op, geom):
        return 0
    fft = transforms()
    if fft.single and form(geom) == "rows":
        r = rows_plan(geom)
        kernels = r.out_channels * geom.in_channels * geom.kernel[0] * 3 * r.freqs * itemsize
        return kernels + _rows_image_bytes(geom, itemsize) * _rows_images_per_chunk(geom, itemsize)
    complex_size = np.dtype(_spectra_dtype(geom.dtype, fft)).itemsize
    images = _images_per_chunk(geom, complex_size, get_workspace_limit())
    fixed = geom.out_channels * (geom.in_channels // geom.groups) * math.prod(plan(geom).spectrum) * complex_size
    return fixed + images * _per_image_bytes(geom, complex_size)


def conv(x, weight, bias, geom, out):
    """Convolution of ``x`` (N, C_in, *spatial) into ``out`` through real FFTs (see the module docstring)."""
    fft = transforms()
    if fft.single and form(geom) == "rows":
        return _conv_rows(x, weight, bias, geom, out, fft)
    rank = geom.rank
    p = plan(geom)
    threads = numba.get_num_threads()
    complex_dtype = _spectra_dtype(x.dtype, fft)
    real = np.float32 if complex_dtype == np.complex64 else np.float64
    C_out = weight.shape[0]
    wf = prepared("fft", weight, (p.lengths, p.taps, np.dtype(complex_dtype).str),  # once per call, or kept by a layer
                  lambda owned: kernel_spectra(weight, geom, complex_dtype, fft))
    F = wf.shape[2]
    images = _images_per_chunk(geom, np.dtype(wf.dtype).itemsize, get_workspace_limit())
    crop = (slice(None), slice(None)) + p.crops
    for n0 in range(0, geom.batch, images):
        n1 = min(geom.batch, n0 + images)
        xf = fft.forward(x[n0:n1].astype(real, copy=False), p.lengths, threads, scratch=True).reshape(
            n1 - n0, geom.in_channels, F)
        yf = scratch((n1 - n0) * C_out * F, wf.dtype, "fft-products").reshape(n1 - n0, C_out, F)
        with _jit.launch():
            _products(xf, wf, geom.groups, yf)
        del xf
        y = fft.inverse(yf.reshape((n1 - n0, C_out) + p.spectrum), p.lengths, threads, scratch=True)
        if bias is not None:
            np.add(y[crop], bias.reshape((1, -1) + (1,) * rank), out=out[n0:n1], casting="unsafe")
        else:
            np.copyto(out[n0:n1], y[crop], casting="unsafe")


STRATEGY = Strategy(
    name="fft",
    summary="real FFTs per channel, per-frequency channel products, one inverse per output channel: large kernels",
    ranks=(2, 3),
    ops={"conv": conv},
    supports=supports,
    workspace_bytes=workspace_bytes,
    tolerance={"float32": (1e-3, 1e-3), "float64": (1e-9, 1e-9)},
    error_bound=ERROR_BOUND,
)
