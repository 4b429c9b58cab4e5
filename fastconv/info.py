"""``fastconv info`` and :func:`show_config`: what fastconv runs on, in one place.

What a bug report or a benchmark comparison needs and no single library prints: versions
(optional packages found through their installed metadata, never imported, so this stays
fast), the CPU and the vector width Numba compiles for, Numba's and BLAS's threads
(:func:`fastconv.threads.policy`), Numba's cache directory and whether fastconv's kernels
are cached there, the workspace cap, the strategies, and the measure-mode cache file.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform
import sys
import textwrap

__all__ = ["collect", "format_text", "show_config", "vector_isa"]

#: Packages whose versions are reported: fastconv's dependencies, then optional ones
#: (None when not installed): comparisons (torch, scipy), dask, the report extras.
REQUIRED = ("numpy", "numba", "llvmlite", "threadpoolctl")
OPTIONAL = ("torch", "scipy", "ducc0", "dask", "tqdm", "matplotlib")


def _version(distribution: str) -> str | None:
    """The installed version of ``distribution`` from its metadata (no import), or None."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    """fastconv's, Python's and each package's version (None: not installed)."""
    from . import __version__

    found = {"fastconv": __version__, "python": platform.python_version()}
    found.update({name: _version(name) for name in REQUIRED + OPTIONAL})
    return found


def _numba_target() -> tuple[str, set]:
    """The CPU name and the enabled features Numba compiles for: the host's, or what the user set.

    Mirrors ``numba.core.codegen.CPUCodegen``: ``NUMBA_CPU_NAME`` and ``NUMBA_CPU_FEATURES``
    override the name and the features separately.
    """
    import llvmlite.binding as llvm
    import numba

    name = numba.config.CPU_NAME or llvm.get_host_cpu_name()
    features = numba.config.CPU_FEATURES  # "" for NUMBA_CPU_NAME=generic: the architecture's baseline
    if features is None:
        features = llvm.get_host_cpu_features().flatten()
    enabled = {f[1:] for f in features.split(",") if f.startswith("+")}
    return name, enabled | _BASELINE.get(platform.machine().lower(), set())


#: What every CPU of an architecture has, so LLVM uses it with no feature named.
_BASELINE = {"x86_64": {"sse2"}, "amd64": {"sse2"}, "aarch64": {"neon"}, "arm64": {"neon"}}


def vector_isa(features) -> tuple[str, int | None]:
    """The widest float vector instructions among ``features`` and their float32 lanes.

    Parameters
    ----------
    features : set of str
        LLVM feature names that are enabled (``avx512f``, ``avx2``, ``fma``, ``neon``, ...).

    Returns
    -------
    tuple of (str, int or None)
        ``('avx512', 16)``, ``('avx2+fma', 8)``, ``('avx', 8)``, ``('sse4.2', 4)``, ``('sse2', 4)``,
        ``('neon', 4)``; ``('sve', None)`` (the width is the hardware's), or ``('scalar', 1)``.

    Examples
    --------
    >>> vector_isa({"avx", "avx2", "fma"})
    ('avx2+fma', 8)
    """
    features = set(features)
    if "avx512f" in features:
        return "avx512", 16
    if {"avx2", "fma"} <= features:
        return "avx2+fma", 8
    for isa, lanes in (("avx2", 8), ("avx", 8), ("sse4.2", 4), ("sse4.1", 4), ("sse2", 4), ("neon", 4)):
        if isa in features:
            return isa, lanes
    if "sve" in features:
        return "sve", None
    return "scalar", 1


def machine() -> dict:
    """The CPU: model, cores, and the vector width Numba's kernels are compiled for."""
    from . import _simd
    from ._machine import cpu_model

    name, features = _numba_target()
    isa, lanes = vector_isa(features)
    return {"model": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
            "numba_target": name, "vector_isa": isa, "float32_lanes": lanes,
            "simd_kernels": _simd.ISA if _simd.AVAILABLE else "off", "simd_reason": _simd.REASON}


def _kernels() -> list:
    """Every Numba kernel of fastconv, after importing every registered strategy's module."""
    from numba.extending import is_jitted

    from . import strategies

    for name in strategies.names():
        strategies.strategy(name)  # imports its module, and with it the kernels
    found = {}
    for module_name, module in list(sys.modules.items()):
        if module is None or not (module_name == "fastconv" or module_name.startswith("fastconv.")):
            continue
        for obj in list(vars(module).values()):
            if is_jitted(obj) and getattr(obj.py_func, "__module__", None) == module_name:
                found[f"{module_name}.{obj.py_func.__qualname__}"] = obj
    return [found[k] for k in sorted(found)]


def _is_cached(kernel) -> bool | None:
    """Whether Numba's cache holds a compiled version of ``kernel`` for its current source and Numba.

    Asks the kernel's own cache index (what Numba reads at the first call: an index written
    for another version of the source, or by another Numba, counts as empty); None if this
    Numba's cache objects do not look as expected.
    """
    try:
        return bool(kernel._cache._cache_file._load_index())
    except Exception:  # another Numba's internals, or an unreadable index: say so, never fail the report
        return None


def _cache_dirs(kernels) -> list:
    """The directories the kernels' caches live in, as Numba located them."""
    dirs = []
    for kernel in kernels:
        path = getattr(getattr(kernel, "_cache", None), "_cache_path", None)
        if path and path not in dirs:
            dirs.append(path)
    return dirs


def jit_cache() -> dict:
    """Numba's disk cache: on or off, where, and how many of fastconv's kernels it already holds."""
    import numba

    from . import _jit

    kernels = _kernels()
    user_dir = numba.config.CACHE_DIR or None
    if numba.config.DISABLE_JIT:
        off = "NUMBA_DISABLE_JIT=1"
    elif not _jit.CACHE:
        off = "FASTCONV_JIT_CACHE=0"
    else:
        off = None
    if off:
        return {"enabled": False, "off_by": off, "numba_cache_dir": user_dir, "directories": [],
                "kernels": len(kernels), "cached": 0, "not_cached": [], "unknown": []}
    state = {f"{k.py_func.__module__}.{k.py_func.__qualname__}": _is_cached(k) for k in kernels}
    return {
        "enabled": True,
        "off_by": None,
        "numba_cache_dir": user_dir,
        "directories": _cache_dirs(kernels),
        "kernels": len(kernels),
        "cached": sum(1 for v in state.values() if v),
        "not_cached": [k for k, v in state.items() if v is False],
        "unknown": [k for k, v in state.items() if v is None],
    }


def collect() -> dict:
    """Everything ``fastconv info`` reports, as a JSON-ready dict (see :func:`show_config`)."""
    import numba

    from . import measure, strategies
    from .threads import policy
    from .workspace import get_workspace_limit

    pools = dataclasses.asdict(policy())
    threads = {
        "numba_threads": pools["numba_threads"],
        "numba_max_threads": numba.config.NUMBA_NUM_THREADS,
        "threading_layer": pools["threading_layer"],
        "threading_layer_requested": numba.config.THREADING_LAYER,
        "gomp_spincount": pools["gomp_spincount"],
        "blas": [dict(lib) for lib in pools["blas"]],
        "notes": list(pools["notes"]),
    }
    measure_path = measure.cache_path()
    return {
        "versions": versions(),
        "cpu": machine(),
        "threads": threads,
        "jit_cache": jit_cache(),
        "workspace_limit": get_workspace_limit(),
        "strategies": list(strategies.names()),
        "measure_cache": {"path": measure_path, "exists": os.path.exists(measure_path)},
    }


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.4g} {unit} ({n} bytes)"
    return f"{n} bytes"


def _cache_lines(cache: dict) -> list:
    if not cache["enabled"]:
        if cache["off_by"] == "NUMBA_DISABLE_JIT=1":
            return ["  disk cache      off (NUMBA_DISABLE_JIT=1): the kernels run as Python, uncompiled"]
        return [f"  disk cache      off ({cache['off_by']}): every process compiles its kernels"]
    where = ", ".join(cache["directories"]) or "none (no kernel found)"
    origin = "NUMBA_CACHE_DIR" if cache["numba_cache_dir"] else "beside the sources; NUMBA_CACHE_DIR moves it"
    lines = [f"  directory       {where} ({origin})"]
    status = f"{cache['cached']} of {cache['kernels']} kernels"
    if cache["kernels"] and cache["cached"] == cache["kernels"]:
        status += " (first calls load them, no compiling)"
    elif cache["not_cached"]:
        status += " (the others compile at their first call; fastconv.warmup() compiles them ahead)"
    lines.append(f"  cached          {status}")
    for label, names in (("not cached", cache["not_cached"]), ("unknown", cache["unknown"])):
        by_module = {}
        for name in names:
            module, kernel = name.rsplit(".", 1)
            by_module.setdefault(module, []).append(kernel)
        for module, kernels in by_module.items():
            lines.append(textwrap.fill(f"{module}: {', '.join(kernels)}", 100, initial_indent=f"  {label:<16}",
                                       subsequent_indent=" " * 20, break_on_hyphens=False, break_long_words=False))
            label = ""
    if cache["unknown"]:
        lines.append("                  (unknown: this Numba's cache index could not be read)")
    return lines


def format_text(info: dict) -> str:
    """The terminal form of :func:`collect`'s dict: every value, one per line, in sections."""
    v, cpu, th = info["versions"], info["cpu"], info["threads"]
    lines = [f"fastconv {v['fastconv']}", "versions"]
    for name, version in v.items():
        if name != "fastconv":
            lines.append(f"  {name:<15} {version or 'not installed'}")
    n = cpu["float32_lanes"]
    lanes = "width set by the hardware" if n is None else f"{n} float32 lane{'s' if n != 1 else ''}"
    lines += [
        "cpu",
        f"  model           {cpu['model']}",
        f"  cores           {cpu['cores']}",
        f"  platform        {cpu['platform']}",
        f"  numba target    {cpu['numba_target']}: {cpu['vector_isa']} ({lanes})",
        f"  SIMD kernels    {cpu['simd_kernels']}: {cpu['simd_reason']}",
        "threads",
        f"  numba           {th['numba_threads']} of {th['numba_max_threads']} thread(s)",
        f"  threading layer {th['threading_layer']}; requested: {th['threading_layer_requested']}",
        f"  GOMP_SPINCOUNT  {th['gomp_spincount']}",
    ]
    for lib in th["blas"]:
        lines.append(f"  blas            {lib['internal_api']} {lib.get('version') or ''} ({lib['threading_layer']}), "
                     f"{lib['num_threads']} thread(s); idle threads {lib['idle']}")
        lines.append(f"                  {lib['filepath']}")
    if not th["blas"]:
        lines.append("  blas            none found (threadpoolctl sees no BLAS library)")
    lines += [f"  note            {note}" for note in th["notes"]]
    lines += ["jit cache"] + _cache_lines(info["jit_cache"])
    measured = info["measure_cache"]
    lines += [
        f"workspace limit   {_bytes(info['workspace_limit'])}",
        f"strategies        {', '.join(info['strategies'])}",
        f"measure cache     {measured['path']} ({'exists' if measured['exists'] else 'not written yet'})",
    ]
    return "\n".join(lines)


def show_config(quiet: bool = False) -> dict:
    """Print what fastconv runs on (versions, CPU, threads, caches) and return it as a dict.

    The same report as ``fastconv info`` (the dict is what ``fastconv info --json`` prints):
    paste it into a bug report or beside benchmark numbers.

    Parameters
    ----------
    quiet : bool
        Return the dict without printing.

    Returns
    -------
    dict
        ``versions`` (None: not installed), ``cpu`` (model, cores, ``vector_isa`` and
        ``float32_lanes`` of the code Numba generates), ``threads`` (Numba's count and
        threading layer, each BLAS library as :func:`fastconv.threads.policy` sees it),
        ``jit_cache`` (directories, kernels, how many are cached), ``workspace_limit`` (bytes),
        ``strategies`` (registered names) and ``measure_cache`` (path, exists).

    Examples
    --------
    >>> import fastconv
    >>> sorted(fastconv.show_config(quiet=True))  # doctest: +NORMALIZE_WHITESPACE
    ['cpu', 'jit_cache', 'measure_cache', 'strategies', 'threads', 'versions', 'workspace_limit']
    """
    info = collect()
    if not quiet:
        print(format_text(info))
    return info
