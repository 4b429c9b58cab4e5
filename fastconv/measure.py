"""``method="measure"``: time the candidates once per problem, run and remember the winner.

The first call of a problem times every candidate strategy (:func:`fastconv.dispatch.candidates`)
on the real arrays (after a warm-up call), runs the winner and remembers it in memory and in a
JSON file under ``FASTCONV_CACHE_DIR`` (default ``~/.cache/fastconv``), one file per (CPU model,
fastconv version, Numba version). Candidates whose workspace would pass the cap are skipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
import threading
import time
import warnings

import numpy as np

from . import strategies
from .precision import get_precision
from .dispatch import _threads, candidates, padded_bytes, workspace_bytes
from .workspace import get_workspace_limit

__all__ = ["cache_path", "clear_memory", "measure", "problem_key", "remembered"]


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


def problem_key(op: str, geom, dtype, threads: int, level: str | None = None) -> str:
    """The key a measurement is remembered under: op, full geometry, dtype, thread count and the
    precision setting (``level``, default the current one: it decides which strategies compete)."""
    fields = dataclasses.asdict(geom)
    return json.dumps([op, fields, str(np.dtype(dtype)), int(threads), level or get_precision()], sort_keys=True,
                      default=list)


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
    known = strategies.names()
    return {k: v for k, v in entries.items() if isinstance(v, dict) and v.get("method") in known}


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


def measure(op: str, geom, dtype, args) -> str:
    """Time each candidate on the real arguments (after a warm-up call), remember and return the winner."""
    threads = _threads(None)
    found = remembered(op, geom, dtype, threads)
    if found is not None:
        return found
    limit = get_workspace_limit()
    # A padded copy of the input is the input's size, not a workspace: not counted against the cap.
    allowance = padded_bytes(geom, np.dtype(dtype).itemsize)
    timings = {}
    for name in candidates(op, geom):
        if workspace_bytes(op, name, geom, np.dtype(dtype).itemsize) > limit + allowance:
            continue
        run = strategies.strategy(name).ops[op]
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


