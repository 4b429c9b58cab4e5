"""``explain()``: what ``method="auto"`` would run for a call, and why, readable in a terminal."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from . import dispatch, strategies
from .precision import get_precision
from ._validate import as_array, result_dtype
from .geometry import conv_problem, pool_problem
from .workspace import get_workspace_limit

__all__ = ["Explanation", "explain", "PUBLIC_OPS"]

#: Public function name -> (the op strategies implement, spatial rank of the call).
PUBLIC_OPS = {
    f"{kind}{nd}d{suffix}": (op + suffix, nd)
    for kind, op in (("conv", "conv"), ("max_pool", "max_pool"), ("avg_pool", "avg_pool"),
                     ("adaptive_max_pool", "adaptive_max_pool"), ("adaptive_avg_pool", "adaptive_avg_pool"))
    for nd in (1, 2, 3)
    for suffix in ("", "_backward")
} | {  # a transposed convolution is its convolution's input-gradient; its dL/dx is a convolution
    f"conv_transpose{nd}d{suffix}": (op, nd)
    for nd in (1, 2, 3)
    for suffix, op in (("", "conv_backward"), ("_backward", "conv"))
}


@dataclasses.dataclass(frozen=True)
class Explanation:
    """Why a strategy was (or would be) chosen for a problem; ``str()`` reads well in a terminal.

    Attributes
    ----------
    op : str
        The public function ('conv2d', 'max_pool3d_backward', ...).
    method : str
        The strategy ``auto`` runs.
    reason : str
        The rule (or setting) that decided.
    flops : int
        Multiply-adds x 2 (convolutions; x 2 again for backward) or window reads (pooling).
    workspace : dict
        Scratch bytes per candidate strategy.
    candidates : tuple
        The strategies ``auto`` and ``measure`` could choose for this problem.
    geometry : ConvGeometry or PoolGeometry
        The resolved problem.
    dtype : str
    threads : int
    source : str
        'rules' or 'environment' (FASTCONV_METHOD).
    precision : str
        The precision setting the choice was made under (:mod:`fastconv.precision`).
    error_bound : float or None
        The chosen algorithm's measured error bound relative to the output's scale, None for an
        exact-order algorithm (a plain sum of products).
    """

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
    precision: str = "high"
    error_bound: float | None = None

    def __str__(self) -> str:
        g = self.geometry

        def sizes(values):
            return "x".join(str(v) for v in values)

        lines = [f"{self.op}: method={self.method!r} ({self.source})", f"  why: {self.reason}"]
        if hasattr(g, "out_channels"):
            lines.append(
                f"  problem: N={g.batch} C_in={g.in_channels} {sizes(g.in_size)} -> C_out={g.out_channels} "
                f"{sizes(g.out_size)}, kernel {sizes(g.kernel)}, stride {g.stride}, dilation {g.dilation}, "
                f"padding {g.padding}, groups {g.groups}"
            )
        elif hasattr(g, "kernel"):
            lines.append(
                f"  problem: N={g.batch} C={g.channels} {sizes(g.in_size)} -> {sizes(g.out_size)}, "
                f"window {g.kernel}, stride {g.stride}, padding {g.padding}"
            )
        else:  # adaptive pooling: the output size decides the windows
            lines.append(f"  problem: N={g.batch} C={g.channels} {sizes(g.in_size)} -> {sizes(g.out_size)}, "
                         "adaptive windows")
        lines.append(f"  dtype {self.dtype}, {self.threads} thread(s), {self.flops / 1e9:.3g} GFLOP")
        bound = ("exact order (a plain sum of products)" if self.error_bound is None
                 else f"<= {self.error_bound:.0e} of the output's scale (measured)")
        lines.append(f"  algorithm error: {bound}; precision setting {self.precision!r}")
        if self.method == "fft":
            from .strategies.fft import BACKEND_ENV, transforms

            lines.append(f"  transforms: {transforms().name} (${BACKEND_ENV} picks ducc0, scipy or numpy)")
        lines.append(f"  threads: {_threads_line()}")
        lines.append(f"  vector kernels: {_simd_line()}")
        if getattr(g, "layout", "channels_first") == "channels_last":
            lines.append("  memory: channels-last input; the result comes back channels-last")
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


def _simd_line() -> str:
    from . import _simd

    if _simd.AVAILABLE:
        return f"explicit SIMD, {_simd.REASON}"
    return f"portable kernels only (explicit SIMD off: {_simd.REASON})"


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def flops(op: str, geom) -> int:
    """FLOPs of a convolution (x 2 for backward: dx and dw), window reads of a pooling."""
    if hasattr(geom, "out_channels"):
        return geom.flops * (2 if op.endswith("_backward") else 1)
    if not hasattr(geom, "kernel"):  # adaptive pooling reads every input element about once
        return geom.batch * geom.channels * max(math.prod(geom.in_size), math.prod(geom.out_size))
    return geom.batch * geom.channels * math.prod(geom.kernel) * math.prod(geom.out_size)


def explain_problem(op: str, geom, dtype, threads=None, public_op: str | None = None) -> Explanation:
    """The :class:`Explanation` for a resolved problem (``op`` as the strategies name it)."""
    method, reason, source = dispatch.decide(op, geom, dtype, threads)
    dtype = np.dtype(dtype)
    names = dispatch.candidates(op, geom)
    workspace = {m: dispatch.workspace_bytes(op, m, geom, dtype.itemsize) for m in names}
    work = flops(op, geom)
    if public_op and public_op.startswith("conv_transpose"):  # forward: one input-gradient; backward: dx + dW
        work = geom.flops * (2 if public_op.endswith("_backward") else 1)
    bound = strategies.strategy(method).error_bound
    return Explanation(public_op or op, method, reason, work, workspace, names, geom, str(dtype),
                       dispatch._threads(threads), source, get_precision(),
                       None if bound is None else bound.get(dtype.name))


def explain(op: str, x, weight=None, *, dtype=None, threads=None, **params) -> Explanation:
    """What ``method="auto"`` would run for a call, and why.

    Parameters
    ----------
    op : str
        A public function's name: 'conv2d', 'conv3d_backward', 'max_pool1d', ...
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

    Returns
    -------
    Explanation
        The chosen strategy, the reason, FLOPs, workspace per candidate and the resolved problem.

    Examples
    --------
    >>> import fastconv
    >>> e = fastconv.explain("conv2d", (1, 64, 56, 56), (64, 64, 3, 3), padding=1)
    >>> e.method in fastconv.strategies.names()
    True
    """
    if op not in PUBLIC_OPS:
        raise ValueError(f"explain: unknown op {op!r}; expected one of {', '.join(PUBLIC_OPS)}")
    internal, nd = PUBLIC_OPS[op]

    def shape_and_array(a, name):
        if a is None:
            return None, None
        if isinstance(a, tuple) and all(isinstance(n, (int, np.integer)) for n in a):
            return tuple(int(n) for n in a), None
        arr = as_array(a, name, "explain")
        return arr.shape, arr

    x_shape, x_arr = shape_and_array(x, "x")
    w_shape, w_arr = shape_and_array(weight, "weight")
    if dtype is None:
        arrays = [a for a in (x_arr, w_arr) if a is not None]
        dtype = result_dtype(*arrays) if arrays else np.dtype(np.float32)
    fn = f"explain({op})"
    if op.startswith("conv_transpose"):
        if w_shape is None:
            raise ValueError(f"explain: {op} needs the weight (or its shape)")
        from .transpose import transpose_problem

        geom, _ = transpose_problem(fn, nd, x_shape, w_shape, None, params.pop("stride", 1),
                                    params.pop("padding", 0), params.pop("output_padding", 0),
                                       params.pop("groups", 1), params.pop("dilation", 1), dtype)
    elif internal.startswith("conv"):
        if w_shape is None:
            raise ValueError(f"explain: {op} needs the weight (or its shape)")
        geom, _ = conv_problem(fn, nd, x_shape, w_shape, None, params.pop("stride", 1), params.pop("padding", 0),
                               params.pop("dilation", 1), params.pop("groups", 1), dtype)
        from .conv import _channels_last

        if internal == "conv" and x_arr is not None and _channels_last(x_arr, nd):
            geom = geom.channels_last()
    elif internal.startswith("adaptive"):
        if "output_size" not in params:
            raise ValueError(f"explain: {op} needs output_size=")
        from .geometry import adaptive_pool_problem

        geom, _ = adaptive_pool_problem(fn, nd, x_shape, params.pop("output_size"), dtype)
    else:
        kernel_size = params.pop("kernel_size", None)
        if kernel_size is None:
            raise ValueError(f"explain: {op} needs kernel_size=")
        if len(x_shape) not in (nd + 1, nd + 2):
            raise ValueError(f"{fn}: x must have {nd + 1} or {nd + 2} dimensions, got shape {x_shape}")
        geom, _ = pool_problem(fn, nd, x_shape, kernel_size, params.pop("stride", None), params.pop("padding", 0),
                               params.pop("dilation", 1), params.pop("ceil_mode", False),
                               params.pop("count_include_pad", True), dtype,
                               params.pop("divisor_override", None) if internal.startswith("avg_pool") else None)
        from .conv import _channels_last

        if x_arr is not None and _channels_last(x_arr, nd):  # read in place by direct, result channels-last
            geom = geom.channels_last()
    if params:
        raise TypeError(f"explain: unexpected argument(s) for {op}: {', '.join(sorted(params))}")
    return explain_problem(internal, geom, dtype, threads, public_op=op)
