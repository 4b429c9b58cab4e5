"""Turn user input into checked, C-contiguous arrays, or raise a clear error.

Every message names the public function, the argument and what was expected.
Nothing here modifies an input: arrays that need another dtype or layout are
copied, the others are passed through as read-only views.
"""

from __future__ import annotations

import numpy as np

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_array(value, name: str, fn: str):
    """``np.asarray(value)`` that refuses dtypes convolution cannot mean anything for.

    Arrays of other libraries are taken through DLPack (no copy; a CPU torch
    tensor, for example) or ``__array__``.
    """
    if type(value) is np.ndarray and value.dtype.kind in "biuf":  # the common case, checked cheaply
        return value
    if value is None:
        raise TypeError(f"{fn}: {name} must be an array, got None")
    if not isinstance(value, np.ndarray) and hasattr(value, "__dlpack__"):
        try:
            return as_array(np.from_dlpack(value), name, fn)
        except (TypeError, ValueError, BufferError, RuntimeError):
            pass  # e.g. a device the CPU cannot read, or a tensor that requires grad: try __array__
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged lists, objects that refuse conversion
        raise TypeError(f"{fn}: {name} could not be converted to an array: {exc}") from None
    kind = arr.dtype.kind
    if kind not in "biuf":
        what = {
            "c": "complex",
            "O": "object",
            "U": "string",
            "S": "bytes",
            "M": "datetime",
            "m": "timedelta",
            "V": "structured",
        }.get(kind, str(arr.dtype))
        raise TypeError(
            f"{fn}: {name} must hold real numbers (bool, int or float), got {what} dtype {arr.dtype}"
        )
    return arr


def result_dtype(*arrays):
    """float32 or float64: ``np.result_type(*arrays, np.float32)``, as NumPy promotes with a float.

    float16 is computed in float32 (there are no half-precision kernels), and
    anything wider than float64 (``longdouble``) in float64.
    """
    dt = np.result_type(*[a.dtype for a in arrays], np.float32)
    return np.dtype(np.float64) if dt.itemsize > 4 else np.dtype(np.float32)


def check_ndim(arr, name: str, fn: str, allowed: tuple, what: str):
    if arr.ndim not in allowed:
        raise ValueError(
            f"{fn}: {name} must be {what}, got a {arr.ndim}-D array of shape {arr.shape}"
        )


def contiguous(arr, dtype):
    """A C-contiguous array of ``dtype`` with ``arr``'s values; a copy only when needed."""
    if arr.dtype == dtype and arr.flags.c_contiguous:
        return arr
    return np.ascontiguousarray(arr, dtype=dtype)


def grad_output(value, shape: tuple, fn: str):
    """``grad_output`` as an array of the forward output's ``shape``, or a ValueError saying so."""
    arr = as_array(value, "grad_output", fn)
    if arr.shape != tuple(shape):
        raise ValueError(f"{fn}: grad_output must have the forward output's shape {tuple(shape)}, got {arr.shape}")
    return arr


def output_mask(mask, fn: str):
    """``output_mask`` as three bools (grad_input, grad_weight, grad_bias), or a ValueError saying so."""
    if not isinstance(mask, (tuple, list)) or len(mask) != 3:
        raise ValueError(f"{fn}: output_mask must be three bools (input, weight, bias), got {mask!r}")
    return tuple(bool(m) for m in mask)


def check_out(out, shape: tuple, dtype, fn: str, inputs=()):
    """Check a user's ``out`` array: right shape and dtype, C-contiguous, writeable, no overlap."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{fn}: out must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"{fn}: out must have shape {tuple(shape)}, got {out.shape}")
    if out.dtype != dtype:
        raise TypeError(f"{fn}: out must have dtype {dtype}, got {out.dtype}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{fn}: out must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError(f"{fn}: out must be writeable")
    for name, arr in inputs:
        if arr is not None and np.may_share_memory(out, arr):
            raise ValueError(f"{fn}: out must not overlap the input {name}")


def pool_indices(indices, shape: tuple, plane_shape: tuple, fn: str):
    """Max pooling's ``indices`` checked: integers of grad_output's ``shape``, each a flat position in an
    input plane of ``plane_shape`` (``0 <= i < prod(plane_shape)``); returned as an array."""
    indices = as_array(indices, "indices", fn)
    if indices.dtype.kind not in "iu":
        raise TypeError(f"{fn}: indices must be integers (from return_indices=True), got dtype {indices.dtype}")
    if indices.shape != tuple(shape):
        raise ValueError(f"{fn}: indices must have grad_output's shape {tuple(shape)}, got {indices.shape}")
    plane = int(np.prod(plane_shape))
    if indices.size and (indices.min() < 0 or indices.max() >= plane):
        raise ValueError(
            f"{fn}: indices must lie in [0, {plane}) (flat positions in an input plane of shape "
            f"{tuple(plane_shape)}), got values from {indices.min()} to {indices.max()}"
        )
    return indices
