"""The explicit-SIMD layer (fastconv._simd) and the planar register-tiled convolution built on it.

* each intrinsic against NumPy, float32 and float64, at the CPU's native width and at width 4;
* masked loads/stores touch nothing outside their lanes (guard pages) and, under
  ``NUMBA_BOUNDSCHECK=1``, out-of-range vector accesses raise ``IndexError``;
* ``fastconv/strategies/_simd_tiles.py`` is what ``tools/gen_simd_tiles.py`` writes;
* the planar kernel against an oracle on random supported geometries, its routing from
  ``fastconv.conv2d(method="direct")``, thread-count independence and concurrent calls;
* what LLVM made of the micro-kernel: one basic block of rows x vectors FMAs on zmm/ymm with
  no stack traffic (AVX-512 build, and a real Haswell AVX2 build with 16 vector registers).
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
from fractions import Fraction

import numba
import numpy as np
import pytest
from conftest import ORACLE, assert_close, host_has, torch_pad_list
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from numba import literally

import fastconv
from fastconv import _simd
from fastconv._jit import kernel
from fastconv._simd import (
    vbroadcast,
    vfma,
    vlane,
    vload,
    vload_masked,
    vsplat,
    vstore,
    vstore_lanes,
    vstore_masked,
    vsum,
    vzero,
)
from fastconv.geometry import conv_problem
from fastconv.strategies import _simd_direct

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the loop oracle is the reference then
    torch = None

ROOT = pathlib.Path(__file__).resolve().parent.parent
BOUNDSCHECK = bool(numba.config.BOUNDSCHECK)
DTYPES = (np.float32, np.float64)

needs_simd = pytest.mark.skipif(not _simd.AVAILABLE, reason=f"no explicit-SIMD layer here: {_simd.REASON}")
production_build = pytest.mark.skipif(BOUNDSCHECK or os.environ.get("NUMBA_DISABLE_JIT") == "1",
                                      reason="inspects the production (unchecked, parallel) build")


def _width(dtype, which):
    """The vector width a test runs at: this CPU's lanes for ``dtype``, or an explicit int."""
    return _simd.LANES[np.dtype(dtype).name] if which == "native" else which


def _env(**changes):
    """os.environ for a subprocess: ``changes`` applied (None removes a variable), JIT never disabled."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_DISABLE_JIT"}
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _run(script, env, *args, timeout=120):
    """Run ``script`` with ``python -c`` (extra ``args`` in sys.argv[1:]) in a fresh process."""
    return subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=str(ROOT), check=False)


# --------------------------------------------------------------------------- intrinsics, one kernel each
#
# ``width`` is passed as an argument and made a literal with numba.literally: it then is part of
# the compiled signature (and of the cache key), so a cached build of one width can never be
# handed to a call of another.

@kernel(parallel=False)
def _k_vzero(a, width, out):
    literally(width)
    vstore(out, 0, vzero(a, width))


@kernel(parallel=False)
def _k_vload(a, i, width, out):
    literally(width)
    vstore(out, 0, vload(a, i, width))


@kernel(parallel=False)
def _k_vstore(a, i, src, width):
    literally(width)
    vstore(a, i, vload(src, 0, width))


@kernel(parallel=False)
def _k_vbroadcast(a, i, width, out):
    literally(width)
    vstore(out, 0, vbroadcast(a, i, width))


@kernel(parallel=False)
def _k_vsplat(x, width, out):
    literally(width)
    vstore(out, 0, vsplat(x, width))


@kernel(parallel=False)
def _k_vfma(a, b, c, width, out):
    literally(width)
    vstore(out, 0, vfma(vload(a, 0, width), vload(b, 0, width), vload(c, 0, width)))


@kernel(parallel=False)
def _k_vload_masked(a, i, n, width, out):
    literally(width)
    vstore(out, 0, vload_masked(a, i, n, width))


@kernel(parallel=False)
def _k_vstore_masked(a, i, src, n, width):
    literally(width)
    vstore_masked(a, i, vload(src, 0, width), n)


@kernel(parallel=False)
def _k_vstore_lanes(a, i, src, lo, hi, width):
    literally(width)
    vstore_lanes(a, i, vload(src, 0, width), lo, hi)


@kernel(parallel=False)
def _k_vlane(src, width, out):
    literally(width)
    v = vload(src, 0, width)
    for k in range(width):
        out[k] = vlane(v, k)


@kernel(parallel=False)
def _k_vsum(src, width):
    literally(width)
    return vsum(vload(src, 0, width))


intrinsic_cases = pytest.mark.parametrize(
    "dtype, which", [(d, w) for d in DTYPES for w in ("native", 4)],
    ids=[f"{np.dtype(d).name}-{w}" for d in DTYPES for w in ("native", 4)])


@needs_simd
@intrinsic_cases
def test_vzero(dtype, which):
    """vzero gives width zeros of the array's dtype."""
    w = _width(dtype, which)
    out = np.full(w, np.nan, dtype)
    _k_vzero(np.ones(3, dtype), w, out)
    np.testing.assert_array_equal(out, np.zeros(w, dtype))


@needs_simd
@intrinsic_cases
def test_vload(dtype, which):
    """vload reads a[i : i + width], also at an unaligned start and flush with the array's end."""
    w = _width(dtype, which)
    a = np.random.default_rng(1).standard_normal(3 * w + 3).astype(dtype)
    for i in (0, 3, a.size - w):
        out = np.full(w, np.nan, dtype)
        _k_vload(a, i, w, out)
        np.testing.assert_array_equal(out, a[i:i + w])


@needs_simd
@intrinsic_cases
def test_vstore(dtype, which):
    """vstore writes a[i : i + width] and nothing else."""
    w = _width(dtype, which)
    src = np.random.default_rng(2).standard_normal(w).astype(dtype)
    for i in (0, 5, 2 * w + 3):
        a = np.full(3 * w + 3, -7, dtype)
        _k_vstore(a, i, src, w)
        expected = np.full_like(a, -7)
        expected[i:i + w] = src
        np.testing.assert_array_equal(a, expected)


@needs_simd
@intrinsic_cases
def test_vbroadcast(dtype, which):
    """vbroadcast puts a[i] in every lane."""
    w = _width(dtype, which)
    a = np.random.default_rng(3).standard_normal(11).astype(dtype)
    for i in (0, 6, 10):
        out = np.full(w, np.nan, dtype)
        _k_vbroadcast(a, i, w, out)
        np.testing.assert_array_equal(out, np.full(w, a[i], dtype))


@needs_simd
@intrinsic_cases
def test_vsplat(dtype, which):
    """vsplat puts the scalar in every lane."""
    w = _width(dtype, which)
    x = dtype(-1.2345678901234567)
    out = np.full(w, np.nan, dtype)
    _k_vsplat(x, w, out)
    np.testing.assert_array_equal(out, np.full(w, x, dtype))


@needs_simd
@intrinsic_cases
def test_vfma(dtype, which):
    """vfma is a*b + c lane by lane, rounded once (lane 0 is zero unfused and not zero fused)."""
    w = _width(dtype, which)
    rng = np.random.default_rng(4)
    a, b, c = (rng.standard_normal(w).astype(dtype) for _ in range(3))
    eps = 2.0 ** (-13 if dtype == np.float32 else -30)
    a[0], b[0], c[0] = 1 + eps, 1 - eps, -1  # a*b = 1 - eps**2 rounds to 1 in dtype
    assert dtype(a[0] * b[0]) + c[0] == 0
    out = np.full(w, np.nan, dtype)
    _k_vfma(a, b, c, w, out)
    exact = np.array([float(Fraction(float(p)) * Fraction(float(q)) + Fraction(float(r))) for p, q, r in zip(a, b, c)])
    np.testing.assert_array_equal(out, exact.astype(dtype))
    assert out[0] == -eps * eps


@needs_simd
@intrinsic_cases
def test_vload_masked(dtype, which):
    """vload_masked gives a[i + k] for lanes k < n and 0 above, also where i + width runs past the end."""
    w = _width(dtype, which)
    a = np.random.default_rng(5).standard_normal(w + 5).astype(dtype)
    m = a.size
    for i, n in ((2, w), (m - 3, 3), (m - 1, 1), (1, 1), (m, 0), (0, 0)):
        out = np.full(w, np.nan, dtype)
        _k_vload_masked(a, i, n, w, out)  # in range for n elements: must not raise under bounds checking
        expected = np.zeros(w, dtype)
        expected[:n] = a[i:i + n]
        np.testing.assert_array_equal(out, expected)


@needs_simd
@intrinsic_cases
def test_vstore_masked(dtype, which):
    """vstore_masked writes lanes k < n to a[i + k] and leaves every other element untouched."""
    w = _width(dtype, which)
    src = np.random.default_rng(6).standard_normal(w).astype(dtype)
    m = w + 5
    for i, n in ((0, w), (m - 3, 3), (m - 1, 1), (2, 0), (m, 0), (4, w - 1)):
        a = np.full(m, -7, dtype)
        _k_vstore_masked(a, i, src, n, w)
        expected = np.full(m, -7, dtype)
        expected[i:i + n] = src[:n]
        np.testing.assert_array_equal(a, expected)


@needs_simd
@intrinsic_cases
def test_vstore_lanes(dtype, which):
    """vstore_lanes writes lanes lo <= k < hi to a[i + k] only, also with i before the array's start; all lanes
    (a plain store) anywhere."""
    w = _width(dtype, which)
    src = np.random.default_rng(7).standard_normal(w).astype(dtype)
    m = w + 5
    for i, lo, hi in ((2, 1, w - 1), (-2, 2, w), (m - w + 2, 0, w - 2), (-(w - 1), w - 1, w), (3, 2, 2), (0, 0, w), (5, 0, w)):
        a = np.full(m, -7, dtype)
        _k_vstore_lanes(a, i, src, lo, hi, w)
        expected = np.full(m, -7, dtype)
        expected[i + lo:i + hi] = src[lo:hi]
        np.testing.assert_array_equal(a, expected)


@needs_simd
@intrinsic_cases
def test_vlane(dtype, which):
    """vlane(v, k) is lane k of v, for every k."""
    w = _width(dtype, which)
    src = np.random.default_rng(8).standard_normal(w).astype(dtype)
    out = np.full(w, np.nan, dtype)
    _k_vlane(src, w, out)
    np.testing.assert_array_equal(out, src)


def _sequential_sum(v):
    total = v[0]
    for x in v[1:]:
        total = v.dtype.type(total + x)
    return total


@needs_simd
@intrinsic_cases
def test_vsum(dtype, which):
    """vsum equals the sum of the lanes added one by one in lane order (on data where the order matters)."""
    w = _width(dtype, which)
    big = dtype(2.0 ** (25 if dtype == np.float32 else 54))  # big + 1 rounds back to big
    tricky = np.tile(np.array([big, 1, -big, 1], dtype), w // 4)
    assert _sequential_sum(tricky) != _sequential_sum(tricky[::-1])  # a reordered sum would differ
    assert _sequential_sum(tricky) != tricky.reshape(2, -1).sum(axis=0, dtype=dtype).sum(dtype=dtype)
    rng = np.random.default_rng(9)
    for v in [tricky] + [(rng.standard_normal(w) * 10.0 ** rng.integers(-6, 7, w)).astype(dtype) for _ in range(20)]:
        got = _k_vsum(v, w)
        assert got == _sequential_sum(v), (v, got, _sequential_sum(v))


# --------------------------------------------------------------------------- range of the masked accesses

GUARD_PROBE = """
import ctypes, mmap, sys
import numpy as np
from numba import literally
from fastconv import _simd
from fastconv._jit import kernel
from fastconv._simd import vload, vload_masked, vstore, vstore_lanes, vstore_masked

@kernel(parallel=False)
def load_masked(a, i, n, width, out):
    literally(width)
    vstore(out, 0, vload_masked(a, i, n, width))

@kernel(parallel=False)
def store_masked(a, i, src, n, width):
    literally(width)
    vstore_masked(a, i, vload(src, 0, width), n)

@kernel(parallel=False)
def store_lanes(a, i, src, lo, hi, width):
    literally(width)
    vstore_lanes(a, i, vload(src, 0, width), lo, hi)

@kernel(parallel=False)
def load(a, i, width, out):
    literally(width)
    vstore(out, 0, vload(a, i, width))

# three pages: no access, data, no access; arrays are placed flush against a guard page
PAGE = mmap.PAGESIZE
region = mmap.mmap(-1, 3 * PAGE)
base = ctypes.addressof(ctypes.c_char.from_buffer(region))
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
for page in (base, base + 2 * PAGE):
    assert libc.mprotect(page, PAGE, 0) == 0, ctypes.get_errno()

def at_end(dtype, m):
    return np.frombuffer(region, dtype, count=m, offset=2 * PAGE - m * np.dtype(dtype).itemsize)

def at_start(dtype, m):
    return np.frombuffer(region, dtype, count=m, offset=PAGE)

for dtype in (np.float32, np.float64):
    for w in (_simd.LANES[np.dtype(dtype).name], 4):
        m = w + 5
        src = np.arange(1, w + 1, dtype=dtype)
        out = np.full(w, np.nan, dtype)
        if sys.argv[1] == "control":  # an unmasked load running 3 elements short must fault
            a = at_end(dtype, m)
            a[:] = 1
            print("about to over-read", flush=True)
            load(a, m - w + 3, w, out)
            print("over-read did not fault", flush=True)
            sys.exit(0)
        a = at_end(dtype, m)
        a[:] = np.arange(m)
        load_masked(a, m - 3, 3, w, out)
        assert (out[:3] == a[m - 3:]).all() and (out[3:] == 0).all(), out
        load_masked(a, m, 0, w, out)
        assert (out == 0).all(), out
        a[:] = -7
        store_masked(a, m - 3, src, 3, w)
        assert (a[m - 3:] == src[:3]).all() and (a[:m - 3] == -7).all(), a
        a[:] = -7
        store_lanes(a, m - 2, src, 0, 2, w)
        assert (a[m - 2:] == src[:2]).all() and (a[:m - 2] == -7).all(), a
        b = at_start(dtype, m)
        b[:] = -7
        store_lanes(b, -3, src, 3, w, w)
        assert (b[:w - 3] == src[3:]).all() and (b[w - 3:] == -7).all(), b
print("ok")
"""


@needs_simd
def test_masked_accesses_touch_nothing_outside_their_lanes():
    """Masked loads/stores flush against an inaccessible page do not fault; an unmasked over-read does (control)."""
    env = _env(FASTCONV_JIT_CACHE="0", NUMBA_BOUNDSCHECK=None)
    done = _run(GUARD_PROBE, env, "masked")
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr
    control = _run(GUARD_PROBE, env, "control")
    assert "about to over-read" in control.stdout, control.stderr
    assert control.returncode != 0 and "did not fault" not in control.stdout, control.stdout + control.stderr


BOUNDS_PROBE = """
import json
import numba
import numpy as np
assert numba.config.BOUNDSCHECK
from fastconv._jit import kernel
from fastconv._simd import vload, vload_masked, vstore, vstore_lanes, vstore_masked

@kernel(parallel=False)
def load16(a, i, out):
    vstore(out, 0, vload(a, i, 16))

@kernel(parallel=False)
def store16(a, i, src):
    vstore(a, i, vload(src, 0, 16))

@kernel(parallel=False)
def load_masked16(a, i, n, out):
    vstore(out, 0, vload_masked(a, i, n, 16))

@kernel(parallel=False)
def store_masked16(a, i, src, n):
    vstore_masked(a, i, vload(src, 0, 16), n)

@kernel(parallel=False)
def store_lanes16(a, i, src, lo, hi):
    vstore_lanes(a, i, vload(src, 0, 16), lo, hi)

def outcome(fn, *args):
    try:
        fn(*args)
    except IndexError:
        return "IndexError"
    return "ok"

for dtype in (np.float32, np.float64):
    a = np.arange(20, dtype=dtype)
    src = np.arange(100, 116, dtype=dtype)
    out = np.zeros(16, dtype)
    found = {
        "load in range": outcome(load16, a, 4, out),
        "load values": bool((out == a[4:]).all()),
        "load past end": outcome(load16, a, 5, out),
        "load before start": outcome(load16, a, -1, out),
        "store in range": outcome(store16, a, 4, src),
        "store values": bool((a[4:] == src).all()),
        "store past end": outcome(store16, a, 5, src),
        "store before start": outcome(store16, a, -1, src),
        "masked load in range": outcome(load_masked16, a, 10, 10, out),
        "masked load past end": outcome(load_masked16, a, 10, 11, out),
        "masked store in range": outcome(store_masked16, a, 10, src, 10),
        "masked store past end": outcome(store_masked16, a, 10, src, 11),
        "lanes in range": outcome(store_lanes16, a, -2, src, 2, 16),
        "lanes before start": outcome(store_lanes16, a, -2, src, 1, 16),
        "lanes past end": outcome(store_lanes16, a, 10, src, 0, 11),
    }
    print(json.dumps(found))
"""


@needs_simd
def test_bounds_checked_vector_accesses_raise_index_error(tmp_path):
    """Under NUMBA_BOUNDSCHECK=1 every vector load/store whose range leaves the array raises IndexError; in range works."""
    env = _env(NUMBA_BOUNDSCHECK="1", NUMBA_CACHE_DIR=str(tmp_path), FASTCONV_JIT_CACHE="0")
    done = _run(BOUNDS_PROBE, env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2, done.stdout
    for line in lines:
        found = json.loads(line)
        expected = {key: ("IndexError" if any(s in key for s in ("past end", "before start")) else "ok")
                    for key in found if not key.endswith("values")}
        assert {k: found[k] for k in expected} == expected
        assert found["load values"] and found["store values"], found


# --------------------------------------------------------------------------- the generated kernels


def test_generated_tile_kernels_are_current():
    """fastconv/strategies/_simd_tiles.py is exactly what tools/gen_simd_tiles.py writes (rerun it after editing)."""
    spec = importlib.util.spec_from_file_location("gen_simd_tiles", ROOT / "tools" / "gen_simd_tiles.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    from fastconv.strategies import _simd_tiles

    assert pathlib.Path(tool.TARGET).resolve() == pathlib.Path(_simd_tiles.__file__).resolve()
    assert tool.source() == pathlib.Path(tool.TARGET).read_text(), "run: python tools/gen_simd_tiles.py"


# --------------------------------------------------------------------------- the planar kernel's results


def _reference(x, w, b, stride, padding, dilation, groups):
    """The convolution in float64 from the same (rounded) values: PyTorch if installed, else the loop oracle."""
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    b64 = None if b is None else b.astype(np.float64)
    if torch is not None:
        xt = F.pad(torch.from_numpy(x64), torch_pad_list(padding))
        return F.conv2d(xt, torch.from_numpy(w64), None if b64 is None else torch.from_numpy(b64),
                        stride=stride, dilation=dilation, groups=groups).numpy()
    return fastconv.conv2d(x64, w64, b64, stride, padding, dilation, groups, method=ORACLE)


def _problem(seed, dtype, batch, groups, cg, cog, kernel_hw, stride, padding, dilation, out_hw, bias, extra=(0, 0)):
    """Arrays and geometry of a conv2d whose output is about ``out_hw`` (input sized to give it)."""
    (kH, kW), (sH, sW), (dH, dW), ((pt, pb), (pl, pr)) = kernel_hw, stride, dilation, padding
    H = max(1, (out_hw[0] - 1) * sH + (kH - 1) * dH + 1 - pt - pb + extra[0])
    W = max(1, (out_hw[1] - 1) * sW + (kW - 1) * dW + 1 - pl - pr + extra[1])
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, groups * cg, H, W)).astype(dtype)
    w = rng.standard_normal((groups * cog, cg, kH, kW)).astype(dtype)
    b = rng.standard_normal(groups * cog).astype(dtype) if bias else None
    geom, out_shape = conv_problem("conv2d", 2, x.shape, w.shape, None if b is None else b.shape, stride, padding,
                                   dilation, groups, np.dtype(dtype).name)
    return x, w, b, geom, out_shape


def _check_planar(x, w, b, geom, out_shape, stride, padding, dilation, groups):
    out = np.full(out_shape, np.nan, x.dtype)
    _simd_direct.conv2d_planar(x, w, b, geom, out)
    assert not np.isnan(out).any(), f"{np.isnan(out).sum()} of {out.size} outputs never written"
    assert_close(out, _reference(x, w, b, stride, padding, dilation, groups), x.dtype, "direct")


@st.composite
def planar_problems(draw):
    dtype = draw(st.sampled_from(DTYPES))
    kernel_hw = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    cg = -(-_simd_direct.MIN_STEPS // (kernel_hw[0] * kernel_hw[1])) + draw(st.integers(0, 3))
    if draw(st.booleans()):  # may read the input in place (stride 1, no padding)
        stride, padding = (1, 1), ((0, 0), (0, 0))
    else:
        stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        padding = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(2))
    return dict(
        seed=draw(st.integers(0, 2**32 - 1)), dtype=dtype, batch=draw(st.integers(1, 3)),
        groups=draw(st.integers(1, 3)), cg=cg, cog=draw(st.integers(8, 40)), kernel_hw=kernel_hw,
        stride=stride, padding=padding, dilation=(draw(st.integers(1, 2)), draw(st.integers(1, 2))),
        out_hw=(draw(st.integers(1, 6)), draw(st.integers(1, 24))), bias=draw(st.booleans()),
        extra=(draw(st.integers(0, stride[0] - 1)), draw(st.integers(0, stride[1] - 1))),
    )


@needs_simd
@settings(max_examples=20 if BOUNDSCHECK or torch is None else 150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(case=planar_problems())
def test_planar_kernel_matches_reference(case):
    """conv2d_planar writes every output of random supported geometries and matches the float64 reference."""
    x, w, b, geom, out_shape = _problem(**case)
    assume(_simd_direct.planar_supports(geom))
    _check_planar(x, w, b, geom, out_shape, case["stride"], case["padding"], case["dilation"], case["groups"])


FIXED = {  # geometries worth running every time, whatever hypothesis draws
    "1x1-output": dict(out_hw=(1, 1), kernel_hw=(3, 3), cg=4, cog=9, groups=1, stride=(1, 1),
                       padding=((0, 0), (0, 0)), dilation=(1, 1)),
    "2x3-output-groups": dict(out_hw=(2, 3), kernel_hw=(2, 3), cg=6, cog=13, groups=3, stride=(2, 1),
                              padding=((1, 0), (0, 2)), dilation=(1, 2)),
    "in-place-dilated": dict(out_hw=(5, 19), kernel_hw=(3, 2), cg=6, cog=17, groups=2, stride=(1, 1),
                             padding=((0, 0), (0, 0)), dilation=(2, 1)),
    "strided-asymmetric": dict(out_hw=(4, 11), kernel_hw=(5, 4), cg=2, cog=40, groups=1, stride=(3, 2),
                               padding=((2, 0), (1, 2)), dilation=(1, 1)),
    "1x1-kernel": dict(out_hw=(3, 7), kernel_hw=(1, 1), cg=33, cog=8, groups=2, stride=(1, 3),
                       padding=((0, 1), (2, 0)), dilation=(1, 1)),
}


@needs_simd
@pytest.mark.parametrize("bias", (True, False), ids=("bias", "no-bias"))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", FIXED)
def test_planar_kernel_fixed_geometries(name, dtype, bias):
    """conv2d_planar on chosen edge cases (outputs smaller than a tile, partial channel tiles, in place) matches the reference."""
    case = FIXED[name]
    x, w, b, geom, out_shape = _problem(seed=11, dtype=dtype, batch=3, bias=bias, **case)
    assert _simd_direct.planar_supports(geom)
    _check_planar(x, w, b, geom, out_shape, case["stride"], case["padding"], case["dilation"], case["groups"])


@needs_simd
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_planar_kernel_in_image_chunks(dtype):
    """With a workspace cap of two packed images, batch 3 runs as chunks of 2 + 1 images and still matches."""
    from fastconv import workspace

    case = FIXED["strided-asymmetric"]
    x, w, b, geom, out_shape = _problem(seed=12, dtype=dtype, batch=3, bias=True, **case)
    per_image = _simd_direct.planar_workspace_bytes(geom, np.dtype(dtype).itemsize) // 3
    saved = workspace.get_workspace_limit()
    try:
        workspace.set_workspace_limit(2 * per_image + 1)
        assert _simd_direct.planar_supports(geom)
        assert _simd_direct._planar_plan(geom, workspace.get_workspace_limit()).layout.images == 2
        _check_planar(x, w, b, geom, out_shape, case["stride"], case["padding"], case["dilation"], case["groups"])
    finally:
        workspace.set_workspace_limit(saved)


def _planar_case(dtype=np.float32, batch=2):
    """A packed (strided, padded, grouped) planar geometry and the conv2d keyword arguments for it."""
    kw = dict(stride=(1, 2), padding=((1, 0), (2, 1)), dilation=(1, 1), groups=2)
    x, w, b, geom, out_shape = _problem(seed=5, dtype=dtype, batch=batch, cg=8, cog=20, kernel_hw=(3, 3),
                                        out_hw=(9, 10), bias=True, **kw)
    assert _simd_direct.planar_supports(geom)
    return x, w, b, geom, out_shape, kw


@needs_simd
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_direct_method_runs_the_planar_kernel(dtype, monkeypatch):
    """fastconv.conv2d(method='direct') on a supported geometry calls conv2d_planar and returns its result bit for bit."""
    x, w, b, geom, out_shape, kw = _planar_case(dtype)
    planar = _simd_direct.conv2d_planar
    expected = np.full(out_shape, np.nan, dtype)
    planar(x, w, b, geom, expected)
    calls = []

    def spy(*args):
        calls.append(args[3])
        return planar(*args)

    monkeypatch.setattr(_simd_direct, "conv2d_planar", spy)
    y = fastconv.conv2d(x, w, b, **kw, method="direct")
    assert calls == [geom]
    np.testing.assert_array_equal(y, expected)


@needs_simd
def test_planar_results_do_not_depend_on_thread_count():
    """The planar path gives bitwise the same output on 1 and 2 threads (batch 2, packed and in-place inputs)."""
    x, w, b, _, _, kw = _planar_case(batch=2)
    rng = np.random.default_rng(3)
    xi = rng.standard_normal((2, 16, 20, 21)).astype(np.float32)
    wi = rng.standard_normal((20, 16, 3, 3)).astype(np.float32)
    assert _simd_direct.planar_supports(conv_problem("conv2d", 2, xi.shape, wi.shape, None, 1, 0, 1, 1, "float32")[0])
    before = fastconv.get_num_threads()
    results = {}
    try:
        for n in (1, 2):
            fastconv.set_num_threads(n)
            results[n] = (fastconv.conv2d(x, w, b, **kw, method="direct"), fastconv.conv2d(xi, wi, method="direct"))
    finally:
        fastconv.set_num_threads(before)
    assert fastconv.get_num_threads() == before
    for one, two in zip(results[1], results[2]):
        np.testing.assert_array_equal(one, two)


@needs_simd
def test_planar_concurrent_calls_from_eight_threads():
    """Eight Python threads calling conv2d(method='direct') on a planar geometry at once each get the right result."""
    x, w, b, _, _, kw = _planar_case(batch=3)
    expected = fastconv.conv2d(x, w, b, **kw, method="direct")
    assert_close(expected, _reference(x, w, b, **kw), np.float32, "direct")

    def work(_):
        return [fastconv.conv2d(x, w, b, **kw, method="direct") for _ in range(5)]

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = [y for ys in pool.map(work, range(8)) for y in ys]
    assert len(results) == 40
    for y in results:
        np.testing.assert_array_equal(y, expected)


# --------------------------------------------------------------------------- what LLVM made of the micro-kernel

ASM_PROBE = """
import json
import numpy as np
from fastconv import _simd
from fastconv.geometry import conv_problem
from fastconv.strategies import _simd_direct

rng = np.random.default_rng(0)
x = rng.standard_normal((1, 16, 12, 12)).astype(np.float32)
w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
geom, shape = conv_problem("conv2d", 2, x.shape, w.shape, None, 1, 1, 1, 1, "float32")
assert _simd_direct.planar_supports(geom)
out = np.empty(shape, np.float32)
_simd_direct.conv2d_planar(x, w, None, geom, out)
kern, lanes, rows, vectors = _simd_direct.planar_kernel(np.float32)
print(json.dumps(dict(isa=_simd.ISA, rows=rows, vectors=vectors, asm="\\n".join(kern.inspect_asm().values()))))
"""


def _basic_blocks(asm):
    """The asm's basic blocks: split at ``.LBB`` labels, each cut after its first jump (the block's end)."""
    blocks = []
    for chunk in re.split(r"(?m)^\.LBB", asm):
        lines = []
        for line in chunk.splitlines():
            lines.append(line)
            if line.split() and line.split()[0].startswith("j"):
                break
        blocks.append("\n".join(lines))
    return blocks


def _inspect_micro_kernel(env):
    done = _run(ASM_PROBE, env, timeout=300)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    block = max(_basic_blocks(found["asm"]), key=lambda b: b.count("vfmadd"))
    fmas = [line for line in block.splitlines() if "vfmadd" in line]
    return found, block, fmas


def _check_micro_kernel(found, block, fmas, register):
    """The hot block holds the tile: rows*vectors FMAs per step (LLVM may unroll the step loop, giving a
    whole multiple), exactly rows*vectors distinct accumulator registers of the right width, and no vector
    register ever goes to the stack (no spilled accumulator, weight or input vector).

    One allowance, measured on Zen 4 (2026-12-05): where LLVM unrolls the step loop by 2 on AVX-512, the
    unrolled body runs out of general-purpose registers and reloads integers (loop bound, table and row
    pointers) from the stack: up to 4 per step, L1 hits beside 16 FMAs per step; forward speed was the
    same within noise with 2 and with 8 such reloads per pass.
    Single-step passes (the AVX2 builds) must have no stack access at all."""
    tile = found["rows"] * found["vectors"]
    assert fmas and len(fmas) % tile == 0, f"{len(fmas)} FMAs, not a multiple of the {tile}-vector tile:\n{block}"
    assert all(f"%{register}" in line for line in fmas), block
    accumulators = {re.search(r"%([xyz]mm\d+)\s*$", line).group(1) for line in fmas}
    assert len(accumulators) == tile, f"accumulators {sorted(accumulators)}:\n{block}"
    stack = [line.strip() for line in block.splitlines() if "rsp" in line]
    vector_spills = [line for line in stack if "mm" in line]
    assert not vector_spills, f"vector registers spilled in the micro-kernel: {vector_spills}\n{block}"
    steps = len(fmas) // tile
    allowed = 0 if steps == 1 else 4 * steps
    assert len(stack) <= allowed, f"stack access in the micro-kernel ({steps} steps per pass): {stack}\n{block}"


@needs_simd
@production_build
def test_micro_kernel_is_one_block_of_register_fmas():
    """This CPU's planar float32 build: one block of rows*vectors FMAs per step on zmm (AVX-512) or ymm, no stack access."""
    found, block, fmas = _inspect_micro_kernel(_env(FASTCONV_JIT_CACHE="0"))
    assert found["isa"] == _simd.ISA
    _check_micro_kernel(found, block, fmas, "zmm" if _simd.ISA == "avx512" else "ymm")


@pytest.mark.skipif(not host_has("avx2", "fma"), reason="needs a CPU with AVX2 and FMA")
@production_build
def test_micro_kernel_fits_sixteen_ymm_registers_on_haswell():
    """A Haswell (AVX2) build: ISA 'avx2', one block of rows*vectors FMAs per step on ymm0-15 only, no stack access.

    NUMBA_CPU_FEATURES="" makes Numba take Haswell's own features; with NUMBA_CPU_NAME alone it keeps
    the host's (AVX-512 here), and the "AVX2" kernel could use ymm16-31, which Haswell does not have.
    """
    env = _env(FASTCONV_JIT_CACHE="0", NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES="", FASTCONV_SIMD=None)
    found, block, fmas = _inspect_micro_kernel(env)
    assert found["isa"] == "avx2"
    _check_micro_kernel(found, block, fmas, "ymm")
    registers = {int(r) for r in re.findall(r"%[xyz]mm(\d+)", block)}
    assert max(registers) < 16, f"registers beyond AVX2's 16: {sorted(registers)}\n{block}"


WEIGHT_GRADIENT_PROBE = """
import json
import numpy as np
import fastconv
from fastconv import _simd
from fastconv.strategies import _direct_backward

rng = np.random.default_rng(0)
x = rng.standard_normal((1, 8, 20, 20)).astype(np.float32)
w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
g = rng.standard_normal((1, 8, 20, 20)).astype(np.float32)
fastconv.conv2d_backward(g, x, w, padding=1, method="direct", output_mask=(False, True, False))
print(json.dumps(dict(registers=_simd.REGISTERS,
                      asm="\\n".join(_direct_backward._grad_weight_span.inspect_asm().values()))))
"""


@production_build
@pytest.mark.parametrize("cpu", ["host", "haswell"])
def test_weight_gradient_dot_products_stay_in_registers(cpu):
    """dL/dW's register-blocked dot products (portable code LLVM vectorises): the busiest block holds 4 x 4
    accumulators with 32 vector registers and 2 x 6 with 16 (a Haswell build), on full-width registers, with
    no stack access (4 x 4 spilled 12 registers per pass on Haswell and ran at 60 % of the speed)."""
    changes = dict(FASTCONV_JIT_CACHE="0")
    if cpu == "haswell":
        if not host_has("avx2", "fma"):
            pytest.skip("needs a CPU with AVX2 and FMA")
        changes.update(NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES="")
    elif _simd.ISA == "none":
        pytest.skip(f"no AVX2 or AVX-512 here: {_simd.REASON}")
    done = _run(WEIGHT_GRADIENT_PROBE, _env(**changes), timeout=300)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    block = max(_basic_blocks(found["asm"]), key=lambda b: b.count("vfmadd"))
    fmas = [line for line in block.splitlines() if "vfmadd" in line]
    wide = found["registers"] == 32
    assert len(fmas) == (16 if wide else 12), block
    assert all(("%zmm" if wide else "%ymm") in line for line in fmas), block
    accumulators = {re.search(r"%([xyz]mm\d+)\s*$", line).group(1) for line in fmas}
    assert len(accumulators) == len(fmas), block
    assert "rsp" not in block, f"stack access in the dot products:\n{block}"
    registers = {int(r) for r in re.findall(r"%[xyz]mm(\d+)", block)}
    assert max(registers) < found["registers"], block
