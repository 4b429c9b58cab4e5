"""The winograd strategy (3x3: F(4x4, 3x3) float32, F(2x2, 3x3) float64; 2x2 and the stride phases of
4x4 stride-2 layers: F(4x4, 2x2), F(3x3, 2x2); 1D layers with 3 taps: F(6, 3) along rows, float32) and the
precision setting."""

import json
import os
import re
import subprocess
import sys
import threading
from fractions import Fraction

import numpy as np
import pytest
from conftest import host_has, in_threads
from hypothesis import assume, given
from hypothesis import strategies as st

import fastconv
from fastconv import _simd, dispatch, strategies
from fastconv.precision import allows
from fastconv.strategies import winograd

pytestmark = pytest.mark.skipif(not _simd.AVAILABLE, reason="the Winograd kernels need the explicit-SIMD layer")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _generator():
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import gen_winograd
    finally:
        sys.path.pop(0)
    return gen_winograd


def test_generated_kernels_are_current():
    """fastconv/strategies/_winograd_kernels.py is what tools/gen_winograd.py writes."""
    with open(os.path.join(ROOT, "fastconv", "strategies", "_winograd_kernels.py")) as f:
        assert f.read() == _generator().generate(), "run: python tools/gen_winograd.py"


@pytest.mark.parametrize("m, r", [(2, 3), (4, 3), (4, 2), (3, 2)])
def test_the_generators_transforms_compute_a_correlation(m, r):
    """Y = A^T [(G g G^T) o (B^T d B)] A is the r x r correlation of d, exactly (fractions)."""
    T = _generator().TRANSFORMS[(m, r)]
    rng = np.random.default_rng(m)
    a = m + r - 1
    d = [[Fraction(int(v)) for v in row] for row in rng.integers(-9, 10, (a, a))]
    g = [[Fraction(int(v)) for v in row] for row in rng.integers(-9, 10, (r, r))]

    def mul(A, B):
        return [[sum(A[i][k] * B[k][j] for k in range(len(B))) for j in range(len(B[0]))] for i in range(len(A))]

    def t(A):
        return [list(r) for r in zip(*A)]

    BT, G, AT = ([[Fraction(v) for v in row] for row in T[k]] for k in ("BT", "G", "AT"))
    U, V = mul(mul(G, g), t(G)), mul(mul(BT, d), t(BT))
    Y = mul(mul(AT, [[U[i][j] * V[i][j] for j in range(a)] for i in range(a)]), t(AT))
    direct = [[sum(d[i + p][j + q] * g[p][q] for p in range(r) for q in range(r)) for j in range(m)] for i in range(m)]
    assert Y == direct


def test_the_row_transforms_compute_a_correlation():
    """y = A^T [(G g) o (B^T d)] is the 3-tap correlation of d, exactly: F(6, 3) along rows."""
    T = _generator().TRANSFORMS[(6, 3)]
    rng = np.random.default_rng(6)
    d = [Fraction(int(v)) for v in rng.integers(-9, 10, 8)]
    g = [Fraction(int(v)) for v in rng.integers(-9, 10, 3)]
    BT, G, AT = ([[Fraction(v) for v in row] for row in T[k]] for k in ("BT", "G", "AT"))
    U = [sum(G[i][k] * g[k] for k in range(3)) for i in range(8)]
    V = [sum(BT[i][k] * d[k] for k in range(8)) for i in range(8)]
    y = [sum(AT[p][i] * U[i] * V[i] for i in range(8)) for p in range(6)]
    assert y == [sum(d[p + q] * g[q] for q in range(3)) for p in range(6)]


def _reference(x, w, b, padding):
    return fastconv.conv2d(x.astype(np.float64), w.astype(np.float64), None if b is None else b.astype(np.float64),
                           padding=padding, method="direct")


def _relative_error(y, ref, terms=None):
    """max |y - ref| over the output's scale: max |ref|, or (``terms``: the same sums of absolute values)
    the scale of the summed terms where the sums cancel (a handful of outputs, one of them near zero:
    the transforms' rounding is relative to the terms, not to what is left of them)."""
    scale = max(np.abs(ref).max(), 0 if terms is None else np.abs(terms).max())
    return np.abs(y - ref).max() / scale if scale else np.abs(y).max()


def _window_scale(x, w):
    """``max |x| * max_o sum |w[o]|``: the scale of a window's terms had every tap read data. Winograd's
    transforms mix every tap of a kernel, so where padding leaves only a small tap in the image (a one-column
    map, a 1 x 3 kernel) its rounding is relative to this, not to the in-image terms."""
    return np.array([np.abs(x).max() * np.abs(w).reshape(w.shape[0], -1).sum(axis=1).max()])


@given(n=st.integers(1, 2), c_in=st.integers(1, 40), c_out=st.integers(1, 70), h=st.integers(1, 19),
       w=st.integers(1, 19), padding=st.sampled_from([0, 1, 2, "same", "valid", ((2, 0), (1, 3))]),
       dtype=st.sampled_from([np.float32, np.float64]), with_bias=st.booleans(), seed=st.integers(0, 2**16))
def test_winograd_matches_a_float64_reference_within_its_bound(n, c_in, c_out, h, w, padding, dtype, with_bias, seed):
    (top, bottom), (left, right) = fastconv.resolve_padding(padding, (h, w), (3, 3), (1, 1), (1, 1))
    assume(h + top + bottom >= 3 and w + left + right >= 3)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c_in, h, w)).astype(dtype)
    wt = rng.standard_normal((c_out, c_in, 3, 3)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype) if with_bias else None
    x0, w0 = x.copy(), wt.copy()
    y = fastconv.conv2d(x, wt, b, padding=padding, method="winograd")
    assert y.dtype == dtype
    np.testing.assert_array_equal(x, x0)  # inputs never modified
    np.testing.assert_array_equal(wt, w0)
    ref = _reference(x, wt, b, padding)
    assert y.shape == ref.shape
    terms = _reference(np.abs(x), np.abs(wt), None if b is None else np.abs(b), padding)
    assert _relative_error(y, ref, terms) <= winograd.ERROR_BOUND[np.dtype(dtype).name]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 64, 56, 56, 64), (2, 128, 28, 28, 128), (1, 256, 14, 14, 256),
                                   (1, 3, 60, 33, 5), (3, 17, 9, 30, 40)])
def test_error_bound_holds_on_network_sized_layers(shape, dtype):
    """The bound the dispatcher trusts, on the layers it picks Winograd for and around them, with
    normal, uniform and offset data (offset data cancels most)."""
    n, c_in, h, w, c_out = shape
    rng = np.random.default_rng(sum(shape))
    for x, wt in ((rng.standard_normal((n, c_in, h, w)), rng.standard_normal((c_out, c_in, 3, 3))),
                  (rng.random((n, c_in, h, w)), rng.random((c_out, c_in, 3, 3))),
                  (rng.standard_normal((n, c_in, h, w)) * 10 + 5, rng.standard_normal((c_out, c_in, 3, 3)) * 0.1)):
        x, wt = x.astype(dtype), wt.astype(dtype)
        y = fastconv.conv2d(x, wt, padding=1, method="winograd")
        assert _relative_error(y, _reference(x, wt, None, 1)) <= winograd.ERROR_BOUND[np.dtype(dtype).name]


def test_against_pytorch(torch):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 32, 23, 17)).astype(np.float32)
    w = rng.standard_normal((48, 32, 3, 3)).astype(np.float32)
    b = rng.standard_normal(48).astype(np.float32)
    ours = fastconv.conv2d(x, w, b, padding=1, method="winograd")
    theirs = torch.nn.functional.conv2d(*map(torch.from_numpy, (x, w, b)), padding=1).numpy()
    assert _relative_error(ours, theirs.astype(np.float64)) <= 2 * winograd.ERROR_BOUND["float32"]


def test_unbatched_channels_last_and_out_arguments():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((16, 12, 12)).astype(np.float32)
    w = rng.standard_normal((20, 16, 3, 3)).astype(np.float32)
    ref = _reference(x[None], w, None, 1)[0]
    assert _relative_error(fastconv.conv2d(x, w, padding=1, method="winograd"), ref) <= 5e-5
    last = np.ascontiguousarray(x.transpose(1, 2, 0)).transpose(2, 0, 1)  # channels-last memory: read in place
    y = fastconv.conv2d(last, w, padding=1, method="winograd")
    assert _relative_error(y, ref) <= 5e-5
    assert np.moveaxis(y, 0, -1).flags.c_contiguous  # and the result comes back channels-last
    out = np.empty_like(ref, dtype=np.float32)
    assert fastconv.conv2d(x, w, padding=1, method="winograd", out=out) is out


def test_results_do_not_depend_on_the_thread_count_or_the_workspace_cap():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 24, 21, 22)).astype(np.float32)
    w = rng.standard_normal((40, 24, 3, 3)).astype(np.float32)
    results = []
    for n in (1, 2):
        with fastconv.num_threads(n):
            results.append(fastconv.conv2d(x, w, padding=1, method="winograd"))
    limit = fastconv.get_workspace_limit()
    try:
        fastconv.set_workspace_limit(64 * 1024)  # one image per chunk
        results.append(fastconv.conv2d(x, w, padding=1, method="winograd"))
    finally:
        fastconv.set_workspace_limit(limit)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_concurrent_python_threads():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 16, 20, 20)).astype(np.float32)
    w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    expected = fastconv.conv2d(x, w, padding=1, method="winograd")
    in_threads(lambda: np.testing.assert_array_equal(fastconv.conv2d(x, w, padding=1, method="winograd"), expected))


def test_non_finite_inputs_reach_the_outputs_that_read_them():
    x = np.ones((1, 16, 12, 12), np.float32)
    x[0, 3, 5, 6] = np.nan
    w = np.ones((16, 16, 3, 3), np.float32)
    y = fastconv.conv2d(x, w, padding=1, method="winograd")
    assert np.isnan(y[:, :, 4:7, 5:8]).all()  # every window holding the NaN
    # (the transforms may spread it further inside its tiles: documented, and "highest" avoids it)


@pytest.mark.parametrize("kw, weight", [
    (dict(stride=2, padding=1), (8, 8, 3, 3)),
    (dict(dilation=2, padding=2), (8, 8, 3, 3)),
    (dict(padding=2), (8, 8, 5, 5)),
    (dict(padding=1, groups=2), (8, 4, 3, 3)),
])
def test_problems_it_does_not_compute_are_refused_clearly(kw, weight):
    x = np.ones((1, 8, 10, 10), np.float32)
    with pytest.raises(ValueError, match="conv2d: method='winograd' does not compute this problem"):
        fastconv.conv2d(x, np.ones(weight, np.float32), **kw, method="winograd")
    with pytest.raises(ValueError, match="does not compute this problem"):  # 1D: float32, stride 1, 3 taps
        fastconv.conv1d(np.ones((1, 8, 10), np.float64), np.ones((8, 8, 3), np.float64), method="winograd")
    with pytest.raises(ValueError, match="does not compute this problem"):
        fastconv.conv1d(np.ones((1, 8, 10), np.float32), np.ones((8, 8, 3), np.float32), stride=2, method="winograd")
    with pytest.raises(ValueError, match="does not compute this problem"):
        fastconv.conv1d(np.ones((1, 8, 10), np.float32), np.ones((8, 8, 5), np.float32), method="winograd")


# ---------------------------------------------------------------------------------------------- precision


@pytest.fixture
def clean_precision(monkeypatch):
    monkeypatch.delenv("FASTCONV_METHOD", raising=False)
    before = fastconv.get_precision()
    yield
    fastconv.set_precision(before)


LAYER = ((1, 64, 56, 56), (64, 64, 3, 3))


def test_high_lets_auto_pick_winograd_and_highest_never(clean_precision):
    fastconv.set_precision("high")
    assert fastconv.explain("conv2d", *LAYER, padding=1).method == "winograd"
    explained = fastconv.explain("conv2d", *LAYER, padding=1)
    assert explained.error_bound == winograd.ERROR_BOUND["float32"] and "5e-05" in str(explained)
    fastconv.set_precision("highest")
    explained = fastconv.explain("conv2d", *LAYER, padding=1)
    assert explained.method != "winograd" and "winograd" not in explained.candidates
    assert explained.error_bound is None and "exact order" in str(explained)
    # and a real call runs an exact-order strategy (the repeated-call path too)
    x = np.random.default_rng(0).standard_normal(LAYER[0]).astype(np.float32)
    w = np.random.default_rng(1).standard_normal(LAYER[1]).astype(np.float32)
    exact = fastconv.conv2d(x, w, padding=1, method="direct")
    for _ in range(2):
        np.testing.assert_array_equal(fastconv.conv2d(x, w, padding=1), exact)
    # a forced method is always honoured
    fast = fastconv.conv2d(x, w, padding=1, method="winograd")
    assert not np.array_equal(fast, exact) and _relative_error(fast, exact.astype(np.float64)) <= 5e-5


def test_highest_keeps_measure_mode_on_exact_algorithms(clean_precision, tmp_path, monkeypatch):
    from fastconv import measure

    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(tmp_path))
    measure.clear_memory()
    geom = fastconv.explain("conv2d", (1, 16, 12, 12), (16, 16, 3, 3), padding=1).geometry
    with fastconv.precision("highest"):
        assert "winograd" not in dispatch.candidates("conv", geom)
        x = np.ones((1, 16, 12, 12), np.float32)
        fastconv.conv2d(x, np.ones((16, 16, 3, 3), np.float32), padding=1, method="measure")
        assert measure.remembered("conv", geom, np.float32) != "winograd"
    assert "winograd" in dispatch.candidates("conv", geom)
    measure.clear_memory()


def test_the_context_manager_is_per_thread_and_restores(clean_precision):
    fastconv.set_precision("high")
    seen = {}
    inside = threading.Event()
    release = threading.Event()

    def other():
        inside.wait()
        seen["other"] = fastconv.get_precision()
        release.set()

    t = threading.Thread(target=other)
    t.start()
    with fastconv.precision("highest"):
        seen["inside"] = fastconv.get_precision()
        inside.set()
        release.wait()
        with fastconv.precision("high"):
            seen["nested"] = fastconv.get_precision()
        seen["after nested"] = fastconv.get_precision()
    t.join()
    assert seen == {"inside": "highest", "other": "high", "nested": "high", "after nested": "highest"}
    assert fastconv.get_precision() == "high"
    with pytest.raises(RuntimeError):
        with fastconv.precision("highest"):
            raise RuntimeError("boom")
    assert fastconv.get_precision() == "high"


@pytest.mark.parametrize("bad", ["medium", "HIGH", None, 1])
def test_bad_settings_are_refused(bad, clean_precision):
    with pytest.raises(ValueError, match="set_precision: level must be one of 'highest', 'high'"):
        fastconv.set_precision(bad)
    with pytest.raises(ValueError, match="precision: level must be one of"):
        with fastconv.precision(bad):
            pass


def test_the_environment_variable_sets_the_default():
    code = "import fastconv; print(fastconv.get_precision())"
    env = {**os.environ, "FASTCONV_PRECISION": "highest"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "highest"
    env["FASTCONV_PRECISION"] = "fast"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "FASTCONV_PRECISION must be one of 'highest', 'high', got 'fast'" in done.stderr


def test_registry_records_the_bound():
    record = strategies.strategy("winograd")
    assert record.error_bound == winograd.ERROR_BOUND
    assert all(strategies.strategy(n).error_bound is None for n in ("loop", "vectorized", "direct", "img2col"))
    assert allows(record.error_bound, "float32", "high")
    assert not allows(record.error_bound, "float32", "highest")
    assert allows(None, "float32", "highest")


# ---------------------------------------------------------------------------------------------- the compiled code

ASM_PROBE = """
import json
import sys
import numpy as np
import fastconv
from fastconv import _simd
from fastconv.strategies import winograd
if sys.argv[1] == "row":  # F(6, 3) along rows: a 1D layer
    fastconv.conv1d(np.ones((1, 16, 200), np.float32), np.ones((32, 16, 3), np.float32), padding=1, method="winograd")
    name, fused, lanes, rows = winograd._variant(np.float32, 6, 3, row=True)
else:
    r = int(sys.argv[1])
    x = np.ones((1, 16, 28, 28), np.float32); w = np.ones((32, 16, r, r), np.float32)  # 49 tiles: F(4x4, r x r)
    fastconv.conv2d(x, w, padding=1, method="winograd")
    name, fused, lanes, rows = winograd._variant(np.float32, 4, r)
print(json.dumps(dict(isa=_simd.ISA, rows=rows, asm="\\\\n".join(fused.inspect_asm().values()))))
"""


def _gemm_block(env, r):
    """The F(4x4, r x r) kernel's product loop as compiled in a fresh process: the basic block with the
    most FMAs among those that broadcast (the transforms have more FMAs, by constants, and no broadcasts)."""
    from test_simd import _basic_blocks, _run

    done = _run(ASM_PROBE, env, str(r), timeout=600)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    blocks = [b for b in _basic_blocks(found["asm"]) if "vbroadcastss" in b or "{1to" in b]
    block = max(blocks, key=lambda b: b.count("vfmadd"))
    return found, block, [line for line in block.splitlines() if "vfmadd" in line]


def _check_gemm_block(found, block, fmas, register):
    """R x 2 accumulators on the right registers, no vector register ever on the stack; a few integer
    reloads allowed (<= 4 per step): the 14 broadcast rows need more addresses than x86 has registers
    for. Measured on Zen 4 (2026-12-05): with 4 such L1 reloads per step (after the transforms became
    loops) resnet_3x3_56/_28 ran 0.61/0.71 ms, as with none before (0.59/0.70)."""
    tile = found["rows"] * 2
    assert fmas and len(fmas) % tile == 0, f"{len(fmas)} FMAs, not a multiple of the {tile}-vector tile:\n{block}"
    assert all(f"%{register}" in line for line in fmas), block
    accumulators = {re.search(r"%([xyz]mm\d+)\s*$", line).group(1) for line in fmas}
    assert len(accumulators) == tile, f"accumulators {sorted(accumulators)}:\n{block}"
    stack = [line.strip() for line in block.splitlines() if "rsp" in line]
    assert not [line for line in stack if "mm" in line], f"vector registers spilled: {stack}\n{block}"
    assert len(stack) <= 4 * (len(fmas) // tile), f"stack access in the product loop: {stack}\n{block}"


production_build = pytest.mark.skipif(os.environ.get("NUMBA_BOUNDSCHECK") == "1"
                                      or os.environ.get("NUMBA_DISABLE_JIT") == "1",
                                      reason="inspects the production (unchecked, parallel) build")


@production_build
@pytest.mark.parametrize("r", [3, 2, "row"])
def test_product_loop_is_one_block_of_register_fmas(r):
    """This CPU's float32 build: R tiles x 2 vectors of FMAs per step, on zmm (AVX-512) or ymm, no stack access."""
    from test_simd import _env

    found, block, fmas = _gemm_block(_env(FASTCONV_JIT_CACHE="0"), r)
    assert found["isa"] == _simd.ISA
    _check_gemm_block(found, block, fmas, "zmm" if _simd.ISA == "avx512" else "ymm")


@pytest.mark.skipif(not host_has("avx2", "fma"), reason="needs a CPU with AVX2 and FMA")
@production_build
@pytest.mark.parametrize("r", [3, 2, "row"])
def test_product_loop_fits_sixteen_ymm_registers_on_haswell(r):
    """The AVX2 build (compiled for Haswell in a subprocess): ymm0-15 only, no stack access."""
    from test_simd import _env

    found, block, fmas = _gemm_block(_env(FASTCONV_JIT_CACHE="0", NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES="",
                                          FASTCONV_SIMD=None), r)
    assert found["isa"] == "avx2"
    _check_gemm_block(found, block, fmas, "ymm")
    registers = {int(r) for r in re.findall(r"%[xyz]mm(\d+)", block)}
    assert max(registers) < 16, f"registers beyond AVX2's 16: {sorted(registers)}\n{block}"


AVX2_PROBE = """
import numpy as np
import fastconv
from fastconv import _simd
from fastconv.strategies import winograd
assert _simd.ISA == "avx2", _simd.ISA
rng = np.random.default_rng(0)
worst = 0.0
for dtype in (np.float32, np.float64):
    for n, c, h, w, co in ((2, 5, 9, 14, 7), (1, 24, 17, 17, 40)):
        x = rng.standard_normal((n, c, h, w)).astype(dtype)
        k = rng.standard_normal((co, c, 3, 3)).astype(dtype)
        b = rng.standard_normal(co).astype(dtype)
        y = fastconv.conv2d(x, k, b, padding=1, method="winograd")
        ref = fastconv.conv2d(x.astype(np.float64), k.astype(np.float64), b.astype(np.float64), padding=1,
                              method="direct")
        err = np.abs(y - ref).max() / np.abs(ref).max()
        assert err <= winograd.ERROR_BOUND[np.dtype(dtype).name], (dtype, err)
    if dtype == np.float32:  # F(6, 3) along rows: a 1D layer, forward and dL/dx
        x = rng.standard_normal((3, 20, 47)).astype(dtype)
        k = rng.standard_normal((37, 20, 3)).astype(dtype)
        y = fastconv.conv1d(x, k, padding=1, method="winograd")
        ref = fastconv.conv1d(x.astype(np.float64), k.astype(np.float64), padding=1, method="direct")
        assert np.abs(y - ref).max() / np.abs(ref).max() <= winograd.ERROR_BOUND["float32"]
        dx = fastconv.conv1d_backward(y, x, k, padding=1, method="winograd", output_mask=(True, False, False))[0]
        ref = fastconv.conv1d_backward(y.astype(np.float64), x.astype(np.float64), k.astype(np.float64), padding=1,
                                       method="direct", output_mask=(True, False, False))[0]
        assert np.abs(dx - ref).max() / np.abs(ref).max() <= winograd.ERROR_BOUND["float32"]
    # the 2x2-kernel kernels, through the stride phases of a transposed convolution
    x = rng.standard_normal((2, 24, 6, 7)).astype(dtype)
    k = rng.standard_normal((24, 19, 4, 4)).astype(dtype)
    y = fastconv.conv_transpose2d(x, k, stride=2, padding=1, method="winograd")
    ref = fastconv.conv_transpose2d(x.astype(np.float64), k.astype(np.float64), stride=2, padding=1, method="direct")
    err = np.abs(y - ref).max() / np.abs(ref).max()
    assert err <= winograd.ERROR_BOUND[np.dtype(dtype).name], (dtype, err)
    # ... and a strided forward layer (space to depth)
    k = rng.standard_normal((19, 24, 4, 4)).astype(dtype)
    y = fastconv.conv2d(x, k, stride=2, padding=1, method="winograd")
    ref = fastconv.conv2d(x.astype(np.float64), k.astype(np.float64), stride=2, padding=1, method="direct")
    err = np.abs(y - ref).max() / np.abs(ref).max()
    assert err <= winograd.ERROR_BOUND[np.dtype(dtype).name], (dtype, err)
print("ok")
"""


@pytest.mark.skipif(not host_has("avx2", "fma"), reason="needs a CPU with AVX2 and FMA")
def test_the_avx2_kernels_are_right_too():
    """FASTCONV_SIMD=avx2 selects the 8/4-lane kernels (run here even on an AVX-512 machine)."""
    from test_simd import _env, _run

    done = _run(AVX2_PROBE, _env(FASTCONV_SIMD="avx2"), timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr


# ---------------------------------------------------------------------------------------------- backward, 3D

@given(n=st.integers(1, 2), c_in=st.integers(1, 24), c_out=st.integers(1, 40), h=st.integers(1, 14),
       w=st.integers(1, 14), padding=st.sampled_from([0, 1, 2, 3, "same", ((2, 0), (1, 2))]),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_backward_matches_the_float64_direct_backward(n, c_in, c_out, h, w, padding, dtype, seed):
    """dL/dx through Winograd (within its bound; padding above 2 crops dy), dL/dW and dL/db exact-order."""
    (top, bottom), (left, right) = fastconv.resolve_padding(padding, (h, w), (3, 3), (1, 1), (1, 1))
    assume(h + top + bottom >= 3 and w + left + right >= 3)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c_in, h, w)).astype(dtype)
    wt = rng.standard_normal((c_out, c_in, 3, 3)).astype(dtype)
    g = rng.standard_normal(fastconv.conv2d(x, wt, padding=padding, method="direct").shape).astype(dtype)
    ours = fastconv.conv2d_backward(g, x, wt, padding=padding, method="winograd")
    ref = fastconv.conv2d_backward(g.astype(np.float64), x.astype(np.float64), wt.astype(np.float64), padding=padding,
                                   method="direct")
    sums = fastconv.conv2d_backward(*(np.abs(a).astype(np.float64) for a in (g, x, wt)), padding=padding,
                                    method="direct")
    bound = winograd.ERROR_BOUND[np.dtype(dtype).name]
    for got, want, terms in zip(ours, ref, sums):
        assert got.dtype == dtype and got.shape == want.shape
        assert _relative_error(got, want, terms) <= bound
    only_dx = fastconv.conv2d_backward(g, x, wt, padding=padding, method="winograd", output_mask=(True, False, False))
    np.testing.assert_array_equal(only_dx[0], ours[0])
    assert only_dx[1] is None and only_dx[2] is None


@given(n=st.integers(1, 3), c_in=st.integers(1, 40), c_out=st.integers(1, 40), h=st.integers(1, 13),
       w=st.integers(1, 13), padding=st.sampled_from([0, 1, ((1, 0), (0, 1))]),
       dtype=st.sampled_from([np.float32, np.float64]), with_bias=st.booleans(), seed=st.integers(0, 2**16))
def test_two_by_two_kernels_forward_and_backward(n, c_in, c_out, h, w, padding, dtype, with_bias, seed):
    """F(4x4, 2x2) float32 / F(3x3, 2x2) float64, within the bound; dL/dx through the flipped kernel."""
    (top, bottom), (left, right) = fastconv.resolve_padding(padding, (h, w), (2, 2), (1, 1), (1, 1))
    assume(h + top + bottom >= 2 and w + left + right >= 2)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c_in, h, w)).astype(dtype)
    wt = rng.standard_normal((c_out, c_in, 2, 2)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype) if with_bias else None
    y = fastconv.conv2d(x, wt, b, padding=padding, method="winograd")
    bound = winograd.ERROR_BOUND[np.dtype(dtype).name]
    terms = _reference(np.abs(x), np.abs(wt), None if b is None else np.abs(b), padding)
    assert _relative_error(y, _reference(x, wt, b, padding), terms) <= bound
    g = rng.standard_normal(y.shape).astype(dtype)
    ours = fastconv.conv2d_backward(g, x, wt, padding=padding, method="winograd")
    ref = fastconv.conv2d_backward(*(a.astype(np.float64) for a in (g, x, wt)), padding=padding, method="direct")
    sums = fastconv.conv2d_backward(*(np.abs(a).astype(np.float64) for a in (g, x, wt)), padding=padding,
                                    method="direct")
    for got, want, terms in zip(ours, ref, sums):
        assert got.dtype == dtype and _relative_error(got, want, terms) <= bound


@given(n=st.integers(1, 3), c_in=st.integers(1, 70), c_out=st.integers(1, 70), length=st.integers(1, 90),
       padding=st.sampled_from([0, 1, 2, "same", ((2, 0),), ((0, 3),)]), with_bias=st.booleans(),
       channels_last=st.booleans(), seed=st.integers(0, 2**16))
def test_one_dimensional_layers_forward_and_backward(n, c_in, c_out, length, padding, with_bias, channels_last, seed):
    """F(6, 3) along rows (float32 1D layers with 3 taps; every tail of a 6-output tile, channel counts
    that are not whole vectors, tiles that span images), within the bound; dL/dx through the flipped kernel;
    NLC memory read in place and the result in the same memory format."""
    (left, right), = fastconv.resolve_padding(padding, (length,), (3,), (1,), (1,))
    assume(length + left + right >= 3)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c_in, length)).astype(np.float32)
    if channels_last:
        x = np.ascontiguousarray(x.transpose(0, 2, 1)).transpose(0, 2, 1)
    wt = rng.standard_normal((c_out, c_in, 3)).astype(np.float32)
    b = rng.standard_normal(c_out).astype(np.float32) if with_bias else None
    x0 = x.copy()
    y = fastconv.conv1d(x, wt, b, padding=padding, method="winograd")
    np.testing.assert_array_equal(x, x0)
    assert y.strides == fastconv.conv1d(x, wt, b, padding=padding, method="direct").strides  # its memory format
    as64 = [None if a is None else a.astype(np.float64) for a in (x, wt, b)]
    ref = fastconv.conv1d(*as64, padding=padding, method="direct")
    terms = fastconv.conv1d(*(None if a is None else np.abs(a) for a in as64), padding=padding, method="direct")
    bound = winograd.ERROR_BOUND["float32"]
    assert y.dtype == np.float32 and y.shape == ref.shape
    assert _relative_error(y, ref, np.maximum(terms.max(), _window_scale(x, wt))) <= bound
    g = rng.standard_normal(y.shape).astype(np.float32)
    ours = fastconv.conv1d_backward(g, x, wt, padding=padding, method="winograd")
    want = fastconv.conv1d_backward(g.astype(np.float64), *as64[:2], padding=padding, method="direct")
    sums = fastconv.conv1d_backward(np.abs(g).astype(np.float64), *(np.abs(a) for a in as64[:2]), padding=padding,
                                    method="direct")
    sums = (np.maximum(sums[0].max(), _window_scale(g, wt.transpose(1, 0, 2))), *sums[1:])  # dL/dx: Winograd's
    for got, exact, scale in zip(ours, want, sums):
        assert got.dtype == np.float32 and got.shape == exact.shape
        assert _relative_error(got, exact, scale) <= bound


@given(n=st.integers(1, 2), c_in=st.integers(1, 40), c_out=st.integers(1, 40), h=st.integers(1, 7),
       w=st.integers(1, 30), padding=st.sampled_from([(0, 1), (0, 0), (0, 2)]), seed=st.integers(0, 2**16))
def test_two_dimensional_layers_with_one_by_three_kernels(n, c_in, c_out, h, w, padding, seed):
    """A 2D layer with a 1 x 3 kernel (Inception's factorised convolutions) is one 1D problem per row."""
    assume(w + 2 * padding[1] >= 3)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c_in, h, w)).astype(np.float32)
    wt = rng.standard_normal((c_out, c_in, 1, 3)).astype(np.float32)
    y = fastconv.conv2d(x, wt, padding=padding, method="winograd")
    ref = _reference(x, wt, None, padding)
    assert _relative_error(y, ref, _window_scale(x, wt)) <= winograd.ERROR_BOUND["float32"]


def test_one_dimensional_layer_against_pytorch_and_auto_picks_it(torch, monkeypatch):
    """audio_3-like (64 channels, enough tiles): auto runs F(6, 3), forward and backward; 32 channels or few
    tiles stay on direct; precision "highest" never picks it."""
    monkeypatch.delenv("FASTCONV_METHOD", raising=False)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 64, 1000)).astype(np.float32)
    w = rng.standard_normal((64, 64, 3)).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    with fastconv.precision("high"):
        ours = fastconv.conv1d(x, w, b, padding=1)
        assert fastconv.explain("conv1d", x, w, padding=1).method == "winograd"
        assert "F(6, 3)" in str(fastconv.explain("conv1d", x, w, padding=1))
        assert fastconv.explain("conv1d_backward", x, w, padding=1).method == "winograd"
        assert fastconv.explain("conv1d", x[:, :32], w[:32, :32], padding=1).method == "direct"
        assert fastconv.explain("conv1d", x[:1, :, :300], w, padding=1).method == "direct"  # 50 tiles: too few
    theirs = torch.nn.functional.conv1d(*map(torch.from_numpy, (x, w, b)), padding=1).numpy()
    assert _relative_error(ours, theirs.astype(np.float64)) <= 2 * winograd.ERROR_BOUND["float32"]
    with fastconv.precision("highest"):
        assert fastconv.explain("conv1d", x, w, padding=1).method != "winograd"


@given(n=st.integers(1, 3), c_in=st.integers(1, 36), c_out=st.integers(1, 36), h=st.integers(1, 11),
       w=st.integers(1, 11), geometry=st.sampled_from([(4, 2, 1, 0), (4, 2, 0, 1), (4, 2, 2, 0), (4, 2, 3, 1),
                                                       (6, 2, 2, 1), (6, 3, 1, 2), (2, 1, 0, 0), (3, 1, 3, 0)]),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_strided_input_gradients_run_as_stride_phases(n, c_in, c_out, h, w, geometry, dtype, seed):
    """conv_transpose2d with a kernel of stride x 2 or stride x 3 taps (each stride phase of the output a
    2x2 or 3x3 stride-1 convolution, some phases empty where stride > kernel), any padding and
    output_padding, against the float64 direct result; and its dL/dW (the same problem's conv_backward)."""
    k, s, padding, output_padding = geometry
    out = [(size - 1) * s - 2 * padding + k + output_padding for size in (h, w)]
    assume(min(out) >= 1 and output_padding < s)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c_in, h, w)).astype(dtype)
    wt = rng.standard_normal((c_in, c_out, k, k)).astype(dtype)
    kw = dict(stride=s, padding=padding, output_padding=output_padding)
    assume(winograd.supports("conv_backward", fastconv.explain("conv_transpose2d", x, wt, **kw).geometry))
    y = fastconv.conv_transpose2d(x, wt, **kw, method="winograd")
    x64, w64 = x.astype(np.float64), wt.astype(np.float64)
    bound = winograd.ERROR_BOUND[np.dtype(dtype).name]
    terms = fastconv.conv_transpose2d(np.abs(x64), np.abs(w64), **kw, method="direct")
    assert y.dtype == dtype
    assert _relative_error(y, fastconv.conv_transpose2d(x64, w64, **kw, method="direct"), terms) <= bound
    g = rng.standard_normal(y.shape).astype(dtype)
    # dL/dW (its dL/dx is a strided forward convolution, which Winograd does not compute)
    mask = (False, True, True)
    sums = fastconv.conv_transpose2d_backward(np.abs(g).astype(np.float64), np.abs(x64), np.abs(w64), **kw,
                                              method="direct", output_mask=mask)[1:]
    for got, want, terms in zip(fastconv.conv_transpose2d_backward(g, x, wt, **kw, method="winograd",
                                                                   output_mask=mask)[1:],
                                fastconv.conv_transpose2d_backward(g.astype(np.float64), x64, w64, **kw,
                                                                   method="direct", output_mask=mask)[1:], sums):
        assert got.dtype == dtype and _relative_error(got, want, terms) <= bound


def test_dcgan_layer_against_pytorch_and_auto_picks_it(torch, monkeypatch):
    """The bench's dcgan_up layer (4x4, stride 2, padding 1): PyTorch agrees, auto runs Winograd's phases."""
    monkeypatch.delenv("FASTCONV_METHOD", raising=False)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 64, 8, 8)).astype(np.float32)  # 4 phases x 4 images x 4 tiles of 4x4
    wt = rng.standard_normal((64, 32, 4, 4)).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    with fastconv.precision("high"):
        assert fastconv.explain("conv_transpose2d", x, wt, stride=2, padding=1).method == "winograd"
        ours = fastconv.conv_transpose2d(x, wt, b, stride=2, padding=1)
    theirs = torch.nn.functional.conv_transpose2d(*map(torch.from_numpy, (x, wt, b)), stride=2, padding=1).numpy()
    assert _relative_error(ours, theirs.astype(np.float64)) <= 2 * winograd.ERROR_BOUND["float32"]
    with fastconv.precision("highest"):
        assert fastconv.explain("conv_transpose2d", x, wt, stride=2, padding=1).method != "winograd"


def test_strided_problems_it_does_not_split_are_refused():
    """A phase kernel that is not 2x2 or 3x3 (here 3x3 with stride 2: phases of 2x2 and 1x1 taps), a
    strided forward kernel that is not stride x 2 or 3 taps, or unequal strides: a clear error."""
    x = np.ones((1, 16, 8, 8), np.float32)
    with pytest.raises(ValueError, match="does not compute this problem"):
        fastconv.conv_transpose2d(x, np.ones((16, 16, 3, 3), np.float32), stride=2, method="winograd")
    for weight, stride in (((16, 16, 5, 5), 2), ((16, 16, 4, 4), (2, 1)), ((16, 16, 8, 8), 2)):
        with pytest.raises(ValueError, match="does not compute this problem"):
            fastconv.conv2d(x, np.ones(weight, np.float32), stride=stride, padding=1, method="winograd")


@given(n=st.integers(1, 3), c_in=st.integers(1, 24), c_out=st.integers(1, 40), h=st.integers(1, 19),
       w=st.integers(1, 19), geometry=st.sampled_from([(4, 2), (6, 2), (6, 3), (9, 3)]),
       padding=st.sampled_from([0, 1, 2, ((2, 0), (1, 3))]), last=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64]), with_bias=st.booleans(), seed=st.integers(0, 2**16))
def test_strided_layers_run_as_space_to_depth(n, c_in, c_out, h, w, geometry, padding, last, dtype, with_bias, seed):
    """A stride-s layer with s*r taps per axis: a stride-1 r x r Winograd convolution over s*s times the
    channels, packed from NCHW or channels-last memory; within the bound of the float64 direct result."""
    k, s = geometry
    (top, bottom), (left, right) = fastconv.resolve_padding(padding, (h, w), (k, k), (s, s), (1, 1))
    assume(h + top + bottom >= k and w + left + right >= k)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c_in, h, w)).astype(dtype)
    wt = rng.standard_normal((c_out, c_in, k, k)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype) if with_bias else None
    source = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2) if last else x
    y = fastconv.conv2d(source, wt, b, stride=s, padding=padding, method="winograd")
    ref = fastconv.conv2d(x.astype(np.float64), wt.astype(np.float64), None if b is None else b.astype(np.float64),
                          stride=s, padding=padding, method="direct")
    terms = fastconv.conv2d(np.abs(x).astype(np.float64), np.abs(wt).astype(np.float64),
                            None if b is None else np.abs(b).astype(np.float64), stride=s, padding=padding,
                            method="direct")
    assert y.dtype == dtype and y.shape == ref.shape
    assert _relative_error(y, ref, terms) <= winograd.ERROR_BOUND[np.dtype(dtype).name]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_three_dimensional_layers_by_depth(dtype):
    """3x3x3 (and 2x3x3) layers: the depth taps become channels of one 2D problem (strategies/_depth.py)."""
    rng = np.random.default_rng(8)
    bound = winograd.ERROR_BOUND[np.dtype(dtype).name]
    for kd, padding in ((3, 1), (2, (1, 1, 0))):
        x = rng.standard_normal((2, 5, 7, 9, 8)).astype(dtype)
        wt = rng.standard_normal((6, 5, kd, 3, 3)).astype(dtype)
        b = rng.standard_normal(6).astype(dtype)
        y = fastconv.conv3d(x, wt, b, padding=padding, method="winograd")
        x64, w64 = x.astype(np.float64), wt.astype(np.float64)
        ref = fastconv.conv3d(x64, w64, b.astype(np.float64), padding=padding, method="direct")
        assert _relative_error(y, ref) <= bound
        g = rng.standard_normal(y.shape).astype(dtype)
        for got, want in zip(fastconv.conv3d_backward(g, x, wt, padding=padding, method="winograd"),
                             fastconv.conv3d_backward(g.astype(np.float64), x64, w64, padding=padding,
                                                      method="direct")):
            assert _relative_error(got, want) <= bound
    with pytest.raises(ValueError, match="does not compute this problem"):
        fastconv.conv3d(np.ones((1, 2, 5, 5, 5), dtype), np.ones((2, 2, 3, 3, 3), dtype), stride=(1, 2, 1),
                        method="winograd")


def test_the_transposed_convolution_runs_on_it():
    """conv_transpose2d with a 3x3 kernel, stride 1 is a backward dL/dx: Winograd computes it too."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 12, 10, 11)).astype(np.float32)
    wt = rng.standard_normal((12, 20, 3, 3)).astype(np.float32)
    y = fastconv.conv_transpose2d(x, wt, padding=1, method="winograd")
    ref = fastconv.conv_transpose2d(x.astype(np.float64), wt.astype(np.float64), padding=1, method="direct")
    assert _relative_error(y, ref) <= winograd.ERROR_BOUND["float32"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, c_out, padding", [((2, 16, 13, 11), 24, 1), ((1, 64, 28, 28), 64, 1),
                                                   ((3, 20, 9, 30), 40, ((2, 0), (1, 1))), ((1, 5, 6, 7), 3, 0)])
def test_channels_last_memory_in_and_out(shape, c_out, padding, dtype):
    """(N, C, H, W) over N, H, W, C memory: packed straight from it, results stored as vectors of channels."""
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((c_out, shape[1], 3, 3)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype)
    last = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    y = fastconv.conv2d(last, w, b, padding=padding, method="winograd")
    assert np.moveaxis(y, 1, -1).flags.c_contiguous
    np.testing.assert_array_equal(y, fastconv.conv2d(x, w, b, padding=padding, method="winograd"))  # same sums
    assert _relative_error(y, _reference(x, w, b, padding)) <= winograd.ERROR_BOUND[np.dtype(dtype).name]


def test_auto_reads_channels_last_layers_with_winograd(monkeypatch):
    monkeypatch.delenv("FASTCONV_METHOD", raising=False)
    x = np.ones((1, 56, 56, 64), np.float32).transpose(0, 3, 1, 2)
    with fastconv.precision("high"):
        assert fastconv.explain("conv2d", x, np.ones((64, 64, 3, 3), np.float32), padding=1).method == "winograd"
    with fastconv.precision("highest"):
        assert fastconv.explain("conv2d", x, np.ones((64, 64, 3, 3), np.float32), padding=1).method == "direct"
