"""Prepared weights: what a strategy derives from a layer's weights (packed, transformed), kept between calls.

Some strategies turn the weights into another form on every call before they touch the input:
Winograd's transformed kernels (``G g G^T``, 2-4x the weights' size), the FFT strategy's kernel
spectra, direct's channels-last packing. A ``fastconv.nn`` layer calls the same weights again
and again, so it owns a :class:`WeightCache` and runs its calls inside it; the strategies ask
:func:`prepared` for the derived form, which comes from the cache while the weights are
unchanged and is recomputed when they are not. Functional callers (an inference loop over
folded weights) can do the same: ``cache = fastconv.WeightCache()``, then ``with cache:`` around
the calls.

Never stale: an entry keeps a copy of the weights it was derived from and is used only while the
current weights equal that copy bit for bit (NaNs and signed zeros included). Optimisers update
``layer.params`` in place, and the comparison reads both arrays (cheap next to the derivation,
which writes the larger form: for a 128 x 128 x 3 x 3 kernel, 0.6 MB compared against 2.4 MB
transformed). Results are the same with or without a store: the derived form is the one the call
would compute.

Outside a cache's ``with`` block, :func:`prepared` derives every time.
"""
from __future__ import annotations

import contextvars
import threading

import numpy as np

#: Entries a cache keeps by default (one per derived form and weight array: a layer's forward, its
#: backward's flipped phases...); the oldest goes first.
MAX_ENTRIES = 8

_current: contextvars.ContextVar = contextvars.ContextVar("fastconv_prepared_store", default=None)


def _bits(a: np.ndarray) -> np.ndarray:
    """``a`` viewed as unsigned integers of its item size: equal views mean equal bits."""
    return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.itemsize]) if a.dtype.kind == "f" else a


class WeightCache:
    """Prepared weights kept between calls: the forms strategies derive from weights, while those are unchanged.

    Use it as a context manager around calls (``with cache: fastconv.conv2d(...)``); inside, every
    call in this thread (or asyncio task) reuses what an earlier call derived from the same weight
    array, if its values are still equal bit for bit (checked on every call: a stale form is never
    used). Each ``fastconv.nn`` convolution layer has its own. Results are the same with and
    without a cache.

    Parameters
    ----------
    max_entries : int
        Forms kept (the oldest goes first): a layer needs one or two (forward, backward); a
        whole network run under one cache about two per convolution.
    """

    def __init__(self, max_entries: int = MAX_ENTRIES):
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"WeightCache: max_entries must be a positive int, got {max_entries!r}")
        self._entries: dict = {}
        self._max = max_entries
        self._lock = threading.Lock()
        self._tokens = threading.local()

    def __enter__(self):
        stack = self._tokens.__dict__.setdefault("stack", [])
        stack.append(_current.set(self))
        return self

    def __exit__(self, *exc):
        _current.reset(self._tokens.stack.pop())
        return False

    def __repr__(self):
        return f"WeightCache({len(self._entries)} of {self._max} entries)"

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def get(self, key, weight: np.ndarray, make):
        """The form ``make(True)`` derives from ``weight``, from the store if ``weight`` is unchanged."""
        key = (key, weight.__array_interface__["data"][0], weight.shape, weight.strides, weight.dtype.str)
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and np.array_equal(_bits(entry[0]), _bits(weight)):
            return entry[1]
        value = make(True)
        with self._lock:
            self._entries.pop(key, None)
            while len(self._entries) >= self._max:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = (np.array(weight, copy=True), value)
        return value


def prepared(kind: str, weight: np.ndarray, key, make):
    """``make(owned)``: the form a strategy derives from ``weight`` (``kind`` and ``key`` say which form),
    kept in the current :class:`WeightCache` (``with cache:``) if there is one. With ``owned`` true (for the store)
    ``make`` must return an array nobody else writes to; with it false (no store) it may return a
    reusable scratch buffer."""
    store = _current.get()
    if store is None:
        return make(False)
    return store.get((kind, key), weight, make)


def keeping() -> bool:
    """Whether a :class:`WeightCache` is current: what :func:`prepared` makes is then kept for the next calls
    (a strategy may prefer a form whose prepared weights cost more once and less per call)."""
    return _current.get() is not None


def kept(owned: bool, array: np.ndarray) -> np.ndarray:
    """``array`` for :func:`prepared`: copied out of its reusable scratch buffer when a store keeps it."""
    return array.copy() if owned else array
