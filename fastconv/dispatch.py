"""Choosing and running a strategy: ``method="auto"`` (rules), forced methods, ``method="measure"``.

* :func:`choose_method` is a pure function of the problem (op, resolved problem record,
  dtype, thread count) returning the strategy ``"auto"`` runs. Its rules and constants
  come from measurements on one machine, written down in :data:`TUNED_ON`;
  ``benchmarks/derive_dispatch.py`` re-derives them. A rule's choice that cannot run a
  problem (a strategy may implement only some ops or ranks) falls back to the first
  automatic strategy of the registry that can.
* ``method="measure"`` (:mod:`fastconv.measure`) times the candidates the first time a
  problem is seen and remembers the winner; :mod:`fastconv.explain` says what and why.
* ``FASTCONV_METHOD=<name>`` replaces ``"auto"`` everywhere (an explicit ``method=``
  argument still wins).
* Memory is part of the choice: the strategies ``auto`` picks keep their scratch buffers
  under the cap (:mod:`fastconv.workspace`), and ``measure`` skips a candidate whose
  workspace would not fit.

Strategies come from the registry (:mod:`fastconv.strategies`); no strategy is named here
but in the rules.
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np

from . import strategies
from .precision import allows, get_precision

#: Where and when the rule constants below were measured.
TUNED_ON = ("2026-11-25, 2 cores of an Intel Xeon (AVX-512); re-checked and amended 2026-12-02 on 2 cores "
            "of an AMD EPYC (Zen 3, AVX2 + FMA); numba 0.68.1, numpy 2.4.6 with OpenBLAS 0.3.31, float32, "
            "2 threads; the 3D rule and the register-tiled (SIMD) rule 2026-12-05 on 2 cores of an AMD EPYC "
            "(Zen 4, AVX-512); re-derive with benchmarks/derive_dispatch.py")

#: The operations the dispatcher runs (rank-free; see :mod:`fastconv.strategies`).
OPS = strategies.OPS


def methods() -> tuple:
    """What ``method=`` accepts.

    Returns
    -------
    tuple of str
        'auto', 'measure' and every registered strategy, in registry order.
    """
    return ("auto", "measure") + strategies.names()


def candidates(op: str, geom, level: str | None = None) -> tuple:
    """The strategies ``auto`` and ``measure`` may choose for ``op`` on ``geom`` (registry order) under
    the precision setting ``level`` (default: the current one, :mod:`fastconv.precision`)."""
    level = level or get_precision()
    found = []
    for name in strategies.names():
        record = strategies.strategy(name)
        if record.automatic and record.can_run(op, geom) and allows(record.error_bound, geom.dtype, level):
            found.append(name)
    return tuple(found)


def check_method(method, fn: str) -> str:
    """Return ``method`` if it is a known name, else raise naming the valid ones."""
    known = methods()
    if not isinstance(method, str) or method not in known:
        raise ValueError(f"{fn}: method must be one of {', '.join(repr(m) for m in known)}, got {method!r}")
    return method


def _env_method():
    """The method forced by ``FASTCONV_METHOD``, or None."""
    forced = os.environ.get("FASTCONV_METHOD", "").strip()
    if not forced:
        return None
    known = methods()
    if forced not in known:
        raise ValueError(f"FASTCONV_METHOD must be one of {', '.join(repr(m) for m in known)}, got {forced!r}")
    return forced


def workspace_bytes(op: str, method: str, geom, itemsize: int) -> int:
    """Bytes of scratch memory ``method`` allocates for ``op`` on ``geom``, after chunking to the cap."""
    return int(strategies.strategy(method).workspace_bytes(op, geom, itemsize))


def padded_bytes(geom, itemsize: int) -> int:
    """Bytes of a zero-padded copy of a convolution's input (0 without padding, or for pooling)."""
    pads = getattr(geom, "padding", ())
    if not hasattr(geom, "in_channels") or all(lo == hi == 0 for lo, hi in pads):
        return 0
    padded = math.prod(n + lo + hi for n, (lo, hi) in zip(geom.in_size, pads))
    return geom.batch * geom.in_channels * padded * itemsize


# ----------------------------------------------------------------------------------------------
# The rules of "auto"


#: 3D convolutions (computed as 2D problems over the depth taps, strategies/_depth.py) go to the
#: direct kernels: on the AMD EPYC (Zen 4, 2026-12-05, fastconv bench --repeat 3) direct / img2col
#: ms were unet3d_3x3x3 107 / 156, c3d_video (128 outputs) 124 / 138, ct_stem_3d 15.5 / 28.5.
#:
#: Output channels per group from which BLAS's GEMM (img2col) beats the direct kernels'
#: 8-channel tiles. On the shape set: 64 channels -> direct won (resnet_3x3_56 1.28 vs
#: 1.47 ms, batch8_3x3_56 11.1 vs 12.0, resnet_conv1 1.39 vs 1.68, audio_3 5.19 vs 5.37);
#: 128 and more -> img2col won (resnet_3x3_28 1.13 vs 1.30, resnet_3x3_14 1.10 vs 1.35,
#: resnet_3x3_7 1.34 vs 1.95, pointwise_expand 0.49 vs 0.66, audio_frontend 3.53 vs 4.77).
#: Re-checked on the AMD EPYC (2026-12-02, derive_dispatch.py --repeat 3): img2col won every
#: shape-set layer with 128+ outputs but audio_frontend (direct 7.7 vs 8.5 ms), direct every one below.
#: Since the register-tiled SIMD kernel (2026-12-05, Zen 4, derive_dispatch.py --repeat 3) this
#: rule decides only backward passes (img2col won resnet_3x3_28 / _14 / _7 backward: 2.99 vs
#: 3.36, 2.95 vs 6.29, 3.78 vs 19.8 ms: direct's weight gradient is not register-tiled) and the
#: forward layers that kernel does not run; forward, direct won resnet_3x3_28 / _14 / _7 (1.23 vs
#: 1.44, 1.23 vs 1.47, 1.42 vs 1.80 ms) and audio_frontend (3.53 vs 5.53), and lost the 1x1
#: layers by 2-3 % (pointwise_expand 0.64 vs 0.62, pointwise_stride2 0.42 vs 0.41 ms).
GEMM_MIN_OUT_CHANNELS = 128
#: Backward passes whose dL/dx runs on direct's register-tiled kernel stay on direct up to this many
#: output channels per group (3x3 and larger kernels): direct's weight gradient is the portable
#: kernel, which loses to a GEMM as channels grow. Measured on Zen 4 (2026-12-05, 2 threads,
#: direct vs img2col, whole backward): 128x28x28 3x3 2.83 vs 3.16 ms; 256x14x14 4.38 vs 3.25;
#: 512x7x7 10.3 vs 4.25; a 128 -> 256 4x4 stride-2 layer 21.3 vs 18.7; 1x1 layers and a 2x2
#: stride-2 one lost too (1.74 vs 1.46, 1.65 vs 1.19, 5.24 vs 4.89).
BACKWARD_GEMM_MIN_OUT_CHANNELS = 256
#: Below GEMM_MIN_OUT_CHANNELS, a GEMM with few rows is slow and the direct kernels win however
#: long the reduction, except for 1x1 kernels with a long reduction: there img2col needs no
#: column copy and the direct kernels re-read their accumulator tiles once per 4 input channels.
#: Measured on the AMD EPYC (2026-12-02, 2 threads, img2col / direct time, three interleaved
#: runs each, noisy): 1x1 with 64 outputs and K = 512 / 1024 / 2048: 0.71 / 0.65-0.77 / 0.71;
#: 3x3 with 64 outputs, K = 1152 / 2304 / 4608: 0.89-1.6 / 0.97-1.5 / 0.75-2.3 (no clear winner,
#: direct kept); 32 outputs, K = 2304-5184: 1.3-2.5; 16 outputs: 2.1-2.3; 3 outputs (the
#: 16x64x224x224 9x9 layer of issue 5): 5.4-5.8. The old rule (any K >= 2048 -> img2col) sent
#: that layer to img2col.
POINTWISE_GEMM_MIN_OUT_CHANNELS = 64
POINTWISE_GEMM_MIN_REDUCTION = 512


def _register_tiled_input_gradient(geom) -> bool:
    """Whether direct's dL/dx runs ``geom`` on its register-tiled SIMD kernel."""
    from .strategies import _simd_direct

    return _simd_direct.input_gradient_problems(geom) is not None


def _tiling_input_gradient(geom) -> bool:
    """Whether direct's dL/dx runs ``geom`` (kernel == stride) as one pointwise product and depth to space."""
    from .strategies import _simd_direct

    return _simd_direct._tiling_problem(geom) is not None


def _register_tiled(geom) -> bool:
    """Whether direct's convolution runs ``geom`` on its register-tiled SIMD kernel."""
    from .strategies import _simd_direct

    return _simd_direct.planar_supports(geom)


#: Winograd (float32) from this many output tiles over the batch, and channel counts: F(4x4, 3x3)
#: where there are 49 tiles of 4x4, else F(2x2, 3x3) where there are 49 of 2x2 (the strategy's own
#: choice, strategies/winograd.py). Measured on Zen 4 (2026-12-05, fastconv bench --repeat 3,
#: against direct / PyTorch): resnet_3x3_56 (196 tiles of 4x4, 64 channels) 0.60 ms vs 1.19 / 1.10;
#: resnet_3x3_28 (49, 128) 0.69 vs 1.23 / 1.07; batch8_3x3_56 4.7 vs 9.2 / 8.7; resnet_3x3_14
#: (49 tiles of 2x2, 256 channels) 0.98 vs 1.23 / 1.05 (with F(4x4): 1.72, 16 tiles half-fill the
#: 14-tile register tiles); resnet_3x3_7 (16 tiles of 2x2) 3.16 vs 1.43 / 1.36: too few tiles
#: for the transformed weights (16 values per 9) to pay.
WINOGRAD_MIN_TILES = 49
WINOGRAD_MIN_CHANNELS = 16


#: Strided layers whose dL/dx splits into stride phases that are 3x3 or 2x2 stride-1 convolutions
#: (a 4x4 kernel with stride 2) count the phases' tiles: dcgan_up (conv_transpose2d 256 -> 128, 4x4,
#: stride 2, 16 images of 8x8: dL/dx of a 128 -> 256 convolution, 4 phases of F(4x4, 2x2), 256 tiles)
#: 3.8 ms vs img2col 7.7, PyTorch 4.9; the backward of that convolution (dx + dW) 12.6 vs img2col
#: 15.5, direct 17.6, PyTorch (forward + backward) 15.1; its dW alone (a transposed convolution's
#: backward) on direct's kernel 8.3-9.1 vs img2col 10.0 (Zen 4, 2026-12-05). Strided forward layers
#: with stride x 2 or 3 taps run as a stride-1 problem over stride^2 times the channels (space to
#: depth): that convolution, 128 -> 256 channels at 16x16, 4.7-5.2 ms vs direct 7.8-8.9, img2col
#: 10.2, PyTorch 4.8-4.9 (its 13 MB of transformed weights are read once per group of 14 tiles,
#: and there are only 64 tiles: memory-bound).
#: The same rule decides the backward pass (dL/dx through Winograd, dL/dW exact-order; Zen 4,
#: 2026-12-05, winograd / direct / PyTorch ms: resnet_3x3_28 2.42 / 2.78 / 3.59, batch8_3x3_56
#: 16.6 / 20.7 / 36.2, resnet_3x3_56 1.99 / 2.57 / 3.71) and 3D layers whose in-plane kernel is
#: 3x3 (their depth taps become channels of one 2D problem, strategies/_depth.py) from
#: WINOGRAD_MIN_CHANNELS_3D channels: direct runs 3D layers on its planar tile kernel with the depth taps
#: as steps (no gathered copy), and wins below (Zen 4, 2026-12-05, winograd / direct / PyTorch ms:
#: c3d_video, 64 -> 128, 50.8 / 103 / 114; unet3d_3x3x3, 32 -> 32, 80.8 / 70.1 / 99.8). Their backward
#: passes (dL/dx through Winograd by depth, dL/dW direct) from WINOGRAD_MIN_CHANNELS, as in 2D
#: (benchmarks/derive_dispatch.py, winograd / direct ms: unet3d_3x3x3 194 / 233, c3d_video 195 / 258).
WINOGRAD_MIN_CHANNELS_3D = 64

#: 1D layers with 3 taps (1 x 3 kernels, stride 1) through F(6, 3) along rows, from WINOGRAD_MIN_TILES_ROWS
#: tiles of 6 outputs over the batch and WINOGRAD_MIN_CHANNELS_ROWS input and output channels. Measured on
#: Zen 4 (2026-12-05, blocks of calls; winograd / direct / PyTorch ms, (N, C, L) -> C_out): audio_3 (8, 64,
#: 4000) -> 64 3.6 / 4.6 / 4.1; (4, 64, 4000) -> 128 3.2 / 4.5 / 4.1; (2, 128, 2000) 1.30 / 1.95 / 1.87;
#: (4, 256, 1000) 4.4 / 7.9 / 7.4; (8, 64, 1000) 0.95 / 1.02 / 1.00; (1, 64, 8000) 1.2 / 1.2 / 1.0. Not with
#: fewer channels ((8, 32, 4000) 1.65 / 1.21 / 1.08: short channel loops), nor few tiles ((1, 64, 1000) 0.18 /
#: 0.18, (1, 256, 250) 0.54 / 0.53, (1, 512, 100) 1.58 / 0.95: the weight transform dominates).
WINOGRAD_MIN_TILES_ROWS = 512

#: Whether backward passes go through Winograd where its dL/dx would run F(2x2, 3x3) (maps with fewer than 49
#: 4x4 tiles): no, img2col's GEMMs win dx + dW there (resnet_3x3_14, 256 channels on 14x14: img2col 2.91 / 3.87
#: ms against Winograd 3.31 / 4.46 in two derive_dispatch runs, Zen 4, 2026-12-05).
WINOGRAD_BACKWARD_F2 = False
WINOGRAD_MIN_CHANNELS_ROWS = 64


#: FFT convolution (strategies/fft.py) for large 2D/3D kernels, from FFT_MIN_TAPS taps per output, or
#: from FFT_MIN_TAPS_CHANNELS with at least FFT_MIN_CHANNELS input (per group) and output channels; each
#: keyed by the FFT form that runs (fft.form: "rows" for one image with many channels or large
#: single-channel kernels, "full" otherwise) and, for the full form, by the transforms (ducc0's are
#: 2x faster than scipy.fft's there; the rows form's 1D transforms cost little with either).
#: Measured on Zen 4 (2026-12-05, blocks of calls, best of 3; fft with ducc0 / with scipy / direct, ms):
#: full form, one channel on 1024x1024: 15x15 5.1 / 12.3 / 5.9, 21x21 5.2 / 10.9 / 10.6, 25x25 5.3 /
#: 11.0 / 15.1; 16 -> 16 15x15 on 256x256 27.1 / 35.3 / 35.4, batch 4 with 9x9 on 128x128 11.0 / 11.8 /
#: 12.9. Rows form, one channel: 11x11 4.2 / 4.3 / 3.1, 13x13 4.1 / 4.4 / 4.4, 15x15 4.5 / 5.2 / 5.7.
#: Since its kernel holds 4 rows per tile (`fastconv bench --repeat 3`, rows form with ducc0 / direct, ms):
#: 9x9 4 -> 4 on 256x256 1.00 / 1.99, 8 -> 8 on 128x128 0.73 / 0.86, on 256x256 2.58 / 3.20; 11x11 3 -> 16
#: on 224x224 2.08 / 2.81; 7x7 16 -> 16 on 256x256 6.84 / 7.90, 32 -> 32 on 64x64 1.65 / 2.06, 64 -> 64 on
#: 56x56 3.24 / 6.17, but 8 -> 8 on 256x256 2.68 / 1.99 (few channels) and 128 -> 128 on 32x32 10.7 / 8.6
#: (19 real frequencies in 32: FFT_ROWS_WIDE's fill). 1D filters stay on direct (long1d_k511 4.1 / 5.9 /
#: 2.3): the direct kernels' work grows with the kernel, the transforms' does not.
FFT_MIN_TAPS = {"rows": 225, "ducc0": 225, "scipy": 625, "numpy": 625}
FFT_MIN_TAPS_CHANNELS = {"rows": 81, "full": 225}
FFT_MIN_CHANNELS = {"rows": 3, "full": 4}
#: The rows form also from this many taps with this many channels in (per group) and out, where at least this
#: fraction of its padded frequencies are real ones (its kernel works on whole vectors of them).
FFT_ROWS_WIDE = (49, 16, 0.75)


def _fft_pays(geom, dtype) -> bool:
    """Whether the FFT strategy is measured faster than direct on ``geom`` (see above; not for 1D)."""
    if np.dtype(dtype) not in (np.float32, np.float64) or not strategies.strategy("fft").can_run("conv", geom):
        return False
    plane = [k for k in geom.kernel if k > 1]
    if len(plane) < 2:  # 1D (lifted to 2D with height 1): the direct kernels won the long filter
        return False
    from .strategies.fft import form, rows_plan, transforms

    fft = transforms()
    rows = fft.single and form(geom, kept=False) == "rows"  # (the rules are cached: not per WeightCache)
    taps = math.prod(geom.kernel)
    key = "rows" if rows else "full"
    channels = min(geom.in_channels // geom.groups, geom.out_channels)
    if taps >= FFT_MIN_TAPS["rows" if rows else fft.name] or (
            channels >= FFT_MIN_CHANNELS[key] and taps >= FFT_MIN_TAPS_CHANNELS[key]):
        return True
    if not rows:
        return False
    wide_taps, wide_channels, fill = FFT_ROWS_WIDE
    r = rows_plan(geom)
    return taps >= wide_taps and channels >= wide_channels and r.F >= fill * r.freqs


def _winograd_tiles(geom, m=4) -> int:
    """``m x m`` output tiles of ``geom``'s planes over the batch (and the output depth, in 3D); tiles of ``m``
    outputs along rows for a 1 x r kernel."""
    *depth, oH, oW = geom.out_size
    rows = oH if strategies.get("winograd")._row_kernel(geom) else -(-oH // m)
    return geom.batch * math.prod(depth) * rows * -(-oW // m)


def _winograd_tile(geom) -> int:
    """The output tile the Winograd strategy uses for float32 ``geom`` (its ``tile``, over every plane)."""
    module = strategies.get("winograd")
    if module._row_kernel(geom):  # rank 2: the strategy's own choice
        return module.tile(geom)
    if geom.kernel[-1] == 2:
        return 4
    return 4 if _winograd_tiles(geom, 4) >= strategies.get("winograd").F4_MIN_TILES else 2


def _winograd_work(op, geom):
    """``(m, r, tiles, phases)`` of what the float32 Winograd kernel would run for ``op`` on ``geom``:
    F(m x m, r x r) over ``tiles`` output tiles; dL/dx of a strided layer as ``phases`` stride-1
    problems (one otherwise)."""
    if op == "conv_backward" and tuple(geom.stride[-2:]) != (1, 1):
        module = strategies.get("winograd")
        phases = [phase for *_, phase in module._input_gradient_problems(geom) if phase is not None]
        m = max(_winograd_tile(phase) for phase in phases)
        return m, phases[0].kernel[-1], sum(_winograd_tiles(phase, m) for phase in phases), len(phases)
    if op == "conv" and tuple(geom.stride[-2:]) != (1, 1):  # space to depth: r = kernel / stride
        m = _winograd_tile(strategies.get("winograd")._space_to_depth(geom))
        return m, geom.kernel[-1] // geom.stride[-1], _winograd_tiles(geom, m), 1
    m = _winograd_tile(geom)
    return m, geom.kernel[-1], _winograd_tiles(geom, m), 1


def _winograd_pays(op, geom, dtype) -> bool:
    """Whether the float32 Winograd kernel is measured faster than direct on ``geom`` (see above)."""
    if np.dtype(dtype) != np.float32 or not strategies.strategy("winograd").can_run(op, geom):
        return False
    channels = WINOGRAD_MIN_CHANNELS_3D if geom.rank == 3 and op == "conv" else WINOGRAD_MIN_CHANNELS
    tiles = WINOGRAD_MIN_TILES
    if strategies.get("winograd")._row_kernel(geom):
        channels, tiles = WINOGRAD_MIN_CHANNELS_ROWS, WINOGRAD_MIN_TILES_ROWS
    m, r, count, _ = _winograd_work(op, geom)
    if op == "conv_backward" and (m, r) == (2, 3) and not WINOGRAD_BACKWARD_F2:
        return False
    return count >= tiles and geom.in_channels >= channels and geom.out_channels >= channels


@functools.lru_cache(maxsize=1024)
def _rules(op: str, geom, dtype, threads: int, level: str):
    """``(method, reason)`` for ``op`` on ``geom``: the measured rules (see :data:`TUNED_ON`).

    Cached: geometries are frozen dataclasses, and a 30 us pooling call should not spend
    microseconds re-deciding.
    """
    last = geom.layout == "channels_last"  # a strategy must read that memory in place to be picked here
    if op == "conv" and not last and _fft_pays(geom, dtype) and "fft" in candidates(op, geom, level):
        bound = strategies.strategy("fft").error_bound[np.dtype(dtype).name]
        return "fft", (f"{'x'.join(map(str, geom.kernel))} kernel ({math.prod(geom.kernel)} taps): FFT convolution's "
                       f"cost does not grow with the kernel (measured 4.8x direct on filter_31x31, 3.4x on "
                       f"multichannel_15x15, Zen 4); error bound {bound:.0e} of the output's scale, allowed by "
                       f"precision '{level}'")
    if (op in ("conv", "conv_backward") and _winograd_pays(op, geom, dtype) and "winograd" in candidates(op, geom, level)
            and (not last or strategies.strategy("winograd").channels_last)):
        bound = strategies.strategy("winograd").error_bound[np.dtype(dtype).name]
        m, r, tiles, phases = _winograd_work(op, geom)
        what = "dL/dx through " if op == "conv_backward" else ""
        if phases > 1:
            kernel = f"dL/dx as {phases} stride phases with {r}x{r} kernels, {tiles} output tiles of {m}x{m}"
        elif op == "conv" and geom.kernel[-1] != r:
            s = geom.stride[-1]
            kernel = (f"{geom.kernel[-1]}x{geom.kernel[-1]} kernel, stride {s}: a {r}x{r} stride-1 kernel over "
                      f"{s * s}x the channels (space to depth), {tiles} output tiles of {m}x{m}")
        elif strategies.get("winograd")._row_kernel(geom):
            return "winograd", (f"1x{r} kernel, stride 1, {tiles} output tiles of {m} along rows: {what}Winograd "
                                f"F({m}, {r}) does {m * r / (m + r - 1):.3g}x fewer multiplications (measured 1.11x "
                                f"PyTorch on audio_3, 1.4-1.7x with 128-256 channels, Zen 4); error bound {bound:.0e} "
                                f"of the output's scale, allowed by precision '{level}'")
        else:
            kernel = f"{r}x{r} in-plane kernel, stride 1, {tiles} output tiles of {m}x{m}"
        return "winograd", (f"{kernel}: {what}Winograd F({m}x{m}, {r}x{r}) does {(m * r / (m + r - 1)) ** 2:.3g}x "
                            f"fewer multiplications (measured 1.1-1.9x PyTorch on resnet_3x3_56/_28/_14, "
                            f"batch8_3x3_56, vgg_3x3_224, c3d_video, 1.3x on dcgan_up, Zen 4); error bound "
                            f"{bound:.0e} of the output's scale, allowed by precision '{level}'")
    if geom.layout == "channels_last":  # channels-last convolution and pooling
        for name in candidates(op, geom, level):
            if strategies.strategy(name).channels_last:
                return name, (f"channels-last memory: {name} reads it in place (the others would need "
                              "an NCHW copy of the input and of the result)")
    if op.startswith(("max_pool", "avg_pool")):
        return "direct", ("pooling is memory-bound: the direct Numba kernels stream each plane once "
                          "(4-50x PyTorch on the shape set), img2col copies every window first")
    if op.startswith("adaptive_"):
        return "direct", ("adaptive pooling: the direct Numba kernels read each window row as one contiguous run; "
                          "no other automatic strategy implements it (not measured against anything)")
    if geom.rank == 3:
        return "direct", ("3D: direct's planar tile kernel takes the depth taps as steps of its loop (measured on "
                          "unet3d_3x3x3 and ct_stem_3d: 4.4x and 8x img2col, Zen 4)")
    per_group_out = geom.out_channels // geom.groups
    per_group_in = geom.in_channels // geom.groups
    reduction = per_group_in * math.prod(geom.kernel)
    pointwise_gemm = (all(k == 1 for k in geom.kernel) and per_group_out >= POINTWISE_GEMM_MIN_OUT_CHANNELS
                      and reduction >= POINTWISE_GEMM_MIN_REDUCTION)
    if op == "conv" and not pointwise_gemm and _register_tiled(geom):
        return "direct", (f"direct's register-tiled SIMD kernel runs this layer ({per_group_out} output channels per "
                          f"group, {reduction} steps per output): measured faster than im2col + GEMM on every such "
                          "layer of the shape set (resnet_3x3_28/_14/_7 1.17-1.27x, audio_frontend 1.57x, Zen 4)")
    if op == "conv_backward" and _tiling_input_gradient(geom):
        return "direct", ("windows that tile the image (kernel == stride): direct's dL/dx is one pointwise product "
                          "on the register-tiled kernel, then depth to space (unet_up's forward 1.8 ms vs img2col "
                          "2.6, its backward 4.6-5.3 vs 6.2, Zen 4)")
    if (op == "conv_backward" and GEMM_MIN_OUT_CHANNELS <= per_group_out < BACKWARD_GEMM_MIN_OUT_CHANNELS
            and math.prod(geom.kernel) >= 9 and _register_tiled_input_gradient(geom)):
        return "direct", (f"{per_group_out} output channels per group, {'x'.join(map(str, geom.kernel))} kernel: "
                          "direct's dL/dx on the register-tiled kernel wins the backward pass below "
                          f"{BACKWARD_GEMM_MIN_OUT_CHANNELS} output channels (resnet_3x3_28: 2.83 vs 3.16 ms, Zen 4)")
    if per_group_out >= GEMM_MIN_OUT_CHANNELS:
        return "img2col", (f"{per_group_out} output channels per group >= {GEMM_MIN_OUT_CHANNELS}: "
                           "a large GEMM, where BLAS beats the direct kernels")
    if pointwise_gemm:
        return "img2col", (f"1x1 kernel, {per_group_out} output channels per group >= "
                           f"{POINTWISE_GEMM_MIN_OUT_CHANNELS} and {reduction} input channels >= "
                           f"{POINTWISE_GEMM_MIN_REDUCTION}: a deep GEMM with little or no column copy")
    if geom.groups > 1 and per_group_in == 1:
        return "direct", "depthwise: one input channel per group, no GEMM to speak of; direct reads the input in place"
    return "direct", (f"{per_group_out} output channels per group (reduction length {reduction}): "
                      "too few rows for BLAS's GEMM to pay for im2col; the direct kernels win")


def _threads(threads):
    if threads is None:
        from .threads import get_num_threads

        return get_num_threads()
    return int(threads)


def _runnable(op: str, geom, level: str, method: str, reason: str):
    """``(method, reason)``, or the first automatic strategy that can run the problem if ``method`` cannot."""
    if strategies.strategy(method).can_run(op, geom):
        return method, reason
    for name in candidates(op, geom, level):
        return name, f"{reason}; but {method} does not compute this problem, so {name}"
    raise ValueError(f"no registered strategy computes {op} for this problem (rank {geom.rank})")


def decide(op: str, geom, dtype, threads=None):
    """``(method, reason, source)``: what ``method="auto"`` runs for ``op`` on ``geom`` and why."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; expected one of {', '.join(OPS)}")
    threads = _threads(threads)
    dtype = np.dtype(dtype)
    forced = _env_method()
    if forced is not None and forced not in ("auto", "measure"):
        return forced, f"forced by FASTCONV_METHOD={forced}", "environment"
    level = get_precision()
    method, reason = _runnable(op, geom, level, *_rules(op, geom, dtype, threads, level))
    if forced == "measure":
        return method, "FASTCONV_METHOD=measure: timed on first call; until then: " + reason, "environment"
    return method, reason, "rules"


def choose_method(op: str, geom, dtype=np.float32, threads: int | None = None) -> str:
    """The strategy ``method="auto"`` runs for ``op`` on ``geom`` (a pure function of its arguments).

    Parameters
    ----------
    op : str
        One of :data:`OPS`.
    geom : ConvGeometry or PoolGeometry
        The resolved problem (see :func:`fastconv.explain` to build one from shapes).
    dtype : numpy dtype
        The computation's dtype.
    threads : int, optional
        The thread count the call would use (default: the current one).

    Returns
    -------
    str
        A registered strategy's name.
    """
    return decide(op, geom, dtype, threads)[0]


# ----------------------------------------------------------------------------------------------
# The entry point of every public function


#: (method, op, problem, dtype, FASTCONV_METHOD, registry version) -> (strategy name, its op function).
#: What "auto" and forced methods resolve to depends on nothing else (the rules do not read the
#: thread count; if one ever does, it joins the key), so a repeated call pays one dict look-up.
_resolved: dict = {}
_RESOLVED_MAX = 4096


def _method_variable():
    """A reader of ``FASTCONV_METHOD``'s raw value for :func:`resolve`'s key, at dict speed.

    ``os.environ.get`` encodes the name and decodes the value on every call (~0.8 us, a tenth of a
    tiny pooling call); ``os.environ`` keeps the encoded mapping it updates (``_data``), which is
    read directly where it exists. Only used as a cache key: the value is parsed by ``_env_method``.
    """
    data, encode = getattr(os.environ, "_data", None), getattr(os.environ, "encodekey", None)
    if isinstance(data, dict) and callable(encode):
        key = encode("FASTCONV_METHOD")
        return lambda: data.get(key)
    return lambda: os.environ.get("FASTCONV_METHOD")


_method_env = _method_variable()


def resolve(method: str, op: str, geom, dtype, fn: str, args=None):
    """``(name, function)`` of the strategy that runs ``op`` on ``geom`` for ``method=`` (checked).

    In measure mode without ``args`` (the arrays to time on) it returns ``("measure", None)``:
    call :func:`run` with the arrays then.
    """
    env = _method_env()
    key = (method, op, geom, dtype, env, strategies.version, get_precision())
    hit = _resolved.get(key)
    if hit is not None:
        return hit
    check_method(method, fn)
    name = method
    if name == "auto":
        name = _env_method() or "auto"
    if name == "measure":
        if args is None:  # measure mode times the candidates on the real arrays: see run()
            return "measure", None
        from .measure import measure

        name = measure(op, geom, dtype, args)  # remembered by measure mode itself: not cached here
    elif name == "auto":
        name = decide(op, geom, dtype)[0]
    chosen = strategies.strategy(name)
    if not chosen.can_run(op, geom):
        raise ValueError(f"{fn}: method={name!r} does not compute this problem "
                         f"({op}, rank {geom.rank}); choose another or 'auto'")
    hit = (name, chosen.ops[op])
    if method != "measure" and name != "measure" and env != "measure":
        if len(_resolved) >= _RESOLVED_MAX:
            _resolved.clear()
        _resolved[key] = hit
    return hit


def bound(method: str, op: str, geom, dtype, fn: str):
    """The strategy ``method`` resolves to, its ``op`` bound to ``geom`` (:meth:`Strategy.bound`), for
    a public function's repeated-call path; None in measure mode (it times on the arrays)."""
    name, function = resolve(method, op, geom, dtype, fn)
    return None if function is None else strategies.strategy(name).bound(op, geom, np.dtype(dtype))


def repeat_key(*parts):
    """``parts`` plus what else a bound call depends on (``FASTCONV_METHOD``, the registry's version, the
    precision setting):
    the key of a public function's repeated-call cache (:class:`Calls`)."""
    return parts + (_method_env(), strategies.version, get_precision())


def plain(ints, bools=()) -> bool:
    """Whether ``ints`` are all plain ints (or None) and ``bools`` all bools: arguments a repeated-call
    key may hold as they are (True == 1 as a key, so each must have its parameter's type)."""
    for a in ints:
        if a is not None and type(a) is not int:
            return False
    for a in bools:
        if type(a) is not bool:
            return False
    return True


class Calls(dict):
    """A public function's repeated-call cache: :func:`repeat_key` -> a function of the arrays alone
    (built around :func:`bound`). A repeated call with the same shapes, dtypes and plain arguments
    costs a dict look-up and the kernel, not the checks, the resolution and the plan again."""

    MAX = 4096

    def remember(self, key, call):
        """Store ``call`` under ``key`` (the whole cache is dropped when full); return ``call``."""
        if len(self) >= self.MAX:
            self.clear()
        self[key] = call
        return call


def run(method: str, op: str, geom, dtype, fn: str, args) -> str:
    """Run ``op`` with the strategy ``method`` names (or chooses) on ``args``; return the strategy used."""
    name, function = resolve(method, op, geom, dtype, fn, args)
    function(*args)
    return name
