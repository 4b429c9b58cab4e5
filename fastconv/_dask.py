"""Dask arrays in, dask arrays out: the adapter between dask and fastconv's NumPy functions.

Every forward op (``conv1d/2d/3d``, ``conv_transpose1d/2d/3d``, ``max_pool1d/2d/3d``,
``avg_pool1d/2d/3d``) given a ``dask.array.Array`` returns a lazy dask array; the kernels never
know. The adapter resolves the whole problem once (shapes, padding, the strategy ``auto``
picks), then cuts it along the input's chunks:

* the batch axis maps chunk to chunk; the channel axis is gathered into one chunk (rechunked
  when it is split: a convolution needs every input channel of a group, and a cut along
  channels would not save memory anyway);
* along each spatial axis every output element is *owned* by one block, and the input keeps its
  chunks. For convolution and pooling, output ``j`` reads input ``j*s - lo`` to
  ``j*s - lo + d*(k-1)``; an input chunk boundary ``c`` becomes the output boundary
  ``ceil(c/s)`` (aligned to the stride: chunks that are multiples of it give regular output
  chunks), so a block reads a halo of ``lo`` elements before its chunk and ``d*(k-1) - lo``
  after it ('same' padding: half the kernel on each side). A transposed convolution maps input
  ``j`` to outputs ``j*s - lo + t*d``: output boundaries at ``c*s``, halos of
  ``floor((d*(k-1) - lo)/s)`` before and ``ceil(lo/s)`` after. dask's own overlap machinery
  (:func:`dask.array.overlap.overlap`) gathers the halos;
* each block runs the in-memory function on its data with the padding that is left at that
  place (the image's own padding at the image's borders, none inside), and the strategy chosen
  for the whole problem: the same algorithm, the same sums, every output computed once.
  Average pooling divides by the whole problem's divisors (``count_include_pad`` and
  ``ceil_mode`` depend on where a window sits in the image); max-pool indices are flat
  positions in the whole input plane, as in memory.

Chunks too small for the halo are merged with a neighbour (and boundaries that would leave a
block without outputs dropped), so any chunking is accepted; an uneven last chunk and a stride
that does not divide the chunks are handled by the rounding above.

Adaptive pooling maps batch chunks one to one, every other axis gathered (its windows are
fractions of the whole axis). The backward functions take arrays chunked along the batch axis (other axes are gathered into one
chunk): ``grad_input`` chunk by chunk, ``grad_weight`` and ``grad_bias`` as dask's tree reduction
of per-chunk sums.

Threads. Inside a dask task fastconv's kernels run with ``budget // max(running, pool)`` threads
(at least one): ``budget`` is the thread count of the Python thread that built the graph
(threaded and synchronous schedulers) or the worker's ``nthreads`` (dask.distributed: dask
sizes its workers to the cores); ``running`` counts the fastconv blocks executing in this process
when the block starts, and ``pool`` the size of the thread pool running it (dask's threaded
scheduler: its ``num_workers``). The synchronous scheduler's one block
at a time uses the whole budget, as does a graph of one block; a threaded scheduler with a
thread per core runs one fastconv thread per block instead of ``cores x cores``. Numba's ``workqueue`` layer, which aborts
when two threads launch parallel kernels at once, is made safe by the launch lock of
:mod:`fastconv._jit` (launches take turns); ``omp`` and ``tbb`` run them side by side.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import importlib
import operator
import sys
import threading
import weakref

import numba
import numpy as np

from . import _validate as v
from . import dispatch, threads
from .geometry import avg_pool_divisors, conv_problem, normalize_tuple, pool_problem

#: How to install what the dask path needs.
EXTRA = 'pip install "fastconv[dask]"'


def is_dask(value) -> bool:
    """Whether ``value`` is a ``dask.array.Array`` (never imports dask: no dask loaded, no dask array)."""
    module = sys.modules.get("dask.array")
    return module is not None and isinstance(value, module.Array)


def require(fn: str, module: str = "dask.array"):
    """Import ``module`` (part of the ``dask`` extra) or raise an ImportError that names the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"{fn}: needs {module.split('.')[0]} (fastconv's optional extra): {EXTRA}") from error


# --------------------------------------------------------------------------------------------
# Where the blocks are: per spatial axis, pure integer arithmetic


@dataclasses.dataclass(frozen=True)
class Axis:
    """How one spatial axis is cut.

    ``chunks``: the input's chunk sizes (before halos); ``depth``: the ``(left, right)`` halo each
    block is read with; ``out_chunks``: the output's chunk sizes. Per block: ``crop``, the
    ``(start, stop)`` of the data (with halo) its problem reads; ``pad``, the ``(lo, hi)`` padding
    left at that place; ``extra``, a transposed convolution's ``output_padding`` there; ``origin``,
    the global input position of ``crop``'s start.
    """

    chunks: tuple
    depth: tuple
    out_chunks: tuple
    crop: tuple
    pad: tuple
    extra: tuple
    origin: tuple


def _cuts(chunks) -> list:
    """The interior boundaries of ``chunks`` (positions where a chunk starts, excluding 0)."""
    cuts, position = [], 0
    for size in chunks[:-1]:
        position += size
        cuts.append(position)
    return cuts


def _sizes(starts, n) -> tuple:
    """Chunk sizes from chunk starts (the first 0) and the total length."""
    return tuple(b - a for a, b in zip(starts, list(starts[1:]) + [n]))


def _blocks(chunks, n, halo, first_output, valid):
    """Chunk starts and output boundaries: an input boundary ``c`` is kept when ``valid(previous, c)``
    holds, and when every chunk stays at least ``halo`` long (dask's overlap takes a block's halo
    from its neighbour alone and asks it of every chunk); a short last chunk joins the one before."""
    starts, outs = [0], [0]
    for c in _cuts(chunks):
        b = first_output(c)
        if c - starts[-1] < halo or not valid(outs[-1], b):
            continue
        starts.append(c)
        outs.append(b)
    while len(starts) > 1 and n - starts[-1] < halo:
        starts.pop()
        outs.pop()
    return starts, outs


def window_axis(chunks, n, k, s, d, lo, hi, o) -> Axis:
    """Cut an axis of a convolution or pooling (output ``j`` reads ``j*s - lo + t*d``, ``t < k``).

    The input keeps its chunks; an input boundary ``c`` becomes the output boundary
    ``B = ceil(c/s)`` (so chunks that are multiples of the stride give regular output chunks), and
    a block reads ``lo`` elements before its chunk and ``d*(k-1) - lo`` after it. A boundary is
    dropped where the block before it would have no outputs or no data (its windows all in the
    padding), and where a chunk would be shorter than the halo.
    """
    extent = d * (k - 1)
    left, right = lo, max(0, extent - lo)

    def valid(b_prev, b):
        # outputs, and a first window that starts inside the input (both blocks have data)
        return b_prev < b < o and b * s - lo < n and (b - 1) * s - lo + extent >= 0

    starts, outs = _blocks(chunks, n, max(left, right), lambda c: -(-c // s), valid)
    if len(starts) == 1:  # one block: the whole problem (its windows may all lie in the padding)
        overhang = (o - 1) * s - lo + extent + 1 - n  # ceil_mode's last window may reach past hi
        return Axis(chunks=(n,), depth=(0, 0), out_chunks=(o,), crop=((0, n),), pad=((lo, max(hi, overhang)),),
                    extra=(0,), origin=(0,))
    bounds = outs + [o]
    crop, pad, origin = [], [], []
    for j, begin in enumerate(starts):
        data = max(0, begin - left) if j else 0   # where block j's data (with its halo) starts
        first = bounds[j] * s - lo                 # where its first window starts
        last = (bounds[j + 1] - 1) * s - lo + extent  # where its last window ends
        crop.append((max(first, 0) - data, min(last + 1, n) - data))
        pad.append((max(0, -first), max(0, last + 1 - n)))
        origin.append(max(first, 0))
    return Axis(chunks=_sizes(starts, n), depth=(left, right), out_chunks=_sizes(outs, o), crop=tuple(crop),
                pad=tuple(pad), extra=(0,) * len(starts), origin=tuple(origin))


def transpose_axis(chunks, n, k, s, d, lo, hi, output_padding, o) -> Axis:
    """Cut an axis of a transposed convolution (input ``j`` reaches outputs ``j*s - lo + t*d``).

    An input boundary ``c`` becomes the output boundary ``c*s``; the block owning outputs
    ``[c_j*s, c_{j+1}*s)`` reads ``floor((d*(k-1) - lo)/s)`` inputs before its chunk and
    ``ceil(lo/s)`` after it. Its own problem: padding ``lo + c_j*s - data_start*s`` at the
    start, and at the end whatever crops the block's full output to its share (or an
    ``output_padding`` where that output is shorter: at most the problem's own, or ``s - 1``
    with a stride longer than the kernel).
    """
    extent = d * (k - 1)
    left, right = max(0, (extent - lo) // s), -(-lo // s)
    starts, outs = _blocks(chunks, n, max(left, right), lambda c: c * s, lambda b_prev, b: b_prev < b < o)
    bounds = outs + [o]
    crop, pad, extra, origin = [], [], [], []
    for j, begin in enumerate(starts):
        data = max(0, begin - left) if j else 0
        end = min(n, starts[j + 1] + right) if j + 1 < len(starts) else n
        lo_j = lo + bounds[j] - data * s
        rest = (end - data - 1) * s + extent + 1 - lo_j - (bounds[j + 1] - bounds[j])
        if rest < 0 and -rest >= max(s, d):  # never: see the docstring
            raise AssertionError(f"transpose_axis: block {j} needs output_padding {-rest} (stride {s}, dilation {d})")
        crop.append((0, end - data))
        pad.append((lo_j, max(rest, 0)))
        extra.append(max(-rest, 0))
        origin.append(data)
    many = len(starts) > 1
    return Axis(chunks=_sizes(starts, n), depth=(left, right) if many else (0, 0), out_chunks=_sizes(outs, o),
                crop=tuple(crop), pad=tuple(pad), extra=tuple(extra), origin=tuple(origin))


# --------------------------------------------------------------------------------------------
# Threads inside dask tasks

_running = 0
_running_lock = threading.Lock()


def _pool_threads() -> int:
    """The size of the thread pool running this task (dask's threaded scheduler: its ``num_workers``), else 1.

    A ``concurrent.futures.ThreadPoolExecutor`` starts its threads one per submitted task, so a
    block that starts first may see only its own thread; the pool's ``max_workers`` is known
    from the start. It is read from the worker thread's arguments (CPython's executor passes a
    weak reference to itself); failing that, the pool's live threads are counted.
    """
    thread = threading.current_thread()
    if thread is threading.main_thread():  # the synchronous scheduler, or the caller's own call
        return 1
    try:
        reference = thread._args[0]
        if isinstance(reference, weakref.ref):  # never call anything else a thread was started with
            executor = reference()
            if isinstance(executor, concurrent.futures.ThreadPoolExecutor):
                return max(1, int(executor._max_workers))
    except Exception:  # another Python, another executor: count the pool's threads instead
        pass
    prefix, sep, index = thread.name.rpartition("_")
    if not (sep and prefix and index.isdigit()):
        return 1
    return sum(1 for t in threading.enumerate() if t.name.rpartition("_")[0] == prefix)


def _worker_threads():
    """The ``nthreads`` of the dask.distributed worker running this task, or None outside one."""
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return None
    try:
        worker = distributed.get_worker()
    except ValueError:
        return None
    state = getattr(worker, "state", worker)
    return getattr(state, "nthreads", None)


@contextlib.contextmanager
def sharing(budget: int):
    """Run the block inside with ``budget // max(running, pool)`` fastconv threads (at least one); see the
    module doc."""
    global _running
    worker = _worker_threads()
    if worker:
        budget = worker
    budget = max(1, min(int(budget), numba.config.NUMBA_NUM_THREADS))
    with _running_lock:
        _running += 1
        running = _running
    try:
        with threads.num_threads(max(1, budget // max(running, _pool_threads()))):
            yield
    finally:
        with _running_lock:
            _running -= 1


# --------------------------------------------------------------------------------------------
# Shared plumbing


def _meta_checked(x, name, fn):
    """Check a dask array's dtype and shape as fastconv checks arrays; return its NumPy meta."""
    if any(np.isnan(n) for n in x.shape):
        raise ValueError(f"{fn}: {name} has unknown chunk sizes (shape {x.shape}); call "
                         f"{name}.compute_chunk_sizes() first")
    meta = getattr(x, "_meta", None)
    if type(meta) is not np.ndarray:
        raise TypeError(f"{fn}: {name} must be a dask array of NumPy chunks, got chunks of type "
                        f"{type(meta).__name__}")
    return v.as_array(meta, name, fn)


def _concrete(value):
    """A dask weight or bias computed (they are small); anything else as it is."""
    return value.compute() if is_dask(value) else value


def _no_out(out, fn):
    if out is not None:
        raise TypeError(f"{fn}: out= is not supported for dask arrays (the result is lazy); "
                        "store the returned array instead (e.g. dask.array.store or .to_zarr)")


def _method(method, op, geom, dtype, fn):
    """The strategy for the whole problem: every block runs it ('measure' is left to each block)."""
    dispatch.check_method(method, fn)
    if method == "measure":
        return method
    return dispatch.resolve(method, op, geom, np.dtype(dtype), fn)[0]


def _budget() -> int:
    return threads.get_num_threads()


def _batched(x, nd):
    """``x`` with a batch axis (an unbatched ``(C, *spatial)`` array gets one of length 1)."""
    return x if x.ndim == nd + 2 else x[None]


def _gathered(x, nd, spatial_chunks):
    """``x`` (batched) with the channel axis in one chunk and the spatial axes cut as given."""
    return x.rechunk((x.chunks[0], (x.shape[1],)) + tuple(spatial_chunks))


def _with_halos(x, axes):
    """``x`` with each block extended by its axis' halo (dask's overlap, nothing beyond the edges)."""
    depth = {2 + a: axis.depth for a, axis in enumerate(axes) if axis.depth != (0, 0)}
    if not depth:
        return x
    overlap = require("fastconv", "dask.array.overlap").overlap
    return overlap(x, depth=depth, boundary={a: "none" for a in depth}, allow_rechunk=False)


def _local(block, axes, location):
    """The part of ``block`` (at spatial ``location``) its problem reads, C-contiguous."""
    index = tuple(slice(*axis.crop[i]) for axis, i in zip(axes, location))
    return np.ascontiguousarray(block[(slice(None), slice(None)) + index])


def _unbatched(result, x, nd):
    return result if x.ndim == nd + 2 else result[0]


# --------------------------------------------------------------------------------------------
# Convolution and transposed convolution


def _spatial(geom, nd, field):
    """The user's ``nd`` axes of a lifted record's per-axis ``field``."""
    values = getattr(geom, field)
    return tuple(values[len(values) - nd:])


def conv(fn, nd, x, weight, bias, stride, padding, dilation, groups, method, out):
    """``conv{nd}d`` of a dask array: a lazy dask array (see the module doc)."""
    da = require(fn)
    _no_out(out, fn)
    meta = _meta_checked(x, "x", fn)
    weight = v.as_array(_concrete(weight), "weight", fn)
    bias = None if bias is None else v.as_array(_concrete(bias), "bias", fn)
    dtype = v.result_dtype(meta, weight)
    geom, _ = conv_problem(fn, nd, x.shape, weight.shape, None if bias is None else bias.shape, stride, padding,
                           dilation, groups, dtype)
    name = _method(method, "conv", geom, dtype, fn)
    xb = _batched(x, nd)
    axes = tuple(window_axis(xb.chunks[2 + a], *axis_args)
                 for a, axis_args in enumerate(zip(_spatial(geom, nd, "in_size"), _spatial(geom, nd, "kernel"),
                                                   _spatial(geom, nd, "stride"), _spatial(geom, nd, "dilation"),
                                                   *zip(*_spatial(geom, nd, "padding")),
                                                   _spatial(geom, nd, "out_size"))))
    source = _with_halos(_gathered(xb, nd, [a.chunks for a in axes]), axes)
    delayed = require(fn, "dask").delayed
    result = da.map_blocks(
        _conv_block, source, delayed(np.asarray(weight), pure=True), None if bias is None else np.asarray(bias),
        nd=nd, axes=axes, stride=_spatial(geom, nd, "stride"), dilation=_spatial(geom, nd, "dilation"),
        groups=geom.groups, method=name, budget=_budget(),
        chunks=(xb.chunks[0], (geom.out_channels,)) + tuple(a.out_chunks for a in axes),
        dtype=dtype, meta=np.empty((0,) * xb.ndim, dtype))
    return _unbatched(result, x, nd)


def _conv_block(block, weight, bias, *, nd, axes, stride, dilation, groups, method, budget, block_info=None):
    from .conv import conv1d, conv2d, conv3d
    location = block_info[None]["chunk-location"][2:]
    pads = tuple(axis.pad[i] for axis, i in zip(axes, location))
    with sharing(budget):
        return (conv1d, conv2d, conv3d)[nd - 1](_local(block, axes, location), weight, bias, stride, pads,
                                                dilation, groups, method=method)


def conv_transpose(fn, nd, x, weight, bias, stride, padding, output_padding, groups, dilation, method, out):
    """``conv_transpose{nd}d`` of a dask array: a lazy dask array (see the module doc)."""
    from .transpose import transpose_problem
    da = require(fn)
    _no_out(out, fn)
    meta = _meta_checked(x, "x", fn)
    weight = v.as_array(_concrete(weight), "weight", fn)
    bias = None if bias is None else v.as_array(_concrete(bias), "bias", fn)
    dtype = v.result_dtype(meta, weight)
    conv_geom, user_shape = transpose_problem(fn, nd, x.shape, weight.shape, None if bias is None else bias.shape,
                                              stride, padding, output_padding, groups, dilation, dtype)
    output_padding = normalize_tuple(output_padding, nd, "output_padding", fn, minimum=0)
    name = _method(method, "conv_backward", conv_geom, dtype, fn)
    xb = _batched(x, nd)
    strides, dilations = _spatial(conv_geom, nd, "stride"), _spatial(conv_geom, nd, "dilation")
    axes = tuple(transpose_axis(xb.chunks[2 + a], xb.shape[2 + a], k, s, d, lo, hi, op, o)
                 for a, (k, s, d, (lo, hi), op, o) in enumerate(zip(
                     _spatial(conv_geom, nd, "kernel"), strides, dilations, _spatial(conv_geom, nd, "padding"),
                     output_padding, _spatial(conv_geom, nd, "in_size"))))
    source = _with_halos(_gathered(xb, nd, [a.chunks for a in axes]), axes)
    delayed = require(fn, "dask").delayed
    result = da.map_blocks(
        _transpose_block, source, delayed(np.asarray(weight), pure=True),
        None if bias is None else np.asarray(bias), nd=nd, axes=axes, stride=strides, dilation=dilations,
        groups=conv_geom.groups, method=name, budget=_budget(),
        chunks=(xb.chunks[0], (conv_geom.in_channels,)) + tuple(a.out_chunks for a in axes),
        dtype=dtype, meta=np.empty((0,) * xb.ndim, dtype))
    return _unbatched(result, x, nd)


def _transpose_block(block, weight, bias, *, nd, axes, stride, dilation, groups, method, budget, block_info=None):
    from .transpose import conv_transpose1d, conv_transpose2d, conv_transpose3d
    location = block_info[None]["chunk-location"][2:]
    pads = tuple(axis.pad[i] for axis, i in zip(axes, location))
    extra = tuple(axis.extra[i] for axis, i in zip(axes, location))
    with sharing(budget):
        return (conv_transpose1d, conv_transpose2d, conv_transpose3d)[nd - 1](
            _local(block, axes, location), weight, bias, stride, pads, extra, groups, dilation, method=method)


# --------------------------------------------------------------------------------------------
# Pooling


def _pool_axes(geom, xb, nd):
    return tuple(window_axis(xb.chunks[2 + a], n, k, s, d, p, p, o) for a, (n, k, s, d, p, o) in enumerate(zip(
        *(_spatial(geom, nd, f) for f in ("in_size", "kernel", "stride", "dilation", "padding", "out_size")))))


def _block_problem(geom, nd, axes, location, batch, divisor_override):
    """The pooling problem of one block: the whole problem's window over the block's data and outputs."""
    lead = geom.rank - nd  # the axes a 1D problem was lifted by
    in_size = geom.in_size[:lead] + tuple(axis.crop[i][1] - axis.crop[i][0] for axis, i in zip(axes, location))
    out_size = geom.out_size[:lead] + tuple(axis.out_chunks[i] for axis, i in zip(axes, location))
    padding = geom.padding[:lead] + tuple(axis.pad[i][0] for axis, i in zip(axes, location))
    return dataclasses.replace(geom, batch=batch, in_size=in_size, out_size=out_size, padding=padding,
                               divisor_override=divisor_override)


def max_pool(fn, nd, x, kernel_size, stride, padding, dilation, ceil_mode, return_indices, method):
    """``max_pool{nd}d`` of a dask array: lazy values (and indices into each whole input plane)."""
    da = require(fn)
    meta = _meta_checked(x, "x", fn)
    dtype = v.result_dtype(meta)
    geom, _ = pool_problem(fn, nd, x.shape, kernel_size, stride, padding, dilation, ceil_mode, True, dtype)
    name = _method(method, "max_pool", geom, dtype, fn)
    xb = _batched(x, nd)
    axes = _pool_axes(geom, xb, nd)
    source = _with_halos(_gathered(xb, nd, [a.chunks for a in axes]), axes)
    chunks = (xb.chunks[0], (geom.channels,)) + tuple(a.out_chunks for a in axes)
    kwargs = dict(geom=geom, nd=nd, axes=axes, method=name, budget=_budget(), fn=fn)
    if not return_indices:
        values = da.map_blocks(_max_pool_block, source, **kwargs, indices=False, chunks=chunks, dtype=dtype,
                               meta=np.empty((0,) * xb.ndim, dtype))
        return _unbatched(values, x, nd)
    pairs = da.map_blocks(_max_pool_block, source, **kwargs, indices=True, chunks=chunks, dtype=object,
                          meta=np.empty((0,) * xb.ndim, object))
    values = pairs.map_blocks(operator.itemgetter(0), dtype=dtype, meta=np.empty((0,) * xb.ndim, dtype))
    index = pairs.map_blocks(operator.itemgetter(1), dtype=np.int64, meta=np.empty((0,) * xb.ndim, np.int64))
    return _unbatched(values, x, nd), _unbatched(index, x, nd)


def _max_pool_block(block, *, geom, nd, axes, method, budget, fn, indices, block_info=None):
    location = block_info[None]["chunk-location"][2:]
    data = _local(block, axes, location).astype(geom.dtype, copy=False)
    sub = _block_problem(geom, nd, axes, location, block.shape[0], None)
    x4 = data.reshape(sub.input_shape)
    out = np.empty(sub.output_shape, geom.dtype)
    where = np.empty(sub.output_shape, np.int64) if indices else None
    with sharing(budget):
        dispatch.run(method, "max_pool", sub, np.dtype(geom.dtype), fn, (x4, sub, out, where))
    shape = block.shape[:2] + out.shape[2 + geom.rank - nd:]
    if not indices:
        return out.reshape(shape)
    # flat positions in the block's data -> flat positions in the whole input plane
    lead = geom.rank - nd
    origin = (0,) * lead + tuple(axis.origin[i] for axis, i in zip(axes, location))
    coords = np.unravel_index(where, sub.in_size)
    flat = np.ravel_multi_index(tuple(c + o for c, o in zip(coords, origin)), geom.in_size)
    return out.reshape(shape), flat.reshape(shape)


def avg_pool(fn, nd, x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, method):
    """``avg_pool{nd}d`` of a dask array: each block sums its windows, divided by the whole problem's divisors."""
    da = require(fn)
    meta = _meta_checked(x, "x", fn)
    dtype = v.result_dtype(meta)
    geom, _ = pool_problem(fn, nd, x.shape, kernel_size, stride, padding, 1, ceil_mode, count_include_pad, dtype,
                           divisor_override)
    name = _method(method, "avg_pool", geom, dtype, fn)
    xb = _batched(x, nd)
    axes = _pool_axes(geom, xb, nd)
    source = _with_halos(_gathered(xb, nd, [a.chunks for a in axes]), axes)
    divisors = None
    if geom.divisor_override is None:  # each block's sums are divided by their share of these
        divisors = avg_pool_divisors(geom).astype(dtype).reshape(geom.out_size[geom.rank - nd:])
        divisors = require(fn, "dask").delayed(divisors, pure=True)
    result = da.map_blocks(_avg_pool_block, source, divisors, geom=geom, nd=nd, axes=axes, method=name,
                           budget=_budget(), fn=fn,
                           chunks=(xb.chunks[0], (geom.channels,)) + tuple(a.out_chunks for a in axes),
                           dtype=dtype, meta=np.empty((0,) * xb.ndim, dtype))
    return _unbatched(result, x, nd)


def _avg_pool_block(block, divisors, *, geom, nd, axes, method, budget, fn, block_info=None):
    location = block_info[None]["chunk-location"][2:]
    data = _local(block, axes, location).astype(geom.dtype, copy=False)
    override = geom.divisor_override if divisors is None else 1
    sub = _block_problem(geom, nd, axes, location, block.shape[0], override)
    out = np.empty(sub.output_shape, geom.dtype)
    with sharing(budget):
        dispatch.run(method, "avg_pool", sub, np.dtype(geom.dtype), fn, (data.reshape(sub.input_shape), sub, out))
    out = out.reshape(block.shape[:2] + out.shape[2 + geom.rank - nd:])
    if divisors is not None:
        starts = (sum(axis.out_chunks[:i]) for axis, i in zip(axes, location))
        share = tuple(slice(a, a + n) for a, n in zip(starts, out.shape[2:]))
        np.divide(out, divisors[share], out=out)
    return out


# --------------------------------------------------------------------------------------------
# Adaptive pooling: chunks along the batch axis (a window's extent depends on the whole axis)


def adaptive_pool(fn, nd, public, x, output_size, return_indices):
    """``adaptive_{max,avg}_pool{nd}d`` of a dask array: batch chunk by batch chunk, every other axis
    gathered (its windows are fractions of the whole axis, so no halo cuts it); lazy values (and
    indices)."""
    from .geometry import adaptive_pool_problem
    da = require(fn)
    meta = _meta_checked(x, "x", fn)
    dtype = v.result_dtype(meta)
    geom, user_shape = adaptive_pool_problem(fn, nd, x.shape, output_size, dtype)
    xb = _batched(x, nd)
    source = xb.rechunk((xb.chunks[0],) + tuple((n,) for n in xb.shape[1:]))
    chunks = (xb.chunks[0], (geom.channels,)) + tuple((n,) for n in user_shape[len(user_shape) - nd:])
    budget = _budget()

    def block(b):
        with sharing(budget):
            if return_indices:
                return public(b, output_size, return_indices=True)
            return public(b, output_size)

    if not return_indices:
        values = da.map_blocks(block, source, chunks=chunks, dtype=dtype, meta=np.empty((0,) * xb.ndim, dtype))
        return _unbatched(values, x, nd)
    pairs = da.map_blocks(block, source, chunks=chunks, dtype=object, meta=np.empty((0,) * xb.ndim, object))
    values = pairs.map_blocks(operator.itemgetter(0), dtype=dtype, meta=np.empty((0,) * xb.ndim, dtype))
    index = pairs.map_blocks(operator.itemgetter(1), dtype=np.int64, meta=np.empty((0,) * xb.ndim, np.int64))
    return _unbatched(values, x, nd), _unbatched(index, x, nd)


# --------------------------------------------------------------------------------------------
# Backward: chunks along the batch axis


def _by_batch(fn, nd, arrays, batched):
    """Dask versions of ``arrays`` (NumPy ones wrapped) with matching batch chunks and every other axis in one
    chunk; ``batched`` says whether they carry a batch axis (unbatched arrays become one chunk)."""
    da = require(fn)
    lead = next(a for a in arrays if is_dask(a))
    chunks = lead.chunks[0] if batched else None
    result = []
    for a in arrays:
        if not is_dask(a):
            a = da.from_array(np.asarray(a), chunks=-1)
        else:
            _meta_checked(a, "input", fn)
        if batched:
            result.append(a.rechunk((chunks,) + tuple((n,) for n in a.shape[1:])))
        else:
            result.append(a.rechunk(-1))
    return result


def _tree_sum(parts, shape, dtype):
    """The sum of per-chunk Delayed arrays of ``shape``: dask's tree reduction."""
    da = require("fastconv")
    stacked = da.stack([da.from_delayed(p, shape=shape, dtype=dtype) for p in parts])
    return stacked.sum(axis=0, split_every=8, dtype=dtype)


def _gradients(fn, backward, grad_output, x, weight, want, dtype, weight_shape, bias_shape, batched):
    """``(grad_input, grad_weight, grad_bias)`` of a convolution-like op, block by batch block.

    ``backward(g, x, output_mask)`` is the in-memory backward of one block; ``want`` the output mask.
    """
    da = require(fn)
    delayed = require(fn, "dask").delayed
    g, xs = _by_batch(fn, None, [grad_output, x], batched)
    grad_x = grad_w = grad_b = None
    if want[0]:
        grad_x = da.map_blocks(lambda gb, xb: backward(gb, xb, (True, False, False))[0], g, xs, dtype=dtype,
                               chunks=xs.chunks, meta=np.empty((0,) * xs.ndim, dtype))
    if want[1] or want[2]:
        pieces = [delayed(backward, pure=True)(gb, xb, (False, want[1], want[2]))
                  for gb, xb in zip(g.to_delayed().ravel(), xs.to_delayed().ravel())]
        if want[1]:
            grad_w = _tree_sum([delayed(operator.itemgetter(1))(p) for p in pieces], weight_shape, dtype)
        if want[2]:
            grad_b = _tree_sum([delayed(operator.itemgetter(2))(p) for p in pieces], bias_shape, dtype)
    return grad_x, grad_w, grad_b


def conv_backward(fn, nd, grad_output, x, weight, stride, padding, dilation, groups, method, output_mask):
    """``conv{nd}d_backward`` with dask ``grad_output`` and/or ``x``."""
    from . import conv as conv_module
    want = v.output_mask(output_mask, fn)
    dispatch.check_method(method, fn)
    weight = v.as_array(_concrete(weight), "weight", fn)
    xm = _meta_checked(x, "x", fn) if is_dask(x) else v.as_array(x, "x", fn)
    gm = _meta_checked(grad_output, "grad_output", fn) if is_dask(grad_output) else v.as_array(
        grad_output, "grad_output", fn)
    dtype = v.result_dtype(gm, xm, weight)
    geom, user_shape = conv_problem(fn, nd, x.shape, weight.shape, None, stride, padding, dilation, groups, dtype)
    if tuple(grad_output.shape) != tuple(user_shape):
        raise ValueError(f"{fn}: grad_output must have the forward output's shape {user_shape}, "
                         f"got {tuple(grad_output.shape)}")
    public = getattr(conv_module, f"conv{nd}d_backward")
    backward = functools.partial(_batch_backward, public, weight=weight, args=(stride, padding, dilation, groups),
                                 method=method, budget=_budget())
    return _gradients(fn, backward, grad_output, x, weight, want, dtype, weight.shape, (geom.out_channels,),
                      x.ndim == nd + 2)


def _batch_backward(public, g, x, mask, *, weight, args, method, budget):
    with sharing(budget):
        return public(g, x, weight, *args, method=method, output_mask=mask)


def conv_transpose_backward(fn, nd, grad_output, x, weight, stride, padding, output_padding, groups, dilation,
                            method, output_mask):
    """``conv_transpose{nd}d_backward`` with dask ``grad_output`` and/or ``x``."""
    from . import transpose as transpose_module
    from .transpose import transpose_problem
    want = v.output_mask(output_mask, fn)
    dispatch.check_method(method, fn)
    weight = v.as_array(_concrete(weight), "weight", fn)
    xm = _meta_checked(x, "x", fn) if is_dask(x) else v.as_array(x, "x", fn)
    gm = _meta_checked(grad_output, "grad_output", fn) if is_dask(grad_output) else v.as_array(
        grad_output, "grad_output", fn)
    dtype = v.result_dtype(gm, xm, weight)
    conv_geom, user_shape = transpose_problem(fn, nd, x.shape, weight.shape, None, stride, padding, output_padding,
                                              groups, dilation, dtype)
    if tuple(grad_output.shape) != tuple(user_shape):
        raise ValueError(f"{fn}: grad_output must have the forward output's shape {user_shape}, "
                         f"got {tuple(grad_output.shape)}")
    public = getattr(transpose_module, f"conv_transpose{nd}d_backward")
    backward = functools.partial(_batch_backward, public, weight=weight,
                                 args=(stride, padding, output_padding, groups, dilation), method=method,
                                 budget=_budget())
    return _gradients(fn, backward, grad_output, x, weight, want, dtype, weight.shape, (conv_geom.in_channels,),
                      x.ndim == nd + 2)


def pool_backward(fn, nd, public, grad_output, others, input_shape, kwargs):
    """A pooling backward with dask ``grad_output`` (and indices): ``grad_input`` batch block by batch block.

    ``public(grad_output, *others, input_shape, **kwargs)`` is the in-memory function; ``others`` are
    arrays shaped like ``grad_output`` (max pooling's indices).
    """
    from .pool import _input_shape
    da = require(fn)
    shape = _input_shape(fn, nd, input_shape)
    gm = _meta_checked(grad_output, "grad_output", fn) if is_dask(grad_output) else v.as_array(
        grad_output, "grad_output", fn)
    if grad_output.ndim != len(shape):
        raise ValueError(f"{fn}: grad_output must have input_shape's rank {len(shape)}, got shape "
                         f"{tuple(grad_output.shape)}")
    batched = len(shape) == nd + 2
    arrays = _by_batch(fn, nd, [grad_output, *others], batched)
    dtype = v.result_dtype(gm)
    batch_chunks = arrays[0].chunks[0] if batched else None
    chunks = ((batch_chunks,) + tuple((n,) for n in shape[1:])) if batched else tuple((n,) for n in shape)

    def block(g, *rest):
        local = ((g.shape[0],) + shape[1:]) if batched else shape
        with sharing(budget):
            return public(g, *rest, local, **kwargs)

    budget = _budget()
    return da.map_blocks(block, *arrays, dtype=dtype, chunks=chunks, meta=np.empty((0,) * len(shape), dtype))
