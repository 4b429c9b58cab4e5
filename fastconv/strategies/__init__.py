"""The ways fastconv can compute an operation: an open registry of strategies.

Each strategy is one module that ends with a :class:`Strategy` record, ``STRATEGY``: its
name, the operations it implements (a function per op), which problems it supports, the
scratch memory it needs, its test tolerance per dtype, and whether ``method="auto"`` and
``method="measure"`` may choose it. Everything that enumerates strategies (the dispatcher,
``explain``, measure mode, ``warmup``, ``fastconv bench``, the benchmarks and the tests)
reads this registry, so adding one is a module and one :func:`register` call.

The built-in ones, registered below and imported on first use so that ``import fastconv``
stays cheap: ``loop`` (pure Python, the oracle), ``vectorized`` (NumPy only), ``direct``
(Numba sliding-window kernels), ``img2col`` (Numba im2col + BLAS GEMM) and ``winograd``
(3x3 stride-1 convolutions with fewer multiplications; the ``conv`` op only).

Operations (rank-free: every problem record carries its rank) and their arguments::

    conv                        (x, weight, bias, problem, out)
    conv_backward               (grad_out, x, weight, problem, grad_x, grad_w, grad_b)
    max_pool                    (x, problem, out, indices)
    max_pool_backward           (grad_out, indices, problem, grad_x)
    avg_pool                    (x, problem, out)
    avg_pool_backward           (grad_out, problem, grad_x)
    adaptive_max_pool           (x, problem, out, indices)
    adaptive_max_pool_backward  (grad_out, indices, problem, grad_x)
    adaptive_avg_pool           (x, problem, out)
    adaptive_avg_pool_backward  (grad_out, problem, grad_x)

The ``problem`` is a :class:`~fastconv.geometry.ConvGeometry` for the convolution ops, a
:class:`~fastconv.geometry.PoolGeometry` for the pooling ops and an
:class:`~fastconv.geometry.AdaptivePoolGeometry` for the adaptive ones. ``indices`` (or None:
not wanted) are int64 flat positions in each input plane (``(d*H + h)*W + w`` for rank 3).

Arrays are validated, C-contiguous, ``(N, C, *spatial)`` with the problem's rank (1D problems
reach the strategies lifted to 2D, height 1), or, for a strategy that says it reads them
(:attr:`Strategy.channels_last`), rank-2 arrays in channels-last memory; each function writes
every element of its outputs (a gradient that is None is not wanted).
"""

from __future__ import annotations

import dataclasses
import importlib
import threading
from collections.abc import Callable, Mapping

__all__ = ["OPS", "Strategy", "get", "names", "register", "strategy", "unregister"]

#: Every operation a strategy may implement.
OPS = ("conv", "conv_backward", "max_pool", "max_pool_backward", "avg_pool", "avg_pool_backward",
       "adaptive_max_pool", "adaptive_max_pool_backward", "adaptive_avg_pool", "adaptive_avg_pool_backward")

#: Default test tolerances (rtol, atol) per dtype, for strategies that do not state their own.
#: float32: sums of K <= ~600 products of O(1) values err like sqrt(K) * 6e-8 * |terms|; errors
#: stayed below 2e-5 over thousands of hypothesis examples, these leave ~5x headroom.
DEFAULT_TOLERANCE = {"float32": (1e-4, 1e-4), "float64": (1e-10, 1e-10)}


def _always(op, problem) -> bool:
    return True


def _no_workspace(op, problem, itemsize) -> int:
    return 0


@dataclasses.dataclass(frozen=True)
class Strategy:
    """What a strategy is: a name, its operations, and what the dispatcher needs to know of it.

    Parameters
    ----------
    name : str
        What ``method=`` calls it.
    ops : mapping of str to callable
        Operation name (one of :data:`OPS`) -> the function computing it.
    summary : str
        One line for docs, ``explain`` and the report.
    automatic : bool
        Whether ``method="auto"`` and ``method="measure"`` may choose it.
    reference : bool
        The readable definition the others are tested against (slow: reports time it on a
        shrunken copy of each problem and extrapolate).
    ranks : tuple of int
        Spatial ranks it computes (after 1D is lifted to 2D).
    supports : callable ``(op, problem) -> bool``
        Further limits (e.g. 3x3 kernels only); ``op`` and rank are checked before.
    workspace_bytes : callable ``(op, problem, itemsize) -> int``
        Scratch bytes it allocates besides inputs and outputs (after chunking to the cap).
    tolerance : mapping of dtype name to (rtol, atol)
        How close to the float64 oracle its results are held in the tests.
    channels_last : bool
        Whether its rank-2 ``conv``, ``max_pool``, ``avg_pool``, ``max_pool_backward`` and
        ``avg_pool_backward`` ops also accept arrays in channels-last memory (``(N, C, H, W)``
        arrays whose memory is ``N, H, W, C``: ``x`` and ``out`` (and ``indices``), or
        ``grad_out``, ``indices`` and ``grad_x``) and read and write them in place. Other
        strategies get C-contiguous copies (see :mod:`fastconv.conv` and :mod:`fastconv.pool`).
        The pooling ops get such arrays with a problem whose ``layout`` is ``"channels_last"``,
        and C-contiguous ones with a ``"channels_first"`` problem.
    error_bound : mapping of dtype name to float, optional
        For algorithms that round differently from a plain sum of products (Winograd): the
        measured bound of ``max |y - y64| / max |y64|`` per dtype. None (the default): an
        exact-order algorithm. ``auto`` and ``measure`` consider a strategy with a bound only
        where the precision setting allows it (:mod:`fastconv.precision`).
    bind : callable ``(op, problem, dtype) -> callable or None``, optional
        A forward op (``conv``, ``max_pool``, ``avg_pool``) with the problem fixed, for the
        public functions' repeated-call path (:meth:`bound`): it takes the op's arrays without
        the problem — ``(x, weight, bias, out)``, ``(x, out, indices)``, ``(x, out)`` —
        C-contiguous, of ``dtype`` (weight and bias too; ``indices`` int64, given or None as on
        its first call), in any shape with the problem's sizes. None: :meth:`bound` wraps
        ``ops[op]``. Built once per cached call: it may fix per-call choices (a serial kernel
        for a tiny problem) and its arguments' types.
    """

    name: str
    ops: Mapping[str, Callable]
    summary: str
    automatic: bool = True
    reference: bool = False
    ranks: tuple = (2, 3)
    supports: Callable = _always
    workspace_bytes: Callable = _no_workspace
    tolerance: Mapping[str, tuple] = dataclasses.field(default_factory=lambda: dict(DEFAULT_TOLERANCE))
    channels_last: bool = False
    error_bound: Mapping[str, float] | None = None
    bind: Callable | None = None

    def __post_init__(self):
        unknown = set(self.ops) - set(OPS)
        if unknown:
            raise ValueError(f"Strategy {self.name!r}: unknown op(s) {sorted(unknown)}; expected some of {OPS}")

    def can_run(self, op: str, problem) -> bool:
        """Whether it implements ``op`` for this problem (op, rank, then its own ``supports``)."""
        return op in self.ops and problem.rank in self.ranks and bool(self.supports(op, problem))

    def bound(self, op: str, problem, dtype):
        """``ops[op]`` on ``problem`` as a callable of the arrays alone (see ``bind``): the strategy's
        own binding where it has one, else the op with the arrays reshaped to the problem's rank."""
        fast = None if self.bind is None else self.bind(op, problem, dtype)
        if fast is not None:
            return fast
        function, x_shape, out_shape = self.ops[op], problem.input_shape, problem.output_shape
        if op == "conv":
            w_shape = problem.weight_shape
            return lambda x, weight, bias, out: function(x.reshape(x_shape), weight.reshape(w_shape), bias, problem,
                                                         out.reshape(out_shape))
        if op == "max_pool":
            return lambda x, out, indices: function(x.reshape(x_shape), problem, out.reshape(out_shape),
                                                    None if indices is None else indices.reshape(out_shape))
        if op == "avg_pool":
            return lambda x, out: function(x.reshape(x_shape), problem, out.reshape(out_shape))
        raise ValueError(f"Strategy.bound: op {op!r} has no bound form; expected conv, max_pool or avg_pool")


_lock = threading.Lock()
#: name -> a Strategy, or the module path that defines ``STRATEGY`` (imported on first use).
_registry: dict = {}
#: Bumped by every register/unregister: caches of dispatch decisions key on it.
version = 0


def register(entry, *, replace: bool = False) -> None:
    """Add a strategy: a :class:`Strategy`, or the import path of a module that defines ``STRATEGY``.

    Parameters
    ----------
    entry : Strategy or str
        The record, or a module path (registered under its last component's name and
        imported on first use).
    replace : bool
        Replace a strategy of the same name instead of raising ValueError.
    """
    name = entry.name if isinstance(entry, Strategy) else entry.rsplit(".", 1)[-1]
    if name in ("auto", "measure"):
        raise ValueError(f"register: {name!r} is a dispatcher mode, not a strategy name")
    with _lock:
        if name in _registry and not replace:
            raise ValueError(f"register: a strategy named {name!r} is registered already")
        _registry[name] = entry
        global version
        version += 1


def unregister(name: str) -> None:
    """Remove a strategy (tests register temporary ones)."""
    global version
    with _lock:
        _registry.pop(name, None)
        version += 1


def names() -> tuple:
    """Every registered strategy's name.

    Returns
    -------
    tuple of str
        In registration order.
    """
    return tuple(_registry)


def strategy(name: str) -> Strategy:
    """The :class:`Strategy` called ``name`` (its module imported on first use).

    Parameters
    ----------
    name : str

    Returns
    -------
    Strategy
    """
    entry = _registry.get(name)
    if entry is None:
        raise ValueError(f"unknown strategy {name!r}; expected one of {', '.join(_registry)}")
    if isinstance(entry, Strategy):
        return entry
    found = importlib.import_module(entry).STRATEGY
    if found.name != name:
        raise ValueError(f"module {entry} declares strategy {found.name!r}, registered as {name!r}")
    with _lock:
        _registry[name] = found
    return found


def get(name: str):
    """The module of a built-in strategy (its kernels and helpers), imported on first use."""
    strategy(name)
    return importlib.import_module(f"{__name__}.{name}")


for _module in ("loop", "vectorized", "direct", "img2col", "winograd", "fft"):
    register(f"{__name__}.{_module}")
