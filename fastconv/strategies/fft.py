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
(``fastconv.dispatch`` decides with a measured cost model).

``L`` per axis is the smallest 2-3-5-smooth length at which the wrap-around reaches no output
(:func:`plan`: ``n + max(lo, hi)`` for a 'same' convolution, ``n`` for a 'valid' one).

The transforms (:func:`transforms`) are ducc0's where it is installed (``pip install fastconv[ducc]``;
ducc0 is GPL-2.0-or-later, so fastconv never installs it by itself: 1.5-1.8x faster than
scipy.fft on the bench shapes, Zen 4, 2026-12-05), else scipy.fft's (``pip install fastconv[fft]``),
both with fastconv's thread count and float32 kept float32; else numpy.fft's (single-threaded,
float64 internally). ``FASTCONV_FFT=ducc0|scipy|numpy`` picks one. Rounding differs from a sum of products: the error is relative to the
whole signal's energy, not to each output (measured bounds in :data:`ERROR_BOUND`; below direct's
own float32 error on the layers measured), so ``auto`` considers it under the precision setting
"high" only, like Winograd.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numba
import numpy as np
from numba import prange

from .. import _jit
from .._jit import kernel
from .._prepared import prepared
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
    """One FFT library behind the strategy. ``forward(x, lengths, threads)``: ``rfftn`` over the last
    ``len(lengths)`` axes of ``x`` zero-extended to ``lengths``; ``inverse(spectra, lengths, threads)``: its
    inverse (``spectra`` may be overwritten). ``single``: float32 is transformed in float32."""

    name: str
    single: bool
    forward: object
    inverse: object


def _zero_extended(x, lengths):
    """``x`` zero-extended at the end of its last ``len(lengths)`` axes (``x`` itself when it needs nothing)."""
    rank = len(lengths)
    if tuple(x.shape[-rank:]) == tuple(lengths):
        return x
    buf = np.empty(x.shape[:-rank] + tuple(lengths), dtype=x.dtype)
    buf[(Ellipsis,) + tuple(slice(0, n) for n in x.shape[-rank:])] = x
    for axis, n in enumerate(x.shape[-rank:]):
        buf[(Ellipsis,) + (slice(None),) * axis + (slice(n, None),) + (slice(None),) * (rank - 1 - axis)] = 0
    return buf


def _ducc0(module):
    fft = module.fft

    def forward(x, lengths, threads):
        axes = tuple(range(x.ndim - len(lengths), x.ndim))
        return fft.r2c(_zero_extended(x, lengths), axes=axes, nthreads=threads)

    def inverse(spectra, lengths, threads):
        axes = tuple(range(spectra.ndim - len(lengths), spectra.ndim))
        return fft.c2r(spectra, axes=axes, lastsize=lengths[-1], forward=False, inorm=2, nthreads=threads,
                       allow_overwriting_input=True)

    return Transforms("ducc0", True, forward, inverse)


def _scipy(module):
    def forward(x, lengths, threads):
        return module.rfftn(x, s=lengths, axes=tuple(range(x.ndim - len(lengths), x.ndim)), workers=threads)

    def inverse(spectra, lengths, threads):
        return module.irfftn(spectra, s=lengths, axes=tuple(range(spectra.ndim - len(lengths), spectra.ndim)),
                             workers=threads, overwrite_x=True)

    return Transforms("scipy", True, forward, inverse)


def _numpy(module):
    def forward(x, lengths, threads):
        return module.rfftn(x, s=lengths, axes=tuple(range(x.ndim - len(lengths), x.ndim)))

    def inverse(spectra, lengths, threads):
        return module.irfftn(spectra, s=lengths, axes=tuple(range(spectra.ndim - len(lengths), spectra.ndim)))

    return Transforms("numpy", False, forward, inverse)


_MODULES = {"ducc0": ("ducc0", _ducc0), "scipy": ("scipy.fft", _scipy), "numpy": ("numpy.fft", _numpy)}


@functools.lru_cache(maxsize=None)
def _load(name):
    import importlib

    module, wrap = _MODULES[name]
    try:
        return wrap(importlib.import_module(module))
    except ImportError:
        return None


def transforms() -> Transforms:
    """The transforms in use: ``$FASTCONV_FFT`` if set (a clear error when it names something unknown or
    not installed), else ducc0, scipy.fft or numpy.fft, the first installed."""
    import os

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


@functools.lru_cache(maxsize=32)
def _dft(taps, frequencies, L, complex_dtype):
    """``exp(-2 pi i f t / L)`` for taps ``t`` (rows) and frequencies ``f`` (columns); the phase is reduced
    modulo ``L`` in integers first, so it stays accurate for long transforms. Kept per plan (read-only):
    the complex exponentials cost more than the products they feed on a one-channel 31x31 filter."""
    phase = np.outer(np.asarray(taps, dtype=np.int64), np.arange(frequencies, dtype=np.int64)) % L
    matrix = np.exp(-2j * np.pi * phase / L).astype(complex_dtype)
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
    complex_size = np.dtype(_spectra_dtype(geom.dtype, transforms())).itemsize
    images = _images_per_chunk(geom, complex_size, get_workspace_limit())
    fixed = geom.out_channels * (geom.in_channels // geom.groups) * math.prod(plan(geom).spectrum) * complex_size
    return fixed + images * _per_image_bytes(geom, complex_size)


def conv(x, weight, bias, geom, out):
    """Convolution of ``x`` (N, C_in, *spatial) into ``out`` through real FFTs (see the module docstring)."""
    fft = transforms()
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
        xf = fft.forward(x[n0:n1].astype(real, copy=False), p.lengths, threads).reshape(n1 - n0, geom.in_channels, F)
        yf = scratch((n1 - n0) * C_out * F, wf.dtype, "fft-products").reshape(n1 - n0, C_out, F)
        with _jit.launch():
            _products(xf, wf, geom.groups, yf)
        del xf
        y = fft.inverse(yf.reshape((n1 - n0, C_out) + p.spectrum), p.lengths, threads)  # yf is scratch: may be reused
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
