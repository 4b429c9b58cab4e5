"""The workspace cap: the Numba strategies allocate no scratch buffer larger than this.

im2col's column matrix is ``C_in*kH*kW x oH*oW`` per image: for 16 images of
64x224x224 and a 9x9 kernel that would be ~15 GiB. Strategies that need such
a buffer process the batch in chunks of images (and, if one image's columns
alone exceed the cap, in chunks of output rows) so that the buffer stays under
:func:`get_workspace_limit` bytes. The default is 1 GiB; the environment
variable ``FASTCONV_WORKSPACE_LIMIT`` (bytes, or with a K/M/G suffix) or
:func:`set_workspace_limit` changes it. The ``vectorized`` strategy (a NumPy
reference, never chosen by ``auto``) chunks its im2col view the same way but may
allocate temporaries the size of the output or the padded input.
"""

from __future__ import annotations

import os
import threading

import numpy as np

__all__ = ["get_workspace_limit", "set_workspace_limit", "chunk_size", "scratch"]

_DEFAULT = 1 << 30
_SUFFIX = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _parse(text: str) -> int:
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = _SUFFIX.get(t[-1:], 1)
    if t[-1:] in _SUFFIX:
        t = t[:-1]
    try:
        value = int(float(t) * scale)
    except ValueError:
        raise ValueError(f"FASTCONV_WORKSPACE_LIMIT must be a byte count like 512M or 2G, got {text!r}") from None
    if value < 1:
        raise ValueError(f"FASTCONV_WORKSPACE_LIMIT must be positive, got {text!r}")
    return value


_limit = _parse(os.environ["FASTCONV_WORKSPACE_LIMIT"]) if os.environ.get("FASTCONV_WORKSPACE_LIMIT") else _DEFAULT


def get_workspace_limit() -> int:
    """The largest scratch buffer, in bytes, a strategy may allocate.

    Returns
    -------
    int
        The cap (default 1 GiB, or ``FASTCONV_WORKSPACE_LIMIT``).
    """
    return _limit


def set_workspace_limit(nbytes: int) -> None:
    """Set the workspace cap: no scratch buffer of the Numba strategies grows past it.

    Parameters
    ----------
    nbytes : int
        The cap in bytes, at least 1.
    """
    global _limit
    if isinstance(nbytes, bool) or not isinstance(nbytes, int):
        raise TypeError(f"set_workspace_limit: nbytes must be an int, got {nbytes!r}")
    if nbytes < 1:
        raise ValueError(f"set_workspace_limit: nbytes must be >= 1, got {nbytes}")
    _limit = nbytes


def chunk_size(bytes_per_item: int, items: int, limit: int | None = None) -> int:
    """How many items (images, output rows) fit in the cap at once: between 1 and ``items``."""
    limit = get_workspace_limit() if limit is None else limit
    if bytes_per_item <= 0:
        return max(items, 1)
    return max(1, min(items, limit // bytes_per_item))


#: Scratch buffers up to this size are kept for the thread's next call (:func:`scratch`): a
#: fresh buffer of a few MB costs its page faults on every call (measured: 0.45 ms of a
#: 1.8 ms 64x56x56 convolution on the 2-core Zen 4 VM).
KEEP_BYTES = 64 << 20

_kept = threading.local()


def scratch(count: int, dtype, slot: str = "") -> "np.ndarray":
    """A 1-D scratch array of ``count`` elements of ``dtype``, reused by the calling thread's next call.

    The contents are undefined. A buffer is only kept if it is at most :data:`KEEP_BYTES`, one
    per (dtype, ``slot``) per thread: a call needing two buffers at once names a second slot.
    The caller must be done with a buffer before it asks for the same slot again.
    """
    dtype = np.dtype(dtype)
    nbytes = count * dtype.itemsize
    if nbytes > KEEP_BYTES:
        return np.empty(count, dtype=dtype)
    key = dtype.char + slot
    kept = getattr(_kept, key, None)
    if kept is None or kept.size < count:
        kept = np.empty(max(count, 1024), dtype=dtype)
        setattr(_kept, key, kept)
    return kept[:count]
