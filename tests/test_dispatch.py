"""The dispatcher: deterministic rules, explain(), FASTCONV_METHOD, and measure mode's cache."""

import dataclasses
import json
import multiprocessing
import os
import warnings

import numpy as np
import pytest

import fastconv
from fastconv.strategies import _simd_direct
from conftest import AUTO_METHODS
from fastconv import bench, dispatch, measure, shapes, strategies


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("FASTCONV_METHOD", raising=False)
    measure.clear_memory()
    yield tmp_path
    measure.clear_memory()


@pytest.fixture
def spy():
    """Records which strategy each call actually ran: every registered strategy's ops wrapped, then restored."""
    ran = []
    originals = {name: strategies.strategy(name) for name in strategies.names()}

    def recording(name, function):
        def run(*args):
            ran.append(name)
            return function(*args)
        return run

    def recording_bind(name, bind):  # a strategy's own bound ops (the repeated-call path) record too
        if bind is None:
            return None
        return lambda op, problem, dtype: (lambda f: None if f is None else recording(name, f))(bind(op, problem, dtype))

    for name, record in originals.items():
        ops = {op: recording(name, f) for op, f in record.ops.items()}
        strategies.register(dataclasses.replace(record, ops=ops, bind=recording_bind(name, record.bind)), replace=True)
    yield ran
    for record in originals.values():
        strategies.register(record, replace=True)


def _call(problem, method="auto"):
    arrays = problem.arrays(np.float32)
    fn = getattr(fastconv, problem.op)
    return fn(*arrays, method=method, **problem.kwargs())


@pytest.mark.parametrize("name", list(shapes.SHAPES))
def test_explain_matches_what_auto_runs(name, spy, cache_dir):
    problem = shapes.SHAPES[name]
    small = problem if problem.flops() < 3e8 else None
    expected = bench.auto_method_for(problem, np.float32)
    if small is None:  # keep the test fast: check the decision only, not the run
        assert expected in AUTO_METHODS
        return
    spy.clear()
    _call(problem)
    assert spy == [expected]


def test_explain_accepts_arrays_or_shapes_and_reads_well():
    x = np.zeros((2, 8, 20, 20), np.float64)
    w = np.zeros((16, 8, 3, 3), np.float64)
    from_arrays = fastconv.explain("conv2d", x, w, padding=1)
    from_shapes = fastconv.explain("conv2d", x.shape, w.shape, padding=1, dtype=np.float64)
    assert from_arrays.method == from_shapes.method
    assert from_arrays.flops == 2 * 2 * 16 * 8 * 9 * 20 * 20
    assert set(from_arrays.workspace) == set(from_arrays.candidates) == set(
        dispatch.candidates("conv", from_arrays.geometry))
    assert {"vectorized", "direct", "img2col"} <= set(from_arrays.candidates) <= set(AUTO_METHODS)
    assert from_arrays.workspace["img2col"] >= 8 * 9 * 20 * 20 * 8
    text = str(from_arrays)
    assert "conv2d: method=" in text and "why:" in text and "workspace" in text
    pool = fastconv.explain("max_pool2d", (1, 4, 12, 12), kernel_size=3, stride=2, padding=1)
    assert pool.method in AUTO_METHODS and "window" in str(pool)


def test_explain_rejects_bad_calls():
    with pytest.raises(ValueError, match="explain: unknown op 'conv4d'"):
        fastconv.explain("conv4d", (1, 1, 4, 4, 4, 4), (1, 1, 2, 2, 2, 2))
    with pytest.raises(ValueError, match="needs kernel_size"):
        fastconv.explain("avg_pool2d", (1, 1, 4, 4))
    with pytest.raises(TypeError, match="unexpected argument"):
        fastconv.explain("conv2d", (1, 1, 4, 4), (1, 1, 2, 2), strides=2)
    with pytest.raises(ValueError, match=r"explain\(conv2d\): input has 3 channels"):
        fastconv.explain("conv2d", (1, 3, 4, 4), (1, 2, 2, 2))


_GEMM = dispatch.GEMM_MIN_OUT_CHANNELS
_POINTWISE = dispatch.POINTWISE_GEMM_MIN_OUT_CHANNELS
_REDUCTION = dispatch.POINTWISE_GEMM_MIN_REDUCTION

#: Convolutions on both sides of each threshold of the rules (see dispatch._rules):
#: (input channels, output channels, kernel, groups, method, a phrase of the reason).
RULE_EDGES = [
    (8, _GEMM, 3, 1, "img2col", "large GEMM"),                             # output channels at the GEMM threshold
    (8, _GEMM - 1, 3, 1, "direct", "too few rows"),                        # one below
    (16, 2 * _GEMM, 3, 2, "img2col", "large GEMM"),                        # counted per group
    (16, 2 * _GEMM - 2, 3, 2, "direct", "too few rows"),
    (_REDUCTION, _POINTWISE, 1, 1, "img2col", "1x1 kernel"),               # deep 1x1 at both thresholds
    (_REDUCTION - 1, _POINTWISE, 1, 1, "direct", "too few rows"),          # reduction one short
    (_REDUCTION, _POINTWISE - 1, 1, 1, "direct", "too few rows"),          # output channels one short
    (2 * _REDUCTION, 2 * _POINTWISE, 1, 2, "img2col", "1x1 kernel"),       # per group
    (2 * _REDUCTION - 2, 2 * _POINTWISE, 1, 2, "direct", "too few rows"),
    (_REDUCTION, _POINTWISE, 3, 1, "direct", "too few rows"),              # a long reduction, but not 1x1
    (32, 32, 3, 32, "direct", "depthwise"),
    (32, 64, 3, 32, "direct", "depthwise"),                                # depthwise, multiplier 2
    (2, 2 * _GEMM, 3, 2, "img2col", "large GEMM"),                         # one input channel per group, many outputs
]


@pytest.mark.parametrize("c_in, c_out, k, groups, method, phrase", RULE_EDGES)
def test_rules_at_their_thresholds(c_in, c_out, k, groups, method, phrase, monkeypatch):
    monkeypatch.delenv("FASTCONV_METHOD", raising=False)
    geom, _ = fastconv.geometry.conv_problem("t", 2, (1, c_in, 12, 12), (c_out, c_in // groups, k, k), None,
                                             1, 0, 1, groups)
    for op in [op for op in dispatch.OPS if op.startswith("conv")]:
        expected, words = method, phrase
        if op == "conv" and phrase != "1x1 kernel" and _simd_direct.planar_supports(geom):
            expected, words = "direct", "register-tiled"  # forward: the SIMD rule comes first
        dispatch._rules.cache_clear()  # decide by the rule, not by what an earlier call left in the cache
        chosen, reason, source = dispatch.decide(op, geom, np.float32, threads=2)
        assert (chosen, source) == (expected, "rules") and words in reason, reason
        dispatch._rules.cache_clear()
        assert dispatch.choose_method(op, geom, np.float32, threads=2) == expected


#: Forward convolutions on both sides of the register-tiled rule's limits (8 output channels per
#: group on AVX-512 and 4 on AVX2: the tile's rows; 32 steps per output): (C_in, C_out, k, SIMD?).
SIMD_EDGES = [(4, 8, 3, True), (3, 8, 3, False), (4, 256, 3, True), (32, 8, 1, True), (31, 8, 1, False)]


@pytest.mark.skipif(not fastconv._simd.AVAILABLE, reason="no explicit-SIMD layer on this CPU")
@pytest.mark.parametrize("c_in, c_out, k, tiled", SIMD_EDGES)
def test_register_tiled_rule_at_its_limits(c_in, c_out, k, tiled, monkeypatch):
    monkeypatch.delenv("FASTCONV_METHOD", raising=False)
    geom, _ = fastconv.geometry.conv_problem("t", 2, (1, c_in, 12, 12), (c_out, c_in, k, k), None, 1, 0, 1, 1)
    rows = _simd_direct.planar_kernel(np.float32)[2]
    assert _simd_direct.planar_supports(geom) == (tiled and c_out >= rows)
    dispatch._rules.cache_clear()
    chosen, reason, _ = dispatch.decide("conv", geom, np.float32, threads=2)
    assert ("register-tiled" in reason) == _simd_direct.planar_supports(geom), reason
    if "register-tiled" in reason:
        assert chosen == "direct"


@pytest.mark.parametrize("kernel_size, stride, padding", [(2, None, 0), (3, 2, 1), (7, None, 0)])
def test_rules_send_pooling_to_direct(kernel_size, stride, padding, monkeypatch):
    monkeypatch.delenv("FASTCONV_METHOD", raising=False)
    geom, _ = fastconv.geometry.pool_problem("t", 2, (1, 2048, 14, 14), kernel_size, stride, padding, 1, False, True)
    for op in [op for op in dispatch.OPS if not op.startswith("conv")]:
        dispatch._rules.cache_clear()
        assert dispatch.choose_method(op, geom, np.float32, threads=2) == "direct"


#: Forward layers direct's register-tiled kernel runs go to direct where the vector layer exists
#: (2026-12-05, Zen 4); the portable kernels lose them to img2col.
_TILED = "direct" if fastconv._simd.AVAILABLE else "img2col"

#: Representative problems and what the measured rules choose (see dispatch.TUNED_ON):
#: (op, input shape, weight shape, geometry, method).
PINNED = [
    ("conv2d", (1, 64, 56, 56), (64, 64, 3, 3), dict(padding=1), "direct"),          # resnet_3x3_56
    ("conv2d", (1, 128, 28, 28), (128, 128, 3, 3), dict(padding=1), _TILED),         # resnet_3x3_28
    ("conv2d", (1, 512, 7, 7), (512, 512, 3, 3), dict(padding=1), _TILED),           # resnet_3x3_7
    ("conv2d", (1, 64, 56, 56), (256, 64, 1, 1), {}, _TILED),                        # pointwise_expand
    ("conv2d", (1, 1024, 14, 14), (64, 1024, 1, 1), {}, "img2col"),                  # deep 1x1, 64 rows
    ("conv2d", (1, 512, 14, 14), (64, 512, 3, 3), dict(padding=1), "direct"),        # deep 3x3, 64 rows
    ("conv2d", (1, 256, 28, 28), (32, 256, 3, 3), dict(padding=1), "direct"),        # deep but 32 rows
    ("conv2d", (16, 64, 224, 224), (3, 64, 9, 9), {}, "direct"),                     # issue 5's 9x9 layer
    ("conv2d", (1, 32, 112, 112), (32, 1, 3, 3), dict(padding=1, groups=32), "direct"),  # depthwise
    ("conv2d", (32, 1, 28, 28), (8, 1, 5, 5), {}, "direct"),                         # lenet_conv1
    ("conv2d", (1, 1, 512, 512), (1, 1, 3, 3), dict(padding=1), "direct"),           # image_filter
    ("conv2d_backward", (1, 128, 28, 28), (128, 128, 3, 3), dict(padding=1), _TILED),   # resnet_3x3_28
    ("conv2d_backward", (1, 256, 14, 14), (256, 256, 3, 3), dict(padding=1), "img2col"),  # resnet_3x3_14
    ("conv2d_backward", (32, 8, 12, 12), (16, 8, 5, 5), {}, "direct"),               # lenet_conv2
    ("conv1d", (8, 1, 16000), (128, 1, 80), dict(stride=4), _TILED),                 # audio_frontend
    ("conv1d", (8, 64, 4000), (64, 64, 3), dict(padding=1), "direct"),               # audio_3
    ("max_pool2d", (1, 64, 112, 112), None, dict(kernel_size=3, stride=2, padding=1), "direct"),
    ("avg_pool2d", (1, 2048, 7, 7), None, dict(kernel_size=7), "direct"),
]


@pytest.mark.parametrize("op, x, w, kw, method", PINNED)
def test_pinned_choices(op, x, w, kw, method, monkeypatch):
    """The exact-order rules: what "auto" picks under precision "highest"."""
    monkeypatch.delenv("FASTCONV_METHOD", raising=False)
    with fastconv.precision("highest"):
        e = fastconv.explain(op, x, w, dtype=np.float32, threads=2, **kw)
    assert (e.method, e.source) == (method, "rules"), e.reason
    assert e.reason and method in e.candidates


#: Under precision "high" (the default) 3x3 stride-1 layers with enough 4x4 output tiles and channels
#: go to Winograd F(4x4, 3x3) (dispatch.WINOGRAD_MIN_TILES); the others keep the pins above.
_WINOGRAD = "winograd" if fastconv._simd.AVAILABLE else None
PINNED_HIGH = [
    ("conv2d", (1, 64, 56, 56), (64, 64, 3, 3), dict(padding=1), _WINOGRAD or "direct"),        # resnet_3x3_56
    ("conv2d", (1, 128, 28, 28), (128, 128, 3, 3), dict(padding=1), _WINOGRAD or "img2col"),    # resnet_3x3_28
    ("conv2d", (8, 64, 56, 56), (64, 64, 3, 3), dict(padding=1), _WINOGRAD or "direct"),        # batch8_3x3_56
    ("conv2d", (1, 256, 14, 14), (256, 256, 3, 3), dict(padding=1), _WINOGRAD or _TILED),       # resnet_3x3_14
    ("conv2d", (1, 512, 7, 7), (512, 512, 3, 3), dict(padding=1), _TILED),                      # resnet_3x3_7
    ("conv2d", (1, 64, 56, 56), (64, 64, 3, 3), dict(padding=1, stride=2), _TILED),             # stride 2
    ("conv2d", (1, 1, 512, 512), (1, 1, 3, 3), dict(padding=1), "direct"),                      # image_filter
    ("conv2d_backward", (1, 128, 28, 28), (128, 128, 3, 3), dict(padding=1), _WINOGRAD or _TILED),
    ("conv2d_backward", (1, 256, 14, 14), (256, 256, 3, 3), dict(padding=1), "img2col"),  # F(2x2): img2col's GEMMs
    ("conv1d", (8, 64, 4000), (64, 64, 3), dict(padding=1), _WINOGRAD or "direct"),             # audio_3: F(6, 3)
    ("conv3d", (1, 64, 16, 56, 56), (128, 64, 3, 3, 3), dict(padding=1), _WINOGRAD or "direct"),  # c3d_video
    ("conv3d_backward", (1, 64, 16, 56, 56), (128, 64, 3, 3, 3), dict(padding=1), _WINOGRAD or "direct"),  # dL/dx by depth
    ("conv3d", (1, 32, 64, 64, 64), (32, 32, 3, 3, 3), dict(padding=1), "direct"),  # unet3d: depth taps as steps
]


@pytest.mark.parametrize("op, x, w, kw, method", PINNED_HIGH)
def test_pinned_choices_under_high_precision(op, x, w, kw, method, monkeypatch):
    monkeypatch.delenv("FASTCONV_METHOD", raising=False)
    with fastconv.precision("high"):
        e = fastconv.explain(op, x, w, dtype=np.float32, threads=2, **kw)
    assert (e.method, e.source) == (method, "rules"), e.reason
    with fastconv.precision("high"):
        assert fastconv.explain(op, x, w, dtype=np.float64, threads=2, **kw).method != "winograd"


def test_environment_forces_a_method(monkeypatch, spy, cache_dir):
    x, w = np.ones((1, 2, 6, 6)), np.ones((3, 2, 3, 3))
    monkeypatch.setenv("FASTCONV_METHOD", "loop")
    spy.clear()
    fastconv.conv2d(x, w)
    assert spy == ["loop"]
    assert fastconv.explain("conv2d", x, w).method == "loop"
    assert "FASTCONV_METHOD" in fastconv.explain("conv2d", x, w).reason
    spy.clear()
    fastconv.conv2d(x, w, method="vectorized")  # an explicit argument still wins
    assert spy == ["vectorized"]


def test_unknown_environment_method_lists_the_valid_ones(monkeypatch):
    monkeypatch.setenv("FASTCONV_METHOD", "fourier")
    with pytest.raises(ValueError, match=r"FASTCONV_METHOD must be one of 'auto', 'measure', 'loop'"):
        fastconv.conv2d(np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3)))


def test_measure_remembers_in_memory_and_on_disk(cache_dir, spy):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 4, 12, 12)), rng.standard_normal((6, 4, 3, 3))
    ref = fastconv.conv2d(x, w, padding=1, method="loop")
    spy.clear()
    y = fastconv.conv2d(x, w, padding=1, method="measure")
    np.testing.assert_allclose(y, ref, rtol=1e-10, atol=1e-10)
    geom = fastconv.explain("conv2d", x, w, padding=1).geometry
    timed = set(dispatch.candidates("conv", geom))  # the automatic strategies that compute it (not fft: 3x3)
    assert {"vectorized", "direct", "img2col"} <= timed <= set(AUTO_METHODS)
    assert set(spy) == timed  # every candidate was timed
    path = measure.cache_path()
    assert os.path.dirname(path) == str(cache_dir) and os.path.exists(path)
    data = json.loads(open(path).read())
    assert data["machine"]["numba"] and len(data["entries"]) == 1
    (entry,) = data["entries"].values()
    winner = entry["method"]
    assert winner in timed and set(entry["seconds"]) == timed
    spy.clear()
    np.testing.assert_allclose(fastconv.conv2d(x, w, padding=1, method="measure"), ref, rtol=1e-10, atol=1e-10)
    assert spy == [winner]  # memory hit: no timing
    measure.clear_memory()
    spy.clear()
    fastconv.conv2d(x, w, padding=1, method="measure")
    assert spy == [winner]  # disk hit


@pytest.mark.parametrize("content", ["{not json", json.dumps({"machine": "x", "entries": []}), "\x00\x01"])
def test_corrupt_cache_is_ignored_with_a_warning_and_rebuilt(cache_dir, content):
    path = measure.cache_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(content)
    x, w = np.ones((1, 2, 8, 8)), np.ones((2, 2, 3, 3))
    with pytest.warns(RuntimeWarning, match="ignoring"):
        y = fastconv.conv2d(x, w, method="measure")
    np.testing.assert_allclose(y, fastconv.conv2d(x, w, method="loop"))
    data = json.loads(open(path).read())  # rebuilt, valid
    assert len(data["entries"]) == 1


def test_unwritable_cache_dir_warns_and_still_answers(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(blocker / "sub"))  # a directory below a file: cannot exist
    measure.clear_memory()
    x, w = np.ones((1, 1, 6, 6)), np.ones((1, 1, 3, 3))
    with pytest.warns(RuntimeWarning, match="could not write the measure cache"):
        y = fastconv.conv2d(x, w, method="measure")
    np.testing.assert_allclose(y, 9.0)
    measure.clear_memory()


def _tune_in_child(args):
    cache, size = args
    os.environ["FASTCONV_CACHE_DIR"] = cache
    import numpy as np

    import fastconv

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a torn or corrupt file would warn: fail instead
        fastconv.conv2d(np.ones((1, 2, size, size)), np.ones((2, 2, 3, 3)), method="measure")
    return size


def test_concurrent_writers_keep_every_entry(cache_dir):
    sizes = list(range(6, 14))
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        assert sorted(pool.map(_tune_in_child, [(str(cache_dir), s) for s in sizes])) == sizes
    data = json.loads(open(measure.cache_path()).read())
    assert len(data["entries"]) == len(sizes)


def test_a_registered_strategy_is_seen_everywhere(cache_dir):
    """A test-only strategy, registered from here: explain, measure mode, forcing and the report list it."""
    vectorized = strategies.strategy("vectorized")
    calls = []

    def conv(*args):
        calls.append(args[3].kernel)
        return vectorized.ops["conv"](*args)

    toy = strategies.Strategy(name="toy", ops={"conv": conv}, summary="3x3 convolutions only (test)", ranks=(2,),
                              supports=lambda op, problem: problem.kernel == (3, 3),
                              workspace_bytes=lambda op, problem, itemsize: 123)
    strategies.register(toy)
    try:
        assert "toy" in fastconv.METHODS and "toy" in bench.report_methods()
        e = fastconv.explain("conv2d", (1, 2, 8, 8), (3, 2, 3, 3))
        assert "toy" in e.candidates and e.workspace["toy"] == 123 and "toy" in str(e)
        assert "toy" not in fastconv.explain("conv2d", (1, 2, 8, 8), (3, 2, 5, 5)).candidates  # supports()
        assert "toy" not in fastconv.explain("max_pool2d", (1, 2, 8, 8), kernel_size=2).candidates  # no pooling
        assert "toy" not in fastconv.explain("conv3d", (1, 2, 4, 8, 8), (3, 2, 3, 3, 3)).candidates  # rank 2 only
        rng = np.random.default_rng(0)
        x, w = rng.standard_normal((1, 2, 8, 8)), rng.standard_normal((3, 2, 3, 3))
        ref = fastconv.conv2d(x, w, method="loop")
        np.testing.assert_allclose(fastconv.conv2d(x, w, method="toy"), ref, rtol=1e-10, atol=1e-10)
        assert calls == [(3, 3)]
        fastconv.conv2d(x, w, method="measure")
        (entry,) = json.loads(open(measure.cache_path()).read())["entries"].values()
        assert "toy" in entry["seconds"]  # measure mode timed it
        with pytest.raises(ValueError, match="method='toy' does not compute this problem"):
            fastconv.max_pool2d(x, 2, method="toy")
        with pytest.raises(ValueError, match="already"):
            strategies.register(toy)
    finally:
        strategies.unregister("toy")
    assert "toy" not in fastconv.METHODS
    with pytest.raises(ValueError, match="method must be one of"):
        fastconv.conv2d(np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3)), method="toy")
