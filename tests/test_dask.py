"""The dask adapter (fastconv._dask): dask arrays in, lazy dask arrays out, equal to the in-memory calls.

* the per-axis plans (``window_axis``, ``transpose_axis``) over random geometries and chunkings: their
  invariants, and a 1-D integer simulation that runs every block's own problem on the data dask would
  hand it and concatenates the pieces;
* every forward op on random geometries and chunkings against the in-memory call (max pooling exactly,
  indices included); laziness; the whole problem's strategy on every block;
* the backward functions (chunked along the batch axis);
* threads: the threaded scheduler against the synchronous one, the ``sharing`` policy seen from inside
  the blocks, Numba's ``workqueue`` layer under a threaded scheduler (a fresh process);
* dask.distributed: a process cluster, and a worker killed in the middle of a computation;
* errors: ``out=``, unknown chunk sizes, bad geometry (eagerly, as in memory), no dask installed.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

da = pytest.importorskip("dask.array")
import dask  # noqa: E402

import fastconv  # noqa: E402
from conftest import tolerance  # noqa: E402
from fastconv import _dask  # noqa: E402
from fastconv._dask import transpose_axis, window_axis  # noqa: E402
from fastconv.geometry import _windows_touch_input, pool_output_size  # noqa: E402


def numba_threads() -> int:
    """The threads Numba started with (the most a block can be given)."""
    import numba

    return numba.config.NUMBA_NUM_THREADS


def examples(n: int) -> int:
    """``n`` examples under the default hypothesis profile, proportionally fewer under a smaller one
    (``FASTCONV_HYPOTHESIS_PROFILE=boundscheck``)."""
    return max(5, n * settings().max_examples // 60)


# --------------------------------------------------------------------------------------------
# Random chunkings


@st.composite
def chunkings(draw, n, max_chunks=None):
    """Chunk sizes summing to ``n``: a regular size with an uneven last chunk, arbitrary cuts (chunks of
    size 1 included), or all ones; at most about ``max_chunks`` chunks."""
    max_chunks = n if max_chunks is None else max_chunks
    if n <= 1:
        return (n,)
    kinds = ["regular", "cuts"] + (["ones"] if n <= max_chunks else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "ones":
        return (1,) * n
    if kind == "regular":
        size = draw(st.integers(-(-n // max_chunks), n))
        return (size,) * (n // size) + ((n % size,) if n % size else ())
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=max_chunks - 1)))
    edges = [0, *cuts, n]
    return tuple(b - a for a, b in zip(edges, edges[1:]))


def chunked(draw, x, nd, max_chunks):
    """``x`` as a dask array cut at random along every axis (the spatial ones into at most ~``max_chunks``)."""
    lead = x.ndim - nd
    chunks = tuple(draw(chunkings(n, 3)) for n in x.shape[:lead])
    chunks += tuple(draw(chunkings(n, max_chunks)) for n in x.shape[lead:])
    return da.from_array(x, chunks=chunks)


# --------------------------------------------------------------------------------------------
# 1. The plans


@st.composite
def window_plans(draw):
    """``(n, k, s, d, lo, hi, o, chunks)`` of a convolution/pooling axis; ``o`` sometimes one more than the
    floor formula (ceil_mode's extra window, which starts inside the input)."""
    k, s, d = draw(st.integers(1, 5)), draw(st.integers(1, 4)), draw(st.integers(1, 3))
    lo, hi = draw(st.integers(0, 6)), draw(st.integers(0, 6))
    span = d * (k - 1) + 1
    n = draw(st.integers(max(1, span - lo - hi), 40))
    o = (n + lo + hi - span) // s + 1
    if draw(st.booleans()) and o * s - lo < n:
        o += 1
    return n, k, s, d, lo, hi, o, draw(chunkings(n))


@st.composite
def transpose_plans(draw):
    """``(n, k, s, d, lo, hi, output_padding, o, chunks)`` of a transposed convolution's axis."""
    k, s, d = draw(st.integers(1, 5)), draw(st.integers(1, 4)), draw(st.integers(1, 3))
    n = draw(st.integers(1, 30))
    output_padding = draw(st.integers(0, max(s, d) - 1))
    lo, hi = draw(st.integers(0, 8)), draw(st.integers(0, 8))
    o = (n - 1) * s - (lo + hi) + d * (k - 1) + output_padding + 1
    assume(o >= 1)
    return n, k, s, d, lo, hi, output_padding, o, draw(chunkings(n))


def _check_cut(axis, n, o, chunks):
    """The invariants every plan keeps, whatever the op."""
    blocks = len(axis.chunks)
    assert blocks == len(axis.out_chunks) == len(axis.crop) == len(axis.pad) == len(axis.extra) == len(axis.origin)
    assert blocks <= len(chunks)  # blocks are merged, never split
    assert sum(axis.chunks) == n and min(axis.chunks) >= 1
    assert sum(axis.out_chunks) == o and min(axis.out_chunks) >= 1
    assert min(axis.depth) >= 0
    if blocks > 1:
        assert min(axis.chunks) >= max(axis.depth)  # dask's overlap takes a halo from the neighbour alone
    else:
        assert axis.depth == (0, 0)


def _seen(axis, data):
    """What every block of ``axis`` reads from the 1-D ``data``: its chunk extended by the halos (none beyond
    the ends, as dask's overlap with boundary 'none'), then its crop."""
    left, right = axis.depth
    begin, last = 0, len(axis.chunks) - 1
    for j, size in enumerate(axis.chunks):
        first = begin - (left if j > 0 else 0)
        seen = data[first:begin + size + (right if j < last else 0)]
        start, stop = axis.crop[j]
        assert 0 <= start <= stop <= len(seen), (j, axis.crop[j], len(seen))  # empty: windows of padding only
        assert axis.origin[j] == first + start  # origin: the global position of the crop's start
        yield seen[start:stop]
        begin += size


def _pieces_are_the_whole(pieces, whole, out_chunks):
    starts = np.cumsum((0,) + tuple(out_chunks))
    for j, piece in enumerate(pieces):
        np.testing.assert_array_equal(piece, whole[starts[j]:starts[j + 1]], err_msg=f"block {j}")
    np.testing.assert_array_equal(np.concatenate(pieces), whole)


@settings(max_examples=examples(300))
@given(plan=window_plans(), seed=st.integers(0, 2**32 - 1))
@example(plan=(3, 1, 5, 1, 2, 0, 1, (3,)), seed=0)  # the only window lies in the left padding
@example(plan=(12, 5, 1, 1, 0, 0, 8, (1,) * 12), seed=0)  # chunks of 1, a halo of 4
@example(plan=(41, 3, 1, 1, 0, 2, 41, (20, 20, 1)), seed=0)  # a last chunk shorter than the halo
@example(plan=(23, 3, 2, 2, 1, 1, 11, (5, 5, 5, 5, 3)), seed=0)  # stride not dividing the chunks
def test_window_axis_blocks_compute_the_whole(plan, seed):
    n, k, s, d, lo, hi, o, chunks = plan
    axis = window_axis(chunks, n, k, s, d, lo, hi, o)
    halo = d * (k - 1)
    _check_cut(axis, n, o, chunks)
    assert axis.extra == (0,) * len(axis.chunks)
    for (start, stop), (p_lo, p_hi), count in zip(axis.crop, axis.pad, axis.out_chunks):
        assert (stop - start + p_lo + p_hi - halo - 1) // s + 1 == count  # the block's own output size
    # Integers: every sum is exact, so the pieces must equal the whole bit for bit.
    rng = np.random.default_rng(seed)
    x, w = rng.integers(-9, 10, n).astype(np.float64), rng.integers(-9, 10, k).astype(np.float64)
    hi_full = max(hi, (o - 1) * s + halo + 1 - n - lo)  # ceil_mode's overhang reads zeros too
    whole = fastconv.conv1d(x[None, None], w[None, None], stride=s, padding=((lo, hi_full),), dilation=d)[0, 0]
    assert whole.shape == (o,)
    pieces = [fastconv.conv1d(local[None, None], w[None, None], stride=s, padding=(pad,), dilation=d)[0, 0]
              for local, pad in zip(_seen(axis, x), axis.pad)]
    _pieces_are_the_whole(pieces, whole, axis.out_chunks)


@settings(max_examples=examples(300))
@given(plan=transpose_plans(), seed=st.integers(0, 2**32 - 1))
@example(plan=(12, 5, 1, 1, 0, 0, 0, 16, (1,) * 12), seed=0)  # chunks of 1, a halo of 4
@example(plan=(10, 3, 3, 2, 5, 4, 2, 25, (3, 3, 3, 1)), seed=0)  # output_padding, padding beyond the kernel
def test_transpose_axis_blocks_compute_the_whole(plan, seed):
    n, k, s, d, lo, hi, output_padding, o, chunks = plan
    axis = transpose_axis(chunks, n, k, s, d, lo, hi, output_padding, o)
    _check_cut(axis, n, o, chunks)
    for (start, stop), (p_lo, p_hi), extra, count in zip(axis.crop, axis.pad, axis.extra, axis.out_chunks):
        assert 0 <= extra < max(s, d)  # a valid output_padding for the block's own problem
        assert (stop - start - 1) * s - (p_lo + p_hi) + d * (k - 1) + extra + 1 == count
    rng = np.random.default_rng(seed)
    x, w = rng.integers(-9, 10, n).astype(np.float64), rng.integers(-9, 10, k).astype(np.float64)
    whole = fastconv.conv_transpose1d(x[None, None], w[None, None], stride=s, padding=((lo, hi),),
                                      output_padding=output_padding, dilation=d)[0, 0]
    assert whole.shape == (o,)
    pieces = [fastconv.conv_transpose1d(local[None, None], w[None, None], stride=s, padding=(pad,),
                                        output_padding=extra, dilation=d)[0, 0]
              for local, pad, extra in zip(_seen(axis, x), axis.pad, axis.extra)]
    _pieces_are_the_whole(pieces, whole, axis.out_chunks)


def test_plans_keep_chunks_that_are_long_enough():
    """Chunks longer than the halos are kept one to one (the work stays parallel) and give regular output
    chunks (``chunk / stride`` outputs, or ``chunk * stride`` for a transposed convolution, give or take
    the borders)."""
    for k, s, p, o in ((3, 1, 1, 100), (3, 2, 1, 50), (5, 2, 2, 50), (4, 3, 0, 33)):
        axis = window_axis((10,) * 10, 100, k, s, 1, p, p, o)
        assert len(axis.chunks) == 10 and max(axis.depth) <= k
        assert all(abs(c - 10 / s) <= 2 for c in axis.out_chunks[1:-1]), axis.out_chunks
    axis = transpose_axis((10,) * 10, 100, 4, 2, 1, 1, 1, 0, 200)
    assert axis.chunks == (10,) * 10 and max(axis.depth) <= 2
    assert all(abs(c - 20) <= 1 for c in axis.out_chunks), axis.out_chunks


def test_plans_merge_chunks_shorter_than_the_halo():
    axis = window_axis((1,) * 12, 12, 5, 1, 1, 0, 0, 8)  # a halo of 4: chunks of 1 cannot lend it
    assert 1 < len(axis.chunks) < 12 and min(axis.chunks) >= max(axis.depth) == 4
    axis = window_axis((20, 20, 1), 41, 3, 1, 1, 0, 2, 41)  # a last chunk shorter than the halo (2)
    assert axis.chunks == (20, 21) and axis.out_chunks == (20, 21)


# --------------------------------------------------------------------------------------------
# 2. Every forward op, lazily, equal to the in-memory call

#: (input dtype, weight dtype): floats, and integer inputs (computed in float32 / float64).
DTYPES = [(np.float32, np.float32), (np.float64, np.float64), (np.int16, np.float32), (np.int32, np.float64)]
#: The largest spatial size drawn per rank, and the most chunks per spatial axis.
MAX_SIZE = {1: 24, 2: 16, 3: 7}
MAX_CHUNKS = {1: 12, 2: 5, 3: 3}


def _values(rng, shape, dtype):
    if np.dtype(dtype).kind in "iu":
        return rng.integers(-5, 6, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def _distinct(rng, shape, dtype):
    """Distinct values (no ties: max-pool indices are unambiguous), exact in ``dtype``."""
    size = int(np.prod(shape))
    return (rng.permutation(size) - size // 2).reshape(shape).astype(dtype)


def _batch(draw):
    batch = draw(st.integers(1, 3))
    return batch, batch == 1 and draw(st.booleans())


def computed(result, x, batched):
    """``result`` checked as a lazy array (NumPy meta; batch chunks one to one with ``x``'s) and computed
    block by block with the synchronous scheduler: every block has the shape and dtype its chunks declare."""
    assert isinstance(result, da.Array)
    assert type(result._meta) is np.ndarray and result._meta.dtype == result.dtype
    if batched:
        assert result.chunks[0] == x.chunks[0]
    values = dask.compute(*result.to_delayed().ravel(), scheduler="sync")
    grid = np.empty(result.numblocks, dtype=object)
    for index, value in zip(np.ndindex(*result.numblocks), values):
        assert value.shape == tuple(c[i] for c, i in zip(result.chunks, index)), index
        assert value.dtype == result.dtype
        grid[index] = value
    whole = np.block(grid.tolist())
    np.testing.assert_array_equal(whole, result.compute(scheduler="sync"))
    return whole


def _check(result, expected, x, batched, exact=False):
    assert result.shape == expected.shape and result.dtype == expected.dtype
    got = computed(result, x, batched)
    if exact:
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, **tolerance(expected.dtype))


@st.composite
def conv_calls(draw, nd):
    """``(x, weight, bias, kwargs)``: a random convolution (int, 'same', 'valid' or (lo, hi) padding)."""
    x_dtype, w_dtype = draw(st.sampled_from(DTYPES))
    groups = draw(st.sampled_from([1, 1, 2]))
    c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 3 if nd == 3 else 4)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    kind = draw(st.sampled_from(["int", "pairs", "same", "valid"]))
    if kind == "int":
        padding = draw(st.integers(0, 2))
        pads = [(padding, padding)] * nd
    elif kind == "pairs":
        pads = [(draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(nd)]
        padding = tuple(pads)
    else:
        padding, pads = kind, [(0, 0)] * nd
    size = []
    for k, d, (lo, hi) in zip(kernel, dilation, pads):
        low = 1 if kind == "same" else max(1, d * (k - 1) + 1 - lo - hi)
        size.append(draw(st.integers(low, max(low, MAX_SIZE[nd]))))
    batch, unbatched = _batch(draw)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = _values(rng, ((c_in,) if unbatched else (batch, c_in)) + tuple(size), x_dtype)
    weight = _values(rng, (c_out, c_in // groups) + kernel, w_dtype)
    bias = _values(rng, (c_out,), w_dtype) if draw(st.booleans()) else None
    return x, weight, bias, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


@st.composite
def transpose_calls(draw, nd):
    x_dtype, w_dtype = draw(st.sampled_from(DTYPES))
    groups = draw(st.sampled_from([1, 1, 2]))
    c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    size = tuple(draw(st.integers(1, {1: 12, 2: 7, 3: 4}[nd])) for _ in range(nd))
    full = [(n - 1) * s + d * (k - 1) + 1 for n, s, d, k in zip(size, stride, dilation, kernel)]
    if draw(st.booleans()):
        padding = tuple(draw(st.integers(0, (f - 1) // 2)) for f in full)
    else:
        padding = tuple((draw(st.integers(0, (f - 1) // 2)), draw(st.integers(0, (f - 1) // 2))) for f in full)
    batch, unbatched = _batch(draw)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = _values(rng, ((c_in,) if unbatched else (batch, c_in)) + size, x_dtype)
    weight = _values(rng, (c_in, c_out // groups) + kernel, w_dtype)
    bias = _values(rng, (c_out,), w_dtype) if draw(st.booleans()) else None
    return x, weight, bias, dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups,
                                 dilation=dilation)


@st.composite
def pool_calls(draw, nd, op):
    """``(x, kwargs)``: a random max or avg pooling whose windows all read the input."""
    x_dtype = draw(st.sampled_from([d for d, _ in DTYPES]))
    kernel = tuple(draw(st.integers(1, 3 if nd == 3 else 4)) for _ in range(nd))
    stride = None if draw(st.booleans()) else tuple(draw(st.integers(1, 3)) for _ in range(nd))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd)) if op == "max" else (1,) * nd
    ceil_mode = draw(st.booleans())
    size = []
    for k, d, p in zip(kernel, dilation, padding):
        low = max(1, d * (k - 1) + 1 - 2 * p)
        size.append(draw(st.integers(low, max(low, MAX_SIZE[nd]))))
    for n, k, s, p, d in zip(size, kernel, stride or kernel, padding, dilation):
        assume(_windows_touch_input(n, k, s, p, d, pool_output_size(n, k, s, p, d, ceil_mode)))
    batch, unbatched = _batch(draw)
    channels = draw(st.integers(1, 3))
    shape = ((channels,) if unbatched else (batch, channels)) + tuple(size)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kwargs = dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode)
    if op == "max":
        return _distinct(rng, shape, x_dtype), dict(kwargs, dilation=dilation)
    kwargs["count_include_pad"] = draw(st.booleans())
    if nd > 1 and draw(st.booleans()):  # avg_pool1d has no divisor_override (as in PyTorch)
        kwargs["divisor_override"] = draw(st.integers(-9, 9).filter(bool))
    return _values(rng, shape, x_dtype), kwargs


def _lazy(draw, x, nd):
    """``x`` cut at random, and whether it has a batch axis."""
    return chunked(draw, x, nd, MAX_CHUNKS[nd]), x.ndim == nd + 2


@pytest.mark.parametrize("nd", [1, 2, 3])
@settings(max_examples=examples(25))
@given(data=st.data())
def test_conv_matches_in_memory(nd, data):
    x, weight, bias, kw = data.draw(conv_calls(nd))
    X, batched = _lazy(data.draw, x, nd)
    fn = getattr(fastconv, f"conv{nd}d")
    expected = fn(x, weight, bias, **kw)
    if data.draw(st.booleans()):  # a dask weight is computed (it is small)
        weight = da.from_array(weight, chunks=1)
    _check(fn(X, weight, bias, **kw), expected, X, batched)


@pytest.mark.parametrize("nd", [1, 2, 3])
@settings(max_examples=examples(25))
@given(data=st.data())
def test_conv_transpose_matches_in_memory(nd, data):
    x, weight, bias, kw = data.draw(transpose_calls(nd))
    X, batched = _lazy(data.draw, x, nd)
    fn = getattr(fastconv, f"conv_transpose{nd}d")
    _check(fn(X, weight, bias, **kw), fn(x, weight, bias, **kw), X, batched)


@pytest.mark.parametrize("nd", [1, 2, 3])
@settings(max_examples=examples(25))
@given(data=st.data())
def test_max_pool_matches_in_memory_exactly(nd, data):
    x, kw = data.draw(pool_calls(nd, "max"))
    X, batched = _lazy(data.draw, x, nd)
    fn = getattr(fastconv, f"max_pool{nd}d")
    values, indices = fn(x, **kw, return_indices=True)
    lazy_values, lazy_indices = fn(X, **kw, return_indices=True)
    assert lazy_indices.dtype == np.int64
    _check(lazy_values, values, X, batched, exact=True)
    _check(lazy_indices, indices, X, batched, exact=True)  # flat positions in the whole input plane
    _check(fn(X, **kw), values, X, batched, exact=True)


@pytest.mark.parametrize("nd", [1, 2, 3])
@settings(max_examples=examples(25))
@given(data=st.data())
def test_avg_pool_matches_in_memory(nd, data):
    x, kw = data.draw(pool_calls(nd, "avg"))
    X, batched = _lazy(data.draw, x, nd)
    fn = getattr(fastconv, f"avg_pool{nd}d")
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = fn(x, **kw)
        _check(fn(X, **kw), expected, X, batched)  # ~1 ulp: interior and border windows sum in another order


def test_ties_and_nan_in_max_pool_match_in_memory():
    """Ties take the same index as in memory, and a NaN wins its windows, whatever the chunks."""
    rng = np.random.default_rng(7)
    x = rng.integers(0, 3, (2, 2, 13, 11)).astype(np.float32)
    x[0, 1, 5, 4] = np.nan
    X = da.from_array(x, chunks=(1, 1, 4, 3))
    values, indices = fastconv.max_pool2d(x, 3, 2, 1, return_indices=True)
    lazy_values, lazy_indices = fastconv.max_pool2d(X, 3, 2, 1, return_indices=True)
    np.testing.assert_array_equal(lazy_values.compute(scheduler="sync"), values)
    np.testing.assert_array_equal(lazy_indices.compute(scheduler="sync"), indices)


def test_empty_batch():
    x = np.ones((0, 2, 6, 6), np.float32)
    X = da.from_array(x, chunks=(1, 1, 3, 3))
    w = np.ones((3, 2, 3, 3), np.float32)
    for lazy, eager in ((fastconv.conv2d(X, w, padding=1), fastconv.conv2d(x, w, padding=1)),
                        (fastconv.max_pool2d(X, 2), fastconv.max_pool2d(x, 2)),
                        (fastconv.avg_pool2d(X, 2), fastconv.avg_pool2d(x, 2))):
        assert lazy.shape == eager.shape
        assert lazy.compute(scheduler="sync").shape == eager.shape


# --------------------------------------------------------------------------------------------
# 3. Laziness, and the whole problem's strategy on every block


class CountingSource:
    """A dask array whose blocks come from a function that records every call (its chunk location)."""

    def __init__(self, x, chunks):
        self.x, self.calls = x, []
        self.lock = threading.Lock()

        def make(block_info=None):
            info = block_info[None]
            with self.lock:
                self.calls.append(info["chunk-location"])
            return self.x[tuple(slice(*where) for where in info["array-location"])]

        self.array = da.map_blocks(make, chunks=da.core.normalize_chunks(chunks, x.shape), dtype=x.dtype,
                                   meta=np.empty((0,) * x.ndim, x.dtype))


LAZY_OPS = {
    "conv2d": lambda X: fastconv.conv2d(X, np.ones((3, 2, 3, 3)), padding=1),
    "conv_transpose2d": lambda X: fastconv.conv_transpose2d(X, np.ones((2, 3, 3, 3)), stride=2, padding=1),
    "max_pool2d": lambda X: fastconv.max_pool2d(X, 3, 1, 1, return_indices=True)[1],
    "avg_pool2d": lambda X: fastconv.avg_pool2d(X, 3, 1, 1),
}


@pytest.mark.parametrize("op", list(LAZY_OPS))
def test_nothing_is_computed_until_asked_and_a_block_reads_only_its_neighbours(op):
    x = np.random.default_rng(0).standard_normal((4, 2, 24, 24))
    source = CountingSource(x, (1, 1, 4, 4))  # 4 x 2 x 6 x 6 = 288 blocks
    result = LAZY_OPS[op](source.array)
    assert source.calls == []  # building the graph computed nothing
    block = result.blocks[2, 0, 3, 2].compute(scheduler="sync")
    read = set(source.calls)
    assert read and len(read) <= 2 * 3 * 3  # both channel chunks, a few neighbours along each spatial axis
    assert {b for b, _, _, _ in read} == {2}  # only the block's own batch chunk
    assert all(abs(i - 3) <= 1 and abs(j - 2) <= 1 for _, _, i, j in read)
    starts = [np.cumsum((0,) + c) for c in result.chunks]
    where = tuple(slice(s[i], s[i + 1]) for s, i in zip(starts, (2, 0, 3, 2)))
    np.testing.assert_allclose(block, LAZY_OPS[op](x)[where], **tolerance(x.dtype))  # the in-memory call's share


def _spy_on_dispatch(monkeypatch):
    """Record ``(method asked, strategy chosen)`` of every ``dispatch.resolve``."""
    seen, real = [], fastconv.dispatch.resolve

    def resolve(method, op, geom, dtype, fn, args=None):
        hit = real(method, op, geom, dtype, fn, args)
        seen.append((method, hit[0]))
        return hit

    monkeypatch.setattr(fastconv.dispatch, "resolve", resolve)
    return seen


@pytest.mark.parametrize("method", ["auto", "loop", "img2col"])
def test_every_block_runs_the_whole_problems_strategy(monkeypatch, method):
    x = np.random.default_rng(1).standard_normal((2, 3, 20, 20))
    w = np.random.default_rng(2).standard_normal((4, 3, 3, 3))
    seen = _spy_on_dispatch(monkeypatch)
    expected = fastconv.conv2d(x, w, padding=1, method=method)
    ((asked, whole),) = set(seen)
    assert asked == method
    lazy = fastconv.conv2d(da.from_array(x, chunks=(1, 3, 5, 7)), w, padding=1, method=method)
    seen.clear()
    got = lazy.compute(scheduler="sync")
    assert len(seen) == lazy.npartitions and set(seen) == {(whole, whole)}  # 'auto' was decided once, whole
    np.testing.assert_allclose(got, expected, **tolerance(x.dtype))


# --------------------------------------------------------------------------------------------
# 4. Backward, chunked along the batch axis

MASKS = [(True, True, True), (True, False, False), (False, True, False), (False, False, True), (False, True, True)]


def _check_gradients(lazy, eager, batch_chunks, dtype):
    """Lazy gradients (None where the mask says so) equal to the in-memory ones; grad_input keeps
    ``batch_chunks`` (None: unbatched)."""
    for got, want in zip(lazy, eager):
        if want is None:
            assert got is None
            continue
        assert isinstance(got, da.Array) and got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got.compute(scheduler="sync"), want, **tolerance(dtype))
    if lazy[0] is not None and batch_chunks is not None:
        assert lazy[0].chunks[0] == batch_chunks


CONV_BACKWARD = {
    1: ((6, 4, 17), (6, 2, 3), dict(stride=2, padding=((1, 2),), dilation=2, groups=2)),
    2: ((5, 2, 9, 8), (4, 2, 3, 2), dict(stride=(2, 1), padding=1, dilation=(1, 2))),
    3: ((3, 2, 5, 6, 4), (2, 1, 2, 3, 2), dict(stride=1, padding="same", groups=2)),
}


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_conv_backward_matches_in_memory(nd, mask):
    x_shape, w_shape, kw = CONV_BACKWARD[nd]
    rng = np.random.default_rng(nd)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    g = rng.standard_normal(getattr(fastconv, f"conv{nd}d")(x, w, **kw).shape)
    backward = getattr(fastconv, f"conv{nd}d_backward")
    eager = backward(g, x, w, **kw, output_mask=mask)
    X, G = da.from_array(x, chunks=(2,) + x.shape[1:]), da.from_array(g, chunks=(2,) + g.shape[1:])
    _check_gradients(backward(G, X, w, **kw, output_mask=mask), eager, X.chunks[0], x.dtype)
    # spatially chunked arrays (gathered), a NumPy grad_output, and an unbatched call
    X2 = da.from_array(x, chunks=(1, 1) + (3,) * nd)
    _check_gradients(backward(g, X2, w, **kw, output_mask=mask), eager, X2.chunks[0], x.dtype)
    eager1 = backward(g[0], x[0], w, **kw, output_mask=mask)
    _check_gradients(backward(da.from_array(g[0], chunks=2), da.from_array(x[0], chunks=2), w, **kw,
                              output_mask=mask), eager1, None, x.dtype)


def test_conv_backward_tree_reduction_over_many_chunks():
    """20 batch chunks: the weight and bias gradients go through more than one level of the tree."""
    rng = np.random.default_rng(11)
    x, w = rng.standard_normal((20, 3, 7, 7)).astype(np.float32), rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    g = rng.standard_normal((20, 4, 5, 5)).astype(np.float32)
    eager = fastconv.conv2d_backward(g, x, w)
    lazy = fastconv.conv2d_backward(da.from_array(g, chunks=1), da.from_array(x, chunks=1), w)
    assert lazy[1].dtype == np.float32
    _check_gradients(lazy, eager, (1,) * 20, np.float32)


def test_backward_builds_without_reading_data():
    x = np.random.default_rng(12).standard_normal((4, 2, 8, 8))
    xs, gs = CountingSource(x, (1, 2, 4, 4)), CountingSource(np.ones((4, 3, 6, 6)), (2, 3, 6, 6))
    grads = fastconv.conv2d_backward(gs.array, xs.array, np.ones((3, 2, 3, 3)))
    _, indices = fastconv.max_pool2d(xs.array, 2, return_indices=True)
    pooled = fastconv.max_pool2d_backward(CountingSource(np.ones((4, 2, 4, 4)), 1).array, indices, x.shape)
    assert xs.calls == [] and gs.calls == []
    assert all(isinstance(g, da.Array) for g in grads) and isinstance(pooled, da.Array)
    grads[1].compute(scheduler="sync")
    assert len(set(xs.calls)) == 16 and len(set(gs.calls)) == 2  # now every block is read


TRANSPOSE_BACKWARD = {
    1: ((5, 4, 9), (4, 3, 3), dict(stride=2, padding=((1, 0),), output_padding=1, groups=2, dilation=1)),
    2: ((4, 2, 5, 4), (2, 2, 3, 2), dict(stride=(2, 1), padding=1, output_padding=(1, 0), dilation=(1, 2))),
}


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("nd", [1, 2])
def test_conv_transpose_backward_matches_in_memory(nd, mask):
    x_shape, w_shape, kw = TRANSPOSE_BACKWARD[nd]
    rng = np.random.default_rng(nd + 10)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    g = rng.standard_normal(getattr(fastconv, f"conv_transpose{nd}d")(x, w, **kw).shape)
    backward = getattr(fastconv, f"conv_transpose{nd}d_backward")
    eager = backward(g, x, w, **kw, output_mask=mask)
    X, G = da.from_array(x, chunks=(3,) + x.shape[1:]), da.from_array(g, chunks=(3,) + g.shape[1:])
    _check_gradients(backward(G, X, w, **kw, output_mask=mask), eager, X.chunks[0], x.dtype)
    X2, G2 = da.from_array(x, chunks=(1, 1) + (2,) * nd), da.from_array(g, chunks=(2, 1) + (3,) * nd)
    _check_gradients(backward(G2, X2, w, **kw, output_mask=mask), eager, None, x.dtype)


@pytest.mark.parametrize("spatial_chunks", [(13, 11), (4, 3)])
def test_pool_backward_matches_in_memory(spatial_chunks):
    rng = np.random.default_rng(5)
    x = _distinct(rng, (5, 2, 13, 11), np.float64)
    X = da.from_array(x, chunks=(2, 1) + spatial_chunks)
    kw = dict(kernel_size=3, stride=2, padding=1)
    values, indices = fastconv.max_pool2d(x, **kw, return_indices=True)
    _, lazy_indices = fastconv.max_pool2d(X, **kw, return_indices=True)
    g = rng.standard_normal(values.shape)
    G = da.from_array(g, chunks=(2, 2) + spatial_chunks)
    lazy = fastconv.max_pool2d_backward(G, lazy_indices, x.shape)
    assert isinstance(lazy, da.Array) and lazy.chunks[0] == G.chunks[0]
    np.testing.assert_allclose(lazy.compute(scheduler="sync"), fastconv.max_pool2d_backward(g, indices, x.shape),
                               **tolerance(g.dtype))
    for avg in (dict(ceil_mode=True, count_include_pad=False), dict(divisor_override=-4)):
        g = rng.standard_normal(fastconv.avg_pool2d(x, **kw, **avg).shape)
        lazy = fastconv.avg_pool2d_backward(da.from_array(g, chunks=(2, 2) + spatial_chunks), x.shape, **kw, **avg)
        assert isinstance(lazy, da.Array) and lazy.shape == x.shape
        np.testing.assert_allclose(lazy.compute(scheduler="sync"),
                                   fastconv.avg_pool2d_backward(g, x.shape, **kw, **avg), **tolerance(g.dtype))
    # unbatched
    g1 = rng.standard_normal(fastconv.avg_pool2d(x[0], **kw).shape)
    lazy = fastconv.avg_pool2d_backward(da.from_array(g1, chunks=1), x.shape[1:], **kw)
    np.testing.assert_allclose(lazy.compute(scheduler="sync"), fastconv.avg_pool2d_backward(g1, x.shape[1:], **kw),
                               **tolerance(g1.dtype))


# --------------------------------------------------------------------------------------------
# 5. Threads


def _every_op(X, w, wt):
    """A few lazy results of every forward op (and a backward) on ``X``."""
    values, indices = fastconv.max_pool2d(X, 3, 2, 1, return_indices=True)
    grad_x, grad_w, grad_b = fastconv.conv2d_backward(fastconv.conv2d(X, w, padding=1), X, w, padding=1)
    return [fastconv.conv2d(X, w, padding=1, stride=(1, 2)), fastconv.conv_transpose2d(X, wt, stride=2),
            values, indices, fastconv.avg_pool2d(X, 3, 2, 1, count_include_pad=False), grad_x, grad_w, grad_b]


@pytest.fixture
def problem():
    rng = np.random.default_rng(21)
    x = rng.standard_normal((4, 3, 30, 28)).astype(np.float32)
    return x, rng.standard_normal((5, 3, 3, 3)).astype(np.float32), rng.standard_normal((3, 2, 3, 3)).astype(np.float32)


def test_threaded_scheduler_equals_sync(problem):
    x, w, wt = problem
    results = _every_op(da.from_array(x, chunks=(1, 3, 8, 9)), w, wt)
    sync = dask.compute(*results, scheduler="sync")
    for _ in range(3):
        threaded = dask.compute(*results, scheduler="threads", num_workers=4)
        for a, b in zip(threaded, sync):
            np.testing.assert_array_equal(a, b)
    assert _dask._running == 0


@pytest.fixture
def block_threads(monkeypatch):
    """The thread count every conv2d block sees (recorded inside the adapter's ``sharing``)."""
    seen, real = [], fastconv.conv.conv2d
    state = {"barrier": None}

    def conv2d(*args, **kwargs):
        barrier = state["barrier"]
        if barrier is not None:
            barrier.wait()  # every block is inside ``sharing`` at once
        seen.append(fastconv.get_num_threads())
        if barrier is not None:
            barrier.wait()
        return real(*args, **kwargs)

    monkeypatch.setattr(fastconv.conv, "conv2d", conv2d)
    return seen, state


def test_one_block_alone_gets_the_budget_of_the_thread_that_built_the_graph(block_threads):
    seen, _ = block_threads
    x, w = np.ones((3, 2, 8, 8)), np.ones((2, 2, 3, 3))
    X = da.from_array(x, chunks=(1, 2, 8, 8))
    top = fastconv.get_num_threads()
    for budget in sorted({1, top}):
        seen.clear()
        with fastconv.num_threads(budget):
            y = fastconv.conv2d(X, w)
        y.compute(scheduler="sync")  # computed with ``top`` threads in this thread
        assert seen == [budget] * 3
        assert fastconv.get_num_threads() == top  # restored after each block


def test_blocks_running_together_share_the_budget(block_threads):
    seen, state = block_threads
    state["barrier"] = threading.Barrier(2, timeout=30)
    X = da.from_array(np.ones((2, 2, 8, 8)), chunks=(1, 2, 8, 8))
    budget = fastconv.get_num_threads()
    fastconv.conv2d(X, np.ones((2, 2, 3, 3))).compute(scheduler="threads", num_workers=2)
    assert seen == [max(1, budget // 2)] * 2
    assert _dask._running == 0


def test_sharing_counts_running_blocks_and_restores_on_error():
    top = numba_threads()
    with _dask.sharing(10**6):
        assert fastconv.get_num_threads() == top  # clipped to the threads Numba started with
        with _dask.sharing(top):
            assert fastconv.get_num_threads() == max(1, top // 2)
    with pytest.raises(RuntimeError):
        with _dask.sharing(top):
            raise RuntimeError("a failing block")
    assert _dask._running == 0 and fastconv.get_num_threads() == top


_WORKQUEUE = """
import sys, numba, numpy as np, dask, dask.array as da, fastconv
rng = np.random.default_rng(3)
x = rng.standard_normal((8, 4, 40, 40)).astype(np.float32)
w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
X = da.from_array(x, chunks=(1, 4, 20, 20))
lazy = [fastconv.conv2d(X, w, padding=1), fastconv.max_pool2d(X, 3, 1, 1), fastconv.avg_pool2d(X, 2)]
for _ in range(3):  # four threads launching parallel kernels, again and again
    got = dask.compute(*lazy, scheduler="threads", num_workers=4)
np.savez(sys.argv[1], x=x, w=w, conv=got[0], max=got[1], avg=got[2])
print(numba.threading_layer())
"""


@pytest.mark.skipif(numba_threads() == 1 or not fastconv._jit.PARALLEL,
                    reason="serial kernels (one thread, or NUMBA_BOUNDSCHECK=1): no parallel launches to collide")
def test_workqueue_layer_survives_a_threaded_scheduler(tmp_path):
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue")
    path = tmp_path / "results.npz"
    out = subprocess.run([sys.executable, "-c", _WORKQUEUE, str(path)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]  # workqueue aborts the process on concurrent launches
    assert out.stdout.strip().splitlines()[-1] == "workqueue"
    got = np.load(path)
    x, w = got["x"], got["w"]
    np.testing.assert_allclose(got["conv"], fastconv.conv2d(x, w, padding=1), **tolerance(x.dtype))
    np.testing.assert_array_equal(got["max"], fastconv.max_pool2d(x, 3, 1, 1))
    np.testing.assert_allclose(got["avg"], fastconv.avg_pool2d(x, 2), **tolerance(x.dtype))


def test_no_dask_is_imported_for_numpy_calls():
    code = ("import sys, numpy as np, fastconv; fastconv.conv2d(np.ones((1, 1, 4, 4)), np.ones((1, 1, 2, 2)));"
            "fastconv.max_pool2d(np.ones((1, 4, 4)), 2); print(sorted(m for m in sys.modules if m.startswith('dask')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


# --------------------------------------------------------------------------------------------
# 6. dask.distributed


def _cluster():
    distributed = pytest.importorskip("distributed")
    return distributed, distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                                 dashboard_address=":0", silence_logs=logging.ERROR)


@pytest.fixture(scope="module")
def client():
    distributed, cluster = _cluster()
    try:
        client = distributed.Client(cluster, set_as_default=False)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def test_process_cluster_equals_threaded_scheduler(client, problem):
    x, w, wt = problem
    results = _every_op(da.from_array(x, chunks=(1, 3, 8, 9)), w, wt)
    threaded = dask.compute(*results, scheduler="threads", num_workers=4)
    remote = client.gather(client.compute(results))
    for a, b in zip(remote, threaded):
        np.testing.assert_array_equal(a, b)


def test_a_worker_task_uses_the_workers_threads(client):
    def threads_in_a_task():
        with _dask.sharing(10**6):
            return fastconv.get_num_threads()

    assert client.submit(threads_in_a_task, pure=False).result(timeout=60) == 1  # threads_per_worker=1


def test_a_killed_worker_does_not_lose_the_result(tmp_path):
    distributed, cluster = _cluster()
    try:
        client = distributed.Client(cluster, set_as_default=False)
        try:
            rng = np.random.default_rng(9)
            x = rng.standard_normal((6, 2, 24, 24))
            w = rng.standard_normal((3, 2, 3, 3))
            log = tmp_path / "blocks"
            log.touch()

            def slowly(block):
                time.sleep(0.2)
                with open(log, "a") as f:
                    f.write(".")
                return block

            X = da.from_array(x, chunks=(1, 2, 12, 12)).map_blocks(slowly, dtype=x.dtype)  # 24 slow blocks
            lazy = [fastconv.conv2d(X, w, padding=1), fastconv.max_pool2d(X, 3, 2, 1, return_indices=True)[1]]
            expected = [fastconv.conv2d(x, w, padding=1), fastconv.max_pool2d(x, 3, 2, 1, return_indices=True)[1]]
            pids = client.run(os.getpid)
            futures = client.compute(lazy)
            deadline = time.monotonic() + 120
            while len(log.read_text()) < 4 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert 4 <= len(log.read_text()) < 24 and not any(f.done() for f in futures)  # the kill lands mid-way
            victim = sorted(pids)[0]
            os.kill(pids[victim], signal.SIGKILL)
            got = [f.result(timeout=300) for f in futures]
            np.testing.assert_allclose(got[0], expected[0], **tolerance(x.dtype))
            np.testing.assert_array_equal(got[1], expected[1])
            client.wait_for_workers(2, timeout=60)
            assert pids[victim] not in client.run(os.getpid).values()  # the worker was replaced
        finally:
            client.close()
    finally:
        cluster.close()


# --------------------------------------------------------------------------------------------
# 7. Errors


@pytest.mark.parametrize("fn, nd", [("conv1d", 1), ("conv2d", 2), ("conv3d", 3), ("conv_transpose2d", 2)])
def test_out_is_refused_for_dask_input(fn, nd):
    X = da.ones((1, 2) + (4,) * nd, chunks=2)
    w = np.ones((2, 2) + (3,) * nd)
    with pytest.raises(TypeError, match=rf"^{fn}: out= is not supported for dask arrays"):
        getattr(fastconv, fn)(X, w, out=np.empty(1))


def test_out_alternative_store_to_zarr(tmp_path):
    """What the out= message suggests: store the lazy result (here a zarr array read and written chunk by chunk)."""
    pytest.importorskip("zarr")
    x = np.random.default_rng(13).standard_normal((3, 2, 20, 18)).astype(np.float32)
    da.from_array(x, chunks=(1, 2, 7, 6)).to_zarr(str(tmp_path / "x.zarr"))
    X = da.from_zarr(str(tmp_path / "x.zarr"))
    w = np.ones((4, 2, 3, 3), np.float32)
    with dask.config.set(scheduler="sync"):
        fastconv.conv2d(X, w, padding=1).to_zarr(str(tmp_path / "y.zarr"))
        stored = da.from_zarr(str(tmp_path / "y.zarr")).compute()
    np.testing.assert_allclose(stored, fastconv.conv2d(x, w, padding=1), **tolerance(x.dtype))


UNKNOWN = {
    "conv2d": lambda X: fastconv.conv2d(X, np.ones((2, 2, 3, 3))),
    "conv_transpose2d": lambda X: fastconv.conv_transpose2d(X, np.ones((2, 2, 3, 3))),
    "max_pool2d": lambda X: fastconv.max_pool2d(X, 2),
    "avg_pool2d": lambda X: fastconv.avg_pool2d(X, 2),
    "conv2d_backward": lambda X: fastconv.conv2d_backward(da.ones((2, 2, 4, 4)), X, np.ones((2, 2, 3, 3))),
}


@pytest.mark.parametrize("fn", list(UNKNOWN))
def test_unknown_chunk_sizes_are_refused(fn):
    X = da.ones((3, 2, 6, 6), chunks=(1, 2, 3, 3))
    X = X[da.from_array(np.array([True, False, True]))]  # boolean indexing: the batch size is unknown
    assert np.isnan(X.shape[0])
    with pytest.raises(ValueError, match=rf"^{fn}: .*unknown chunk sizes.*compute_chunk_sizes\(\)"):
        UNKNOWN[fn](X)


def test_chunks_that_are_not_numpy_are_refused():
    X = da.ma.masked_greater(da.ones((1, 2, 6, 6), chunks=3), 0)
    with pytest.raises(TypeError, match="^conv2d: x must be a dask array of NumPy chunks, got chunks of type Masked"):
        fastconv.conv2d(X, np.ones((2, 2, 3, 3)))


BAD = [
    ("conv2d", (np.ones((3, 3, 3, 3)),), {}),  # 3 weight channels for 2 input channels
    ("conv2d", (np.ones((2, 2, 9, 9)),), {}),  # window larger than the input
    ("conv2d", (np.ones((2, 2, 3, 3)),), dict(stride=0)),
    ("conv2d", (np.ones((2, 2, 3, 3)),), dict(stride=1.5)),
    ("conv2d", (np.ones((2, 2, 3, 3)),), dict(method="fourier")),
    ("conv3d", (np.ones((2, 2, 3, 3, 3)),), {}),  # unbatched (C, D, H, W): depth 2 < kernel 3
    ("conv_transpose2d", (np.ones((2, 2, 3, 3)),), dict(stride=2, output_padding=2)),
    ("conv_transpose2d", (np.ones((2, 2, 3, 3)),), dict(padding="same")),
    ("max_pool2d", (3,), dict(padding=2)),
    ("max_pool2d", (2,), dict(padding=1, dilation=7)),  # a window of padding only
    ("avg_pool2d", (2,), dict(divisor_override=0)),
    ("avg_pool2d", (2,), dict(ceil_mode="yes")),
]


@pytest.mark.parametrize("fn, args, kwargs", BAD)
def test_bad_geometry_raises_as_in_memory_at_call_time(fn, args, kwargs):
    x = np.ones((2, 2, 6, 6))
    with pytest.raises((ValueError, TypeError)) as eager:
        getattr(fastconv, fn)(x, *args, **kwargs)
    source = CountingSource(x, (1, 1, 3, 3))
    with pytest.raises(type(eager.value)) as lazy:
        getattr(fastconv, fn)(source.array, *args, **kwargs)
    assert str(lazy.value) == str(eager.value)
    assert source.calls == []  # raised while building, before any data was read


def test_missing_dask_names_the_extra(monkeypatch):
    X = da.ones((1, 1, 4, 4))
    monkeypatch.setitem(sys.modules, "dask.array", None)  # import dask.array now raises ImportError
    with pytest.raises(ImportError, match=r"^conv2d: needs dask .*pip install \"fastconv\[dask\]\""):
        _dask.require("conv2d")
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"fastconv\[dask\]"):
        _dask.require("max_pool2d", "distributed")
    assert not _dask.is_dask(X)  # is_dask never imports: no dask.array module loaded, no dask array


def test_pool_size_never_calls_what_a_thread_was_started_with():
    """Reading the executor behind a task's thread must not call a user's thread argument."""
    import threading

    called, seen = [], []

    def callback():
        called.append(True)

    def work(argument):
        seen.append(_dask._pool_threads())

    thread = threading.Thread(target=work, args=(callback,), name="Worker_3")
    thread.start()
    thread.join()
    assert called == [] and seen == [1]


@pytest.mark.parametrize("nd, shape, chunks, output_size", [
    (1, (5, 3, 17), (2, 1, 4), 5), (2, (3, 2, 13, 11), (1, 1, 5, 4), (4, None)),
    (3, (2, 2, 5, 6, 7), (1, 2, 2, 3, 3), (2, 3, 4)), (2, (3, 9, 8), (2, 4, 4), 3)])
def test_adaptive_pooling_is_lazy_by_batch_chunk_and_equal(nd, shape, chunks, output_size):
    rng = np.random.default_rng(nd)
    x = rng.integers(-3, 4, shape).astype(np.float32)  # ties: indices must still match
    X = da.from_array(x, chunks=chunks)
    avg = getattr(fastconv, f"adaptive_avg_pool{nd}d")
    got = avg(X, output_size)
    assert isinstance(got, da.Array)
    if x.ndim == nd + 2:
        assert got.chunks[0] == X.chunks[0]  # batch chunks one to one
    np.testing.assert_allclose(got.compute(scheduler="sync"), avg(x, output_size), rtol=1e-6, atol=1e-6)
    values, indices = getattr(fastconv, f"adaptive_max_pool{nd}d")(X, output_size, return_indices=True)
    ref, ref_indices = getattr(fastconv, f"adaptive_max_pool{nd}d")(x, output_size, return_indices=True)
    got_values, got_indices = dask.compute(values, indices, scheduler="sync")
    np.testing.assert_array_equal(got_values, ref)
    np.testing.assert_array_equal(got_indices, ref_indices)
