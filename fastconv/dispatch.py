"""Choosing a strategy: ``method="auto"`` (rules), ``method="measure"`` (timed, remembered), ``explain()``.

* :func:`choose_method` is a pure function of the problem (op, geometry,
  dtype, thread count) returning the strategy ``"auto"`` runs. Its rules and
  constants come from measurements on one machine, written down in
  :data:`TUNED_ON`; ``benchmarks/derive_dispatch.py`` re-derives them.
* ``method="measure"`` times every candidate on the real arrays the first time
  a problem is seen, runs the winner, and remembers it in memory and in a JSON
  file under ``FASTCONV_CACHE_DIR`` (default ``~/.cache/fastconv``), one file
  per (CPU model, fastconv version, Numba version).
* ``FASTCONV_METHOD=<name>`` replaces ``"auto"`` everywhere (an explicit
  ``method=`` argument still wins).
* Memory is part of the choice: the strategies ``auto`` picks (direct,
  img2col) chunk their scratch buffers to stay under the cap
  (:mod:`fastconv.workspace`), and ``measure`` skips a candidate whose
  workspace would not fit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import tempfile
import threading
import time
import warnings

import numpy as np

from . import strategies
from .workspace import get_workspace_limit

#: What ``method=`` accepts.
METHODS = ("auto", "measure") + strategies.NAMES

#: The operations the dispatcher chooses for (1D problems are 2D problems of height 1).
OPS = ("conv2d", "conv2d_backward", "max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward")

#: The strategies ``auto`` and ``measure`` choose from (the loop is the oracle, never a candidate).
CANDIDATES = ("vectorized", "direct", "img2col")

#: Where and when the rule constants below were measured.
TUNED_ON = ("2026-11-25, 2 cores of an Intel Xeon (AVX-512); re-checked and amended 2026-12-02 on 2 cores "
            "of an AMD EPYC (Zen 3, AVX2 + FMA); numba 0.68.1, numpy 2.4.6 with OpenBLAS 0.3.31, float32, "
            "2 threads; re-derive with benchmarks/derive_dispatch.py")


def check_method(method, fn: str) -> str:
    """Return ``method`` if it is a known name, else raise naming the valid ones."""
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(
            f"{fn}: method must be one of {', '.join(repr(m) for m in METHODS)}, got {method!r}"
        )
    return method


def _env_method():
    """The method forced by ``FASTCONV_METHOD``, or None."""
    forced = os.environ.get("FASTCONV_METHOD", "").strip()
    if not forced:
        return None
    if forced not in METHODS:
        raise ValueError(
            f"FASTCONV_METHOD must be one of {', '.join(repr(m) for m in METHODS)}, got {forced!r}"
        )
    return forced


# ----------------------------------------------------------------------------------------------
# Workspace accounting


def workspace_bytes(op: str, method: str, geom, itemsize: int) -> int:
    """Bytes of scratch memory ``method`` allocates for ``op`` on ``geom``, after chunking to the cap.

    Counts the buffers a strategy allocates besides its inputs and outputs:
    padded copies and im2col columns (the dominant term).
    """
    if method == "loop" or op.endswith("pool2d_backward"):
        return 0
    if not op.startswith("conv"):
        return strategies.get("img2col").workspace_bytes(geom, itemsize, op) if method == "img2col" else 0
    if method == "img2col":
        return strategies.get("img2col").workspace_bytes(geom, itemsize, op)
    if method == "direct":
        if op == "conv2d":
            return strategies.get("direct").workspace_bytes(geom, itemsize)
        from .strategies._direct_backward import backward_workspace_bytes

        return backward_workspace_bytes(geom, itemsize)
    # vectorized: a padded copy, plus either one tap product or capped im2col columns
    kH, kW = geom.kernel
    oH, oW = geom.out_size
    padded = _padded_bytes(geom, itemsize)
    if geom.in_channels == geom.groups and geom.out_channels == geom.groups:
        return padded + geom.batch * geom.out_channels * oH * oW * itemsize
    per_row = geom.in_channels * kH * kW * oW * itemsize
    return padded + min(per_row * oH * geom.batch, max(get_workspace_limit(), per_row))


def _padded_bytes(geom, itemsize: int) -> int:
    """Bytes of a zero-padded copy of a convolution's input (0 without padding)."""
    (top, bottom), (left, right) = geom.padding
    if top == bottom == left == right == 0:
        return 0
    H, W = geom.in_size
    return geom.batch * geom.in_channels * (H + top + bottom) * (W + left + right) * itemsize


# ----------------------------------------------------------------------------------------------
# The rules of "auto"


#: Output channels per group from which BLAS's GEMM (img2col) beats the direct kernels'
#: 8-channel tiles. On the shape set: 64 channels -> direct won (resnet_3x3_56 1.28 vs
#: 1.47 ms, batch8_3x3_56 11.1 vs 12.0, resnet_conv1 1.39 vs 1.68, audio_3 5.19 vs 5.37);
#: 128 and more -> img2col won (resnet_3x3_28 1.13 vs 1.30, resnet_3x3_14 1.10 vs 1.35,
#: resnet_3x3_7 1.34 vs 1.95, pointwise_expand 0.49 vs 0.66, audio_frontend 3.53 vs 4.77).
#: Re-checked on the AMD EPYC (2026-12-02, derive_dispatch.py --repeat 3): img2col won every
#: shape-set layer with 128+ outputs but audio_frontend (direct 7.7 vs 8.5 ms), direct every one below.
GEMM_MIN_OUT_CHANNELS = 128
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


@functools.lru_cache(maxsize=1024)
def _rules(op: str, geom, dtype, threads: int):
    """``(method, reason)`` for ``op`` on ``geom``: the measured rules (see :data:`TUNED_ON`).

    Cached: geometries are frozen dataclasses, and a 30 us pooling call should not spend
    microseconds re-deciding.
    """
    if op.startswith(("max_pool", "avg_pool")):
        return "direct", ("pooling is memory-bound: the direct Numba kernels stream each plane once "
                          "(4-50x PyTorch on the shape set), img2col copies every window first")
    per_group_out = geom.out_channels // geom.groups
    per_group_in = geom.in_channels // geom.groups
    reduction = per_group_in * geom.kernel[0] * geom.kernel[1]
    if per_group_out >= GEMM_MIN_OUT_CHANNELS:
        return "img2col", (f"{per_group_out} output channels per group >= {GEMM_MIN_OUT_CHANNELS}: "
                           "a large GEMM, where BLAS beats the direct kernels")
    if (geom.kernel == (1, 1) and per_group_out >= POINTWISE_GEMM_MIN_OUT_CHANNELS
            and reduction >= POINTWISE_GEMM_MIN_REDUCTION):
        return "img2col", (f"1x1 kernel, {per_group_out} output channels per group >= "
                           f"{POINTWISE_GEMM_MIN_OUT_CHANNELS} and {reduction} input channels >= "
                           f"{POINTWISE_GEMM_MIN_REDUCTION}: a deep GEMM with little or no column copy")
    if geom.groups > 1 and per_group_in == 1:
        return "direct", "depthwise: one input channel per group, no GEMM to speak of; direct reads the input in place"
    return "direct", (f"{per_group_out} output channels per group (reduction length {reduction}): "
                      "too few rows for BLAS's GEMM to pay for im2col; the direct kernels win")


def choose_method(op: str, geom, dtype=np.float32, threads: int | None = None) -> str:
    """The strategy ``method="auto"`` runs for ``op`` on ``geom`` (a pure function of its arguments).

    Parameters
    ----------
    op : str
        One of :data:`OPS`.
    geom : ConvGeometry or PoolGeometry
        The resolved problem (see :func:`fastconv.explain` to build one from shapes).
    dtype : numpy dtype
    threads : int, optional
        The thread count the call would use (default: the current one).
    """
    return _decide(op, geom, np.dtype(dtype), threads).method


def _threads(threads):
    if threads is None:
        from .threads import get_num_threads

        return get_num_threads()
    return int(threads)


# ----------------------------------------------------------------------------------------------
# explain()


@dataclasses.dataclass(frozen=True)
class Explanation:
    """Why a strategy was (or would be) chosen for a problem; ``str()`` reads well in a terminal."""

    op: str
    method: str
    reason: str
    flops: int
    workspace: dict
    candidates: tuple
    geometry: object
    dtype: str
    threads: int
    source: str = "rules"

    def __str__(self) -> str:
        g = self.geometry
        lines = [f"{self.op}: method={self.method!r} ({self.source})", f"  why: {self.reason}"]
        if hasattr(g, "out_channels"):
            lines.append(
                f"  problem: N={g.batch} C_in={g.in_channels} {g.in_size[0]}x{g.in_size[1]} -> "
                f"C_out={g.out_channels} {g.out_size[0]}x{g.out_size[1]}, kernel {g.kernel[0]}x{g.kernel[1]}, "
                f"stride {g.stride}, dilation {g.dilation}, padding {g.padding}, groups {g.groups}"
            )
        else:
            lines.append(
                f"  problem: N={g.batch} C={g.channels} {g.in_size[0]}x{g.in_size[1]} -> "
                f"{g.out_size[0]}x{g.out_size[1]}, window {g.kernel}, stride {g.stride}, padding {g.padding}"
            )
        lines.append(f"  dtype {self.dtype}, {self.threads} thread(s), {self.flops / 1e9:.3g} GFLOP")
        lines.append(f"  threads: {_threads_line()}")
        lines.append(f"  workspace cap {_human(get_workspace_limit())}; candidates:")
        for name in self.candidates:
            mark = "->" if name == self.method else "  "
            lines.append(f"    {mark} {name:<11} workspace {_human(self.workspace.get(name, 0))}")
        return "\n".join(lines)


def _threads_line() -> str:
    from .threads import policy

    p = policy()
    blas = "; ".join(f"BLAS {b['internal_api']} {b['num_threads']} thread(s), idle threads {b['idle']}"
                     for b in p.blas) or "no BLAS found"
    return f"Numba layer {p.threading_layer}; {blas}; GEMMs inside fastconv use <= its thread count"


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _flops(op: str, geom) -> int:
    if hasattr(geom, "out_channels"):
        return geom.flops * (2 if op.endswith("_backward") else 1)
    kH, kW = geom.kernel
    oH, oW = geom.out_size
    return geom.batch * geom.channels * kH * kW * oH * oW


def _decide(op: str, geom, dtype, threads) -> Explanation:
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; expected one of {', '.join(OPS)}")
    threads = _threads(threads)
    dtype = np.dtype(dtype)
    workspace = {m: workspace_bytes(op, m, geom, dtype.itemsize) for m in CANDIDATES}
    forced = _env_method()
    if forced is not None and forced != "auto":
        method, reason, source = forced, f"forced by FASTCONV_METHOD={forced}", "environment"
        if forced == "measure":
            method, reason = _rules(op, geom, dtype, threads)
            reason = "FASTCONV_METHOD=measure: timed on first call; until then: " + reason
    else:
        method, reason = _rules(op, geom, dtype, threads)
        source = "rules"
    return Explanation(op, method, reason, _flops(op, geom), workspace, CANDIDATES, geom, str(dtype), threads,
                       source)


_EXPLAIN_OPS = {
    "conv1d": ("conv2d", 1), "conv2d": ("conv2d", 2),
    "conv1d_backward": ("conv2d_backward", 1), "conv2d_backward": ("conv2d_backward", 2),
    "max_pool1d": ("max_pool2d", 1), "max_pool2d": ("max_pool2d", 2),
    "avg_pool1d": ("avg_pool2d", 1), "avg_pool2d": ("avg_pool2d", 2),
    "max_pool1d_backward": ("max_pool2d_backward", 1), "max_pool2d_backward": ("max_pool2d_backward", 2),
    "avg_pool1d_backward": ("avg_pool2d_backward", 1), "avg_pool2d_backward": ("avg_pool2d_backward", 2),
}


def explain(op: str, x, weight=None, *, dtype=None, threads=None, **params) -> Explanation:
    """What ``method="auto"`` would run for a call, and why.

    Parameters
    ----------
    op : str
        A public function's name: 'conv2d', 'conv1d_backward', 'max_pool2d', ...
    x, weight : ndarray or tuple of int
        The arrays of the call, or just their shapes (for backward ops: the
        forward input and weight; for pooling ``weight`` is unused).
    dtype : numpy dtype, optional
        Defaults to the arrays' result dtype, or float32 for shapes.
    threads : int, optional
        Defaults to the current thread count.
    **params
        The call's geometry arguments (stride, padding, dilation, groups;
        kernel_size, ceil_mode, ... for pooling).

    Examples
    --------
    >>> import fastconv
    >>> e = fastconv.explain("conv2d", (1, 64, 56, 56), (64, 64, 3, 3), padding=1)
    >>> e.method in ("vectorized", "direct", "img2col")
    True
    """
    from . import conv as _conv
    from . import pool as _pool
    from ._validate import as_array, result_dtype

    if op not in _EXPLAIN_OPS:
        raise ValueError(f"explain: unknown op {op!r}; expected one of {', '.join(_EXPLAIN_OPS)}")
    internal, nd = _EXPLAIN_OPS[op]

    def shape_and_dtype(a, name):
        if a is None:
            return None, None
        if isinstance(a, tuple) and all(isinstance(n, (int, np.integer)) for n in a):
            return tuple(int(n) for n in a), None
        arr = as_array(a, name, "explain")
        return arr.shape, arr

    x_shape, x_arr = shape_and_dtype(x, "x")
    w_shape, w_arr = shape_and_dtype(weight, "weight")
    if dtype is None:
        arrays = [a for a in (x_arr, w_arr) if a is not None]
        dtype = result_dtype(*arrays) if arrays else np.dtype(np.float32)
    if internal.startswith("conv"):
        if w_shape is None:
            raise ValueError(f"explain: {op} needs the weight (or its shape)")
        geom, _ = _conv.conv_geometry(
            f"explain({op})", nd, x_shape, w_shape, None, params.pop("stride", 1), params.pop("padding", 0),
            params.pop("dilation", 1), params.pop("groups", 1))
    else:
        kernel_size = params.pop("kernel_size", None)
        if kernel_size is None:
            raise ValueError(f"explain: {op} needs kernel_size=")
        geom, _ = _pool._pool_geometry(
            f"explain({op})", nd, x_shape, kernel_size, params.pop("stride", None), params.pop("padding", 0),
            params.pop("dilation", 1), params.pop("ceil_mode", False), params.pop("count_include_pad", True))
    if params:
        raise TypeError(f"explain: unexpected argument(s) for {op}: {', '.join(sorted(params))}")
    return _decide(internal, geom, dtype, threads)


# ----------------------------------------------------------------------------------------------
# method="measure": time the candidates once per problem, remember the winner


_memory: dict = {}
_memory_lock = threading.Lock()


def _cache_dir() -> str:
    configured = os.environ.get("FASTCONV_CACHE_DIR")
    if configured:
        return configured
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastconv")


def _machine_key() -> dict:
    import numba

    from . import __version__
    from ._machine import cpu_model

    return {"cpu": cpu_model(), "fastconv": __version__, "numba": numba.__version__}


def cache_path() -> str:
    """The measure-mode cache file for this CPU model, fastconv version and Numba version."""
    key = _machine_key()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(_cache_dir(), f"measured-{digest}.json")


def problem_key(op: str, geom, dtype, threads: int) -> str:
    """The key a measurement is remembered under: op, full geometry, dtype and thread count."""
    fields = dataclasses.asdict(geom)
    return json.dumps([op, fields, str(np.dtype(dtype)), int(threads)], sort_keys=True, default=list)


def _read_disk(path: str) -> dict:
    """The remembered winners in ``path``; a missing file is empty, a bad one is ignored with a warning."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except (OSError, ValueError) as exc:
        warnings.warn(f"fastconv: ignoring unreadable measure cache {path} ({exc}); it will be rebuilt",
                      RuntimeWarning, stacklevel=4)
        return {}
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, dict) or data.get("machine") != _machine_key():
        warnings.warn(f"fastconv: ignoring malformed measure cache {path}; it will be rebuilt",
                      RuntimeWarning, stacklevel=4)
        return {}
    return {k: v for k, v in entries.items() if isinstance(v, dict) and v.get("method") in CANDIDATES}


@contextlib.contextmanager
def _file_lock(path: str):
    """An advisory lock beside ``path`` so concurrent writers merge instead of overwriting (POSIX only)."""
    try:
        import fcntl
    except ImportError:  # Windows: atomic replace alone; a concurrent entry may be lost and re-measured
        yield
        return
    with open(path + ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_disk(path: str, key: str, entry: dict) -> None:
    """Merge one entry into the cache file: read, add, write to a temp file, atomic rename."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with _file_lock(path):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                entries = _read_disk(path)
            entries[key] = entry
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".measured-", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump({"machine": _machine_key(), "entries": entries}, f, indent=0)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
    except OSError as exc:
        warnings.warn(f"fastconv: could not write the measure cache {path} ({exc}); "
                      "measurements are kept in memory only", RuntimeWarning, stacklevel=4)


def remembered(op: str, geom, dtype, threads: int | None = None):
    """The method measure mode remembers for this problem (memory, then disk), or None."""
    key = problem_key(op, geom, dtype, _threads(threads))
    with _memory_lock:
        if key in _memory:
            return _memory[key]
    entry = _read_disk(cache_path()).get(key)
    if entry is None:
        return None
    with _memory_lock:
        _memory[key] = entry["method"]
    return entry["method"]


def clear_memory() -> None:
    """Forget in-memory measurements (the disk cache stays)."""
    with _memory_lock:
        _memory.clear()


def _measure(op: str, geom, dtype, args) -> str:
    """Time each candidate on the real arguments (after a warm-up call), remember and return the winner."""
    threads = _threads(None)
    found = remembered(op, geom, dtype, threads)
    if found is not None:
        return found
    limit = get_workspace_limit()
    # A padded copy of the input is the input's size, not a workspace: not counted against the cap.
    allowance = _padded_bytes(geom, np.dtype(dtype).itemsize) if hasattr(geom, "in_channels") else 0
    timings = {}
    for name in CANDIDATES:
        if workspace_bytes(op, name, geom, np.dtype(dtype).itemsize) > limit + allowance:
            continue
        run = getattr(strategies.get(name), op)
        run(*args)  # compile / warm up
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            run(*args)
            best = min(best, time.perf_counter() - t0)
        timings[name] = best
    winner = min(timings, key=timings.get)
    key = problem_key(op, geom, dtype, threads)
    with _memory_lock:
        _memory[key] = winner
    _write_disk(cache_path(), key, {"method": winner, "seconds": timings})
    return winner


# ----------------------------------------------------------------------------------------------
# The entry point of every public function


def run(method: str, op: str, geom, dtype, fn: str, args) -> str:
    """Run ``op`` with the strategy ``method`` names (or chooses) on ``args``; return the strategy used."""
    check_method(method, fn)
    if method == "auto":
        method = _env_method() or "auto"
    if method == "measure":
        method = _measure(op, geom, dtype, args)
    elif method == "auto":
        method = _rules(op, geom, np.dtype(dtype), _threads(None))[0]
    getattr(strategies.get(method), op)(*args)
    return method


def auto_method_for(problem, dtype, backward: bool = False) -> str:
    """The strategy ``method="auto"`` runs for a :class:`fastconv.shapes.Problem` (for reports)."""
    op = problem.op + ("_backward" if backward else "")
    kw = problem.kwargs()
    if problem.is_conv:
        return explain(op, problem.input_shape, problem.weight_shape, dtype=dtype, **kw).method
    return explain(op, problem.input_shape, dtype=dtype, **kw).method


def warmup(dtypes=("float32",), methods=("direct", "img2col")) -> float:
    """Compile (or load from the disk cache) every kernel ``methods`` use, for ``dtypes``; return seconds.

    The first call of each kernel in a process otherwise pays this: measured on the 2-core
    AMD EPYC, 95 s for all float32 kernels on a cold cache, 1.0 s from the cache.
    """
    from . import conv as _conv
    from . import pool as _pool

    start = time.perf_counter()
    for dtype in dtypes:
        x = np.ones((2, 4, 9, 9), dtype)
        for method in methods:
            for kw in (dict(padding=1), dict(padding="same", stride=2, dilation=2), dict(groups=4)):
                w = np.ones((4, 4 // kw.get("groups", 1), 3, 3), dtype)
                y = _conv.conv2d(x, w, np.ones(4, dtype), **kw, method=method)
                _conv.conv2d_backward(y, x, w, **kw, method=method)
            for kw in (dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=3, stride=1)):
                y, idx = _pool.max_pool2d(x, **kw, return_indices=True, method=method)
                _pool.max_pool2d(x, **kw, method=method)
                _pool.max_pool2d_backward(y, idx, x.shape, method=method)
                a = _pool.avg_pool2d(x, **kw, method=method)
                _pool.avg_pool2d_backward(a, x.shape, **kw, method=method)
    return time.perf_counter() - start
