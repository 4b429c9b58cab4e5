"""Properties of the Numba strategies beyond matching the oracle: determinism, threads, JIT options."""

import ast
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import fastconv
from conftest import JIT_METHODS, host_has, in_threads

PACKAGE = pathlib.Path(fastconv.__file__).parent


def _problems(rng):
    x = rng.standard_normal((3, 8, 21, 19)).astype(np.float32)
    w = rng.standard_normal((12, 4, 3, 3)).astype(np.float32)
    b = rng.standard_normal(12).astype(np.float32)
    return x, w, b


@pytest.mark.parametrize("method", JIT_METHODS)
def test_results_do_not_depend_on_thread_count(method, rng):
    x, w, b = _problems(rng)
    kw = dict(padding=((1, 0), (2, 1)), stride=(1, 2), groups=2)
    gy = rng.standard_normal(fastconv.conv2d(x, w, b, **kw).shape).astype(np.float32)
    xd = rng.standard_normal((2, 32, 28, 28)).astype(np.float32)
    wd = rng.standard_normal((32, 1, 3, 3)).astype(np.float32)
    results = {}
    for threads in (1, 2):
        with fastconv.num_threads(threads):
            results[threads] = (
                fastconv.conv2d(x, w, b, **kw, method=method),
                *fastconv.conv2d_backward(gy, x, w, **kw, method=method),
                fastconv.conv2d(xd, wd, padding=1, groups=32, method=method),
                *fastconv.conv2d_backward(np.ones((2, 32, 28, 28), np.float32), xd, wd, padding=1, groups=32,
                                          method=method),
                *fastconv.max_pool2d(x, 3, 2, 1, return_indices=True, method=method),
                fastconv.avg_pool2d(x, 3, 2, 1, method=method),
            )
    for one, two in zip(results[1], results[2]):
        np.testing.assert_array_equal(one, two)  # bitwise


@pytest.mark.parametrize("method", JIT_METHODS)
def test_concurrent_calls_from_eight_threads(method, rng):
    x, w, b = _problems(rng)
    expected_conv = fastconv.conv2d(x, w, b, padding=1, groups=2, method=method)
    expected_pool = fastconv.max_pool2d(x, 2, method=method)

    def work():
        np.testing.assert_array_equal(fastconv.conv2d(x, w, b, padding=1, groups=2, method=method), expected_conv)
        np.testing.assert_array_equal(fastconv.max_pool2d(x, 2, method=method), expected_pool)

    in_threads(work)


def test_no_kernel_sets_its_own_jit_options():
    """JIT options live in fastconv/_jit.py only (fastmath must stay NaN-safe everywhere)."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "_jit.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", getattr(node.func, "id", ""))
                keywords = {k.arg for k in node.keywords}
                if name == "kernel":  # fastconv._jit.kernel(parallel=...) is the one sanctioned switch
                    keywords -= {"parallel"}
                if name in ("njit", "jit", "vectorize", "guvectorize") or keywords & {"fastmath", "parallel", "cache"}:
                    offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, offenders


def test_fastmath_flags_keep_nan_and_inf():
    from fastconv import _jit

    assert not _jit.FASTMATH & {"nnan", "ninf", "fast"}


CACHE_PROBE = """
import numpy as np, numba, fastconv
from fastconv.strategies import direct, img2col
x = np.ones((1, 3, 16, 16), np.float32); w = np.ones((4, 3, 3, 3), np.float32)
fastconv.conv2d(x, w, padding=1, method="direct"); fastconv.conv2d(x, w, padding=1, method="img2col")
fastconv.max_pool2d(x, 2, method="direct")
hits = misses = 0
import sys
for mod in [m for name, m in sys.modules.items() if name.startswith("fastconv.strategies")]:
    for obj in vars(mod).values():
        if isinstance(obj, numba.core.registry.CPUDispatcher) and obj.signatures:
            hits += sum(obj.stats.cache_hits.values()); misses += sum(obj.stats.cache_misses.values())
print(hits, misses)
"""


def test_second_process_loads_kernels_from_cache(tmp_path):
    """With cache=True a fresh process finds every kernel it runs in the cache and compiles none."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    env.pop("NUMBA_DISABLE_JIT", None)
    runs = [subprocess.run([sys.executable, "-c", CACHE_PROBE], env=env, capture_output=True, text=True,
                           check=True).stdout.split() for _ in range(2)]
    (cold_hits, cold_misses), (warm_hits, warm_misses) = [map(int, r) for r in runs]
    assert cold_misses > 0  # compiled (kernels called from kernels are compiled into their callers)
    assert warm_misses == 0 and warm_hits > 0


WARMUP_PROBE = """
import importlib, json, pkgutil
import numba, fastconv
seconds = fastconv.warmup()
kernels = {}
for info in pkgutil.walk_packages(fastconv.__path__, "fastconv."):
    if info.name == "fastconv.__main__":
        continue
    for obj in vars(importlib.import_module(info.name)).values():
        if isinstance(obj, numba.core.registry.CPUDispatcher):
            kernels[obj] = obj.py_func.__module__ + "." + obj.__name__
report = {
    name: {
        "float32": any(t in str(arg) for signature in k.signatures for arg in signature
                       for t in ("float32", "complex64")),  # complex64: float32's spectra (the fft strategy)
        "calls": sorted(kernels[c] for c in (k.py_func.__globals__.get(n) for n in k.py_func.__code__.co_names)
                        if isinstance(c, numba.core.registry.CPUDispatcher) and c in kernels),
    }
    for k, name in kernels.items()
}
print(json.dumps({"seconds": seconds, "kernels": report}))
"""


def test_warmup_compiles_every_kernel_and_says_how_long():
    """After ``warmup()`` alone, in a fresh process, every Numba kernel of the package is compiled for float32.

    A kernel counts as compiled if it has a float32 signature, or if a compiled kernel calls it:
    Numba compiles a callee into its caller, and a caller loaded from the disk cache never asks
    the callee's dispatcher (int-only helpers such as the pooling tables have no float32
    signature of their own either way).
    """
    env = dict(os.environ)
    env.pop("NUMBA_DISABLE_JIT", None)
    out = subprocess.run([sys.executable, "-c", WARMUP_PROBE], env=env, capture_output=True, text=True,
                         check=True).stdout
    found = json.loads(out.splitlines()[-1])
    kernels = found["kernels"]
    assert found["seconds"] > 0
    assert "fastconv.strategies.direct._conv_rows" in kernels and len(kernels) > 20  # the walk found the kernels
    compiled = {name for name, k in kernels.items() if k["float32"]}
    todo = list(compiled)
    while todo:
        for callee in kernels[todo.pop()]["calls"]:
            if callee not in compiled:
                compiled.add(callee)
                todo.append(callee)
    # the register-tiled kernels exist once per instruction set and dtype: only this CPU's float32
    # ones run after warmup() (float32 by default)
    isa = fastconv._simd.ISA
    other_isa = {name for name in kernels if name.startswith("fastconv.strategies._simd_tiles.")
                 and not name.endswith("_f32_" + isa)}
    # likewise the Winograd kernels (a transform and a fused kernel per instruction set and dtype)
    float32_here = tuple(f"_winograd_f32_{v}_{isa}" for v in ("m4_k3", "m2_k3", "m4_k2", "m6_k1x3"))
    other_isa |= {name for name in kernels if name.startswith("fastconv.strategies._winograd_kernels.")
                  and not name.split(".")[-1].startswith(float32_here)}
    # and the FFT's rows kernels (one per vector width); with numpy.fft's double-precision transforms (no SciPy,
    # no ducc0) float32 problems run the FFT's kernels on complex128 spectra and never the rows form
    other_isa |= {f"fastconv.strategies.fft._row_{part}_w{width}" for part in ("products", "spectra")
                  for width in (16, 8, 4) if width != fastconv._simd.LANES["float32"]}
    from fastconv.strategies import fft

    # ... and the body of the rows kernel it inlines: 4 rows per register tile with 16 lanes, else 2 (fft.TILE_ROWS)
    rows = fft.TILE_ROWS[fastconv._simd.LANES["float32"]]
    other_isa.add("fastconv.strategies.fft." + ("_row_products" if rows == 4 else "_row_products_r4"))
    if not fft.transforms().single:
        other_isa |= {name for name in kernels if name.startswith("fastconv.strategies.fft.")}
    missing = sorted(set(kernels) - compiled - other_isa)
    assert not missing, f"warmup() left these kernels uncompiled: {missing}"


SHARED_WARMUP_PROBE = """
import sys, time, numba, fastconv
warmup = sys.modules["fastconv.warmup"]
warmup.SHARE_AFTER = 0  # share out from the first job on
jobs = warmup._jobs  # the same jobs, slowed down here (not in the helper) so that the helper surely gets some
warmup._jobs = lambda *args: [lambda job=job: (time.sleep(0.5), job()) for job in jobs(*args)]
if sys.argv[1] != "-":
    sys.executable = sys.argv[1]  # what starts the helpers
fastconv.warmup(methods=["img2col"], processes=2)
hits = misses = 0
for mod in [m for name, m in sys.modules.items() if name.startswith("fastconv.")]:
    for obj in vars(mod).values():
        if isinstance(obj, numba.core.registry.CPUDispatcher):
            hits += sum(obj.stats.cache_hits.values()); misses += sum(obj.stats.cache_misses.values())
print(hits, misses)
"""


@pytest.mark.parametrize("helper", ["python", "/bin/true", "/nonexistent/python"])
def test_warmup_shares_the_compiling_with_a_helper_process(tmp_path, helper):
    """With a fresh disk cache, warmup(processes=2) hands jobs to a helper process (``python -c``), which
    compiles them into the cache; this process then loads them (cache hits: nothing else filled this cache).
    A helper that exits at once or cannot start only costs time: every job is compiled here."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    env.pop("NUMBA_DISABLE_JIT", None)
    done = subprocess.run([sys.executable, "-c", SHARED_WARMUP_PROBE, sys.executable if helper == "python" else helper],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    hits, misses = map(int, done.stdout.split()[-2:])
    assert misses > 0  # compiled here too
    assert (hits > 0) == (helper == "python")


@pytest.mark.parametrize("kw, error, match", [
    (dict(dtypes="float32"), TypeError, "warmup: dtypes and methods must be sequences"),
    (dict(methods="direct"), TypeError, "warmup: dtypes and methods must be sequences"),
    (dict(dtypes=["nope"]), TypeError, "warmup: dtypes must name"),
    (dict(dtypes=["int8"]), ValueError, "warmup: dtypes must be float32"),
    (dict(methods=["nope"]), ValueError, "unknown strategy 'nope'"),
])
def test_warmup_rejects_bad_dtypes_and_methods(kw, error, match):
    with pytest.raises(error, match=match):
        fastconv.warmup(processes=1, **kw)


@pytest.mark.parametrize("processes", [0, -1, 1.5, "2"])
def test_warmup_rejects_a_bad_process_count(processes):
    with pytest.raises(ValueError, match="warmup: processes"):
        fastconv.warmup(methods=["vectorized"], processes=processes)


def _max_vector_fmas_per_block(asm):
    """The largest number of packed single-precision FMAs on ymm or zmm registers in one basic block.

    LLVM uses zmm where the CPU has AVX-512 (the Xeon, AMD Zen 4) and ymm with AVX2 only (Zen 3).
    """
    best = count = 0
    for line in asm.splitlines():
        if line.startswith(".LBB") or line.rstrip().endswith(":"):
            best, count = max(best, count), 0
        elif "vfmadd" in line and "ps" in line.split()[0] and ("%ymm" in line or "%zmm" in line):
            count += 1
    return max(best, count)


@pytest.mark.skipif(not host_has("avx2", "fma"), reason="needs a CPU with AVX2 and FMA")
@pytest.mark.skipif(os.environ.get("NUMBA_BOUNDSCHECK") == "1" or os.environ.get("NUMBA_DISABLE_JIT") == "1",
                    reason="checks the production build of the kernels")
def test_hot_loops_are_vector_fma():
    """What LLVM made of the direct strategy's hot loops: the 8-channel x 4-tap block must be one
    basic block of 32 ``vfmadd...ps`` on vector registers (ymm, or zmm with AVX-512), the in-place
    row kernel's 4-tap pass 4.

    Inspection needs a fresh compile (Numba does not keep the assembly of cached code), so the
    kernels' Python functions are compiled again here with the library's options, uncached.
    """
    import numba

    from fastconv import _jit
    from fastconv.strategies import direct

    rng = np.random.default_rng(0)
    fastconv.conv2d(rng.standard_normal((1, 8, 9, 9)).astype(np.float32),
                    rng.standard_normal((8, 8, 3, 3)).astype(np.float32), padding=1, method="direct")
    one = np.float32(1)
    direct._row_taps(np.zeros(16, np.float32), np.zeros(32, np.float32), 4, 0, 1, 2, 3, one, one, one, one)
    for kernel, parallel, least in ((direct._conv_tiles, True, 32), (direct._row_taps, False, 4)):
        fresh = numba.njit(kernel.py_func, parallel=parallel, fastmath=set(_jit.FASTMATH), nogil=True,
                           error_model="numpy")
        signature = next(s for s in kernel.signatures if str(s[0].dtype) == "float32")
        fresh.compile(signature)
        assert _max_vector_fmas_per_block(fresh.inspect_asm(signature)) >= least, kernel.__name__


def test_thread_count_argument_is_checked():
    with fastconv.num_threads(np.int64(1)):  # NumPy integers are ints
        assert fastconv.get_num_threads() == 1
    for bad, error in ((True, TypeError), (1.5, TypeError), ("2", TypeError), (0, ValueError), (10**6, ValueError)):
        with pytest.raises(error, match="set_num_threads: n must be"):
            fastconv.set_num_threads(bad)
