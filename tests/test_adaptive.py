"""Adaptive max / average pooling: every strategy implementing it against the loop oracle and PyTorch.

The strategies come from the registry: those implementing every adaptive op (the loop oracle and,
today, ``direct``). Hypothesis draws ranks 1-3, batched and unbatched inputs, float32 and float64,
output sizes of one (global pooling), equal to the input, not dividing it and larger than it, None
entries, and values with NaN, +-inf and many ties.
"""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fastconv
import fastconv.nn as nn
from conftest import ORACLE, assert_close, central_difference
from fastconv import dispatch, measure, strategies
from fastconv.geometry import AdaptivePoolGeometry, adaptive_pool_problem, adaptive_window, adaptive_windows

#: The adaptive ops of the registry.
ADAPTIVE_OPS = tuple(op for op in strategies.OPS if op.startswith("adaptive_"))
#: Strategies implementing every adaptive op, and those of them other than the oracle.
IMPLEMENTING = tuple(n for n in strategies.names() if set(ADAPTIVE_OPS) <= set(strategies.strategy(n).ops))
FAST = tuple(n for n in IMPLEMENTING if n != ORACLE)

#: Fewer examples than the profile's default (the oracle is pure Python), and never more than the
#: profile allows (the bounds-checked pass lowers it).
BOUNDED = settings(max_examples=min(30, settings().max_examples), deadline=None)
FEW = settings(max_examples=min(15, settings().max_examples), deadline=None)


# --------------------------------------------------------------------------- cases


@dataclasses.dataclass
class AdaptiveCase:
    nd: int
    x: np.ndarray
    output_size: object  # an int, or a tuple whose entries may be None

    def function(self, kind, backward=False):
        return getattr(fastconv, f"adaptive_{kind}_pool{self.nd}d" + ("_backward" if backward else ""))

    def out_size(self):
        """The resolved output size, one int per axis."""
        sizes = self.output_size if isinstance(self.output_size, tuple) else (self.output_size,) * self.nd
        return tuple(n if o is None else o for o, n in zip(sizes, self.x.shape[-self.nd:]))

    def out_shape(self):
        return self.x.shape[: self.x.ndim - self.nd] + self.out_size()

    def max(self, method, return_indices=True):
        return self.function("max")(self.x, self.output_size, return_indices, method=method)

    def avg(self, method):
        return self.function("avg")(self.x, self.output_size, method=method)

    def max_backward(self, grad_output, indices, method):
        return self.function("max", True)(grad_output, indices, self.x.shape, method=method)

    def avg_backward(self, grad_output, method):
        return self.function("avg", True)(grad_output, self.x.shape, method=method)


@st.composite
def adaptive_cases(draw, nd=None, dtype=None, values=None, max_batch=2, max_channels=3, max_size=None):
    """A random adaptive pooling problem; ``values`` is 'normal', 'special' (NaN, +-inf), 'ties' or 'distinct'."""
    nd = draw(st.sampled_from([1, 2, 3])) if nd is None else nd
    dtype = draw(st.sampled_from([np.float32, np.float64])) if dtype is None else dtype
    values = draw(st.sampled_from(["normal", "special", "ties", "distinct"])) if values is None else values
    max_size = {1: 12, 2: 9, 3: 5}[nd] if max_size is None else max_size
    in_size = tuple(draw(st.integers(1, max_size)) for _ in range(nd))
    # global pooling, the input's size, anything up to a few past it (larger than the input), or None
    out_size = tuple(draw(st.one_of(st.just(1), st.just(n), st.integers(1, n + 4), st.none())) for n in in_size)
    if all(o is not None and o == out_size[0] for o in out_size) and draw(st.booleans()):
        output_size = out_size[0]
    else:
        output_size = out_size
    batch = draw(st.integers(0 if max_batch else 1, max_batch))
    channels = draw(st.integers(1, max_channels))
    unbatched = batch == 1 and draw(st.booleans())
    shape = ((channels,) if unbatched else (batch, channels)) + in_size
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if values == "distinct":
        x = rng.permutation(int(np.prod(shape))).reshape(shape).astype(dtype)
    elif values == "ties":
        x = rng.integers(-1, 2, shape).astype(dtype)  # three values: most windows hold ties
    else:
        x = rng.standard_normal(shape).astype(dtype)
    if values == "special" and x.size:
        flat = x.reshape(-1)
        for value in draw(st.lists(st.sampled_from([np.nan, np.inf, -np.inf]), min_size=1, max_size=4)):
            flat[rng.integers(flat.size)] = value
    return AdaptiveCase(nd, x, output_size)


def test_the_registry_has_fast_strategies_for_every_adaptive_op():
    assert ADAPTIVE_OPS == ("adaptive_max_pool", "adaptive_max_pool_backward", "adaptive_avg_pool",
                            "adaptive_avg_pool_backward")
    assert ORACLE in IMPLEMENTING and "direct" in FAST


# --------------------------------------------------------------------------- the window rule


@given(n=st.integers(1, 60), o=st.integers(1, 60))
def test_windows_cover_the_axis_overlapping_by_at_most_one(n, o):
    start, end = adaptive_windows(n, o)
    assert start.dtype == end.dtype == np.int64 and len(start) == len(end) == o
    assert start[0] == 0 and end[-1] == n and (end > start).all()
    np.testing.assert_array_equal(np.diff(start) >= 0, True)
    overlap = end[:-1] - start[1:]  # 0 or 1: neighbours touch or share one element
    assert ((overlap == 0) | (overlap == 1)).all()
    assert (end - start).max() <= -(-n // o) + 1
    for i in (0, o // 2, o - 1):  # the formula, in exact rational arithmetic
        assert adaptive_window(i, n, o) == (int(np.floor(i * n / o)), int(np.ceil((i + 1) * n / o)))


def test_windows_by_hand():
    assert [adaptive_window(i, 5, 3) for i in range(3)] == [(0, 2), (1, 4), (3, 5)]
    assert [adaptive_window(i, 2, 5) for i in range(5)] == [(0, 1), (0, 1), (0, 2), (1, 2), (1, 2)]
    assert [adaptive_window(i, 7, 1) for i in range(1)] == [(0, 7)]
    assert [adaptive_window(i, 6, 3) for i in range(3)] == [(0, 2), (2, 4), (4, 6)]


def test_problem_record():
    geom, shape = adaptive_pool_problem("f", 1, (3, 10), 4, np.float64)
    assert geom == AdaptivePoolGeometry(batch=1, channels=3, in_size=(1, 10), out_size=(1, 4), dtype="float64")
    assert shape == (3, 4) and geom.rank == 2 and geom.input_shape == (1, 3, 1, 10)
    assert geom.output_shape == (1, 3, 1, 4) and hash(geom) == hash(dataclasses.replace(geom))
    geom, shape = adaptive_pool_problem("f", 3, (2, 3, 4, 5, 6), (None, 2, None))
    assert (geom.in_size, geom.out_size, geom.rank, shape) == ((4, 5, 6), (4, 2, 6), 3, (2, 3, 4, 2, 6))
    with pytest.raises(dataclasses.FrozenInstanceError):
        geom.batch = 3


# --------------------------------------------------------------------------- against the oracle


@pytest.mark.parametrize("method", FAST)
@BOUNDED
@given(case=adaptive_cases())
def test_max_matches_loop(method, case):
    out, idx = case.max(method)
    ref, ref_idx = case.max(ORACLE)
    assert out.shape == idx.shape == case.out_shape()
    assert out.dtype == case.x.dtype and idx.dtype == np.int64
    np.testing.assert_array_equal(out, ref)  # a max is exact
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(case.max(method, return_indices=False), ref)


@pytest.mark.parametrize("method", FAST)
@BOUNDED
@given(case=adaptive_cases())
def test_avg_matches_loop(method, case):
    out = case.avg(method)
    assert out.shape == case.out_shape() and out.dtype == case.x.dtype
    with np.errstate(invalid="ignore"):
        assert_close(out, case.avg(ORACLE), method=method)


@pytest.mark.parametrize("method", FAST)
@BOUNDED
@given(case=adaptive_cases(), seed=st.integers(0, 2**32 - 1))
def test_backward_matches_loop(method, case, seed):
    grad = np.random.default_rng(seed).standard_normal(case.out_shape()).astype(case.x.dtype)
    gx = case.avg_backward(grad, method)
    assert gx.shape == case.x.shape and gx.dtype == case.x.dtype
    assert_close(gx, case.avg_backward(grad, ORACLE), method=method)
    _, idx = case.max(ORACLE)
    gx = case.max_backward(grad, idx, method)
    assert gx.shape == case.x.shape and gx.dtype == case.x.dtype
    assert_close(gx, case.max_backward(grad, idx, ORACLE), method=method)


# --------------------------------------------------------------------------- against PyTorch


def _torch_output_size(case):
    # torch's 1D functions take no None entries (its 2D and 3D ones do: passed as they are)
    return case.out_size() if case.nd == 1 else case.output_size


@pytest.mark.torch
@pytest.mark.parametrize("method", IMPLEMENTING)
@BOUNDED
@given(case=adaptive_cases())
def test_forward_matches_pytorch(torch, method, case):
    F = torch.nn.functional
    x = torch.from_numpy(case.x)
    ref, ref_idx = getattr(F, f"adaptive_max_pool{case.nd}d")(x, _torch_output_size(case), True)
    out, idx = case.max(method)
    np.testing.assert_array_equal(out, ref.numpy())
    np.testing.assert_array_equal(idx, ref_idx.numpy())
    avg = case.avg(method)
    with np.errstate(invalid="ignore"):
        assert_close(avg, getattr(F, f"adaptive_avg_pool{case.nd}d")(x, _torch_output_size(case)).numpy(),
                     method=method)


@pytest.mark.torch
@pytest.mark.parametrize("method", IMPLEMENTING)
@BOUNDED
@given(case=adaptive_cases(dtype=np.float64, values="ties"), seed=st.integers(0, 2**32 - 1))
def test_backward_matches_torch_autograd(torch, method, case, seed):
    F = torch.nn.functional
    grad = np.random.default_rng(seed).standard_normal(case.out_shape())
    gt = torch.from_numpy(grad)
    for kind in ("avg", "max"):
        xt = torch.tensor(case.x, requires_grad=True)
        y = getattr(F, f"adaptive_{kind}_pool{case.nd}d")(xt, _torch_output_size(case))
        (y * gt).sum().backward()
        if kind == "avg":
            gx = case.avg_backward(grad, method)
        else:
            gx = case.max_backward(grad, case.max(method)[1], method)  # ties: torch's indices, checked above
        assert gx.dtype == np.float64
        assert_close(gx, xt.grad.numpy(), np.float64, method=method)


@pytest.mark.parametrize("method", IMPLEMENTING)
@FEW
@given(case=adaptive_cases(dtype=np.float64, values="distinct", max_batch=1, max_channels=2, max_size=4),
       seed=st.integers(0, 2**32 - 1))
def test_gradients_by_central_differences(method, case, seed):
    grad = np.random.default_rng(seed).standard_normal(case.out_shape())
    x = case.x.copy()
    avg = case.function("avg")
    numeric = central_difference(lambda: float((avg(x, case.output_size, method=method) * grad).sum()), x)
    # The loss is up to ~1e2 (inputs up to ~60): its rounding, 2e-16 * 1e2, over the step 2e-6 errs ~1e-8.
    tolerance = dict(rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(case.avg_backward(grad, method), numeric, **tolerance)
    # distinct values one apart: a 1e-6 step never changes a window's argmax
    max_ = case.function("max")
    numeric = central_difference(lambda: float((max_(x, case.output_size, method=method) * grad).sum()), x)
    np.testing.assert_allclose(case.max_backward(grad, case.max(method)[1], method), numeric, **tolerance)


# --------------------------------------------------------------------------- NaN, ties, -inf (PyTorch's rule)


@pytest.mark.parametrize("method", IMPLEMENTING)
def test_ties_keep_the_first_and_nan_wins_with_its_last_index(method):
    # windows [0, 3) and [2, 5): equal maxima report the first
    out, idx = fastconv.adaptive_max_pool1d(np.array([[1.0, 3, 3, 2, 3]]), 2, True, method=method)
    np.testing.assert_array_equal(out, [[3, 3]])
    np.testing.assert_array_equal(idx, [[1, 2]])
    out, idx = fastconv.adaptive_max_pool1d(np.array([[1.0, np.nan, 3, np.nan, 3]]), 1, True, method=method)
    assert np.isnan(out[0, 0]) and idx[0, 0] == 3
    out, idx = fastconv.adaptive_max_pool2d(np.array([[[np.nan, 2], [np.nan, 1]]]), 1, True, method=method)
    assert np.isnan(out[0, 0, 0]) and idx[0, 0, 0] == 2
    out, idx = fastconv.adaptive_max_pool3d(np.ones((1, 3, 2, 2)), 1, True, method=method)
    assert out[0, 0, 0, 0] == 1 and idx[0, 0, 0, 0] == 0
    out, idx = fastconv.adaptive_max_pool3d(np.full((1, 2, 3, 3), -np.inf), (1, 2, 1), True, method=method)
    assert (out == -np.inf).all()
    np.testing.assert_array_equal(idx.ravel(), [0, 3])  # each window's first element (rows [0, 2) and [1, 3))
    np.testing.assert_array_equal(fastconv.adaptive_avg_pool1d(np.array([[1.0, np.nan, 3, 4]]), 2, method=method),
                                  [[np.nan, 3.5]])


@pytest.mark.torch
def test_tie_rule_is_pytorchs(torch):
    """What the test above pins is what PyTorch does."""
    F = torch.nn.functional
    _, idx = F.adaptive_max_pool1d(torch.tensor([[[1.0, 3, 3, 2, 3]]]), 2, True)
    assert idx.tolist() == [[[1, 2]]]
    _, idx = F.adaptive_max_pool1d(torch.tensor([[[1.0, float("nan"), 3, float("nan"), 3]]]), 1, True)
    assert idx.tolist() == [[[3]]]
    _, idx = F.adaptive_max_pool3d(torch.full((1, 1, 2, 3, 3), -float("inf")), (1, 2, 1), True)
    assert idx.flatten().tolist() == [0, 3]


# --------------------------------------------------------------------------- layers


ADAPTIVE_LAYERS = [
    ("AdaptiveAvgPool1d", dict(output_size=4), (2, 3, 11)),
    ("AdaptiveAvgPool2d", dict(output_size=(None, 3)), (2, 3, 7, 8)),
    ("AdaptiveAvgPool2d", dict(output_size=1), (3, 5, 6)),
    ("AdaptiveAvgPool3d", dict(output_size=(2, 5, 3)), (2, 2, 5, 4, 7)),
    ("AdaptiveMaxPool1d", dict(output_size=5), (2, 3, 7)),
    ("AdaptiveMaxPool2d", dict(output_size=(3, 4), return_indices=True), (2, 3, 7, 9)),
    ("AdaptiveMaxPool3d", dict(output_size=(None, 2, 4)), (1, 2, 3, 5, 6)),
]


@pytest.mark.torch
@pytest.mark.parametrize("name, kwargs, shape", ADAPTIVE_LAYERS)
def test_layer_matches_torch(torch, name, kwargs, shape):
    layer = getattr(nn, name)(**kwargs)
    ref = getattr(torch.nn, name)(**kwargs)
    rng = np.random.default_rng(1)
    x = rng.permutation(int(np.prod(shape))).reshape(shape) / 7.0
    xt = torch.tensor(x, requires_grad=True)
    yt, y = ref(xt), layer(x)
    if kwargs.get("return_indices"):
        (yt, it), (y, i) = yt, y
        np.testing.assert_array_equal(i, it.numpy())
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    gy = rng.standard_normal(y.shape)
    yt.backward(torch.from_numpy(gy))
    np.testing.assert_allclose(layer.backward(gy), xt.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_layers_need_a_forward_and_keep_no_parameters():
    for layer in (nn.AdaptiveAvgPool2d(2), nn.AdaptiveMaxPool1d(3)):
        assert layer.params == {} and layer.grads == {}
        with pytest.raises(RuntimeError, match="backward called before forward"):
            layer.backward(np.ones((1, 1, 2, 2)))
    layer = nn.AdaptiveMaxPool3d(2, method="loop")
    assert layer(np.ones((1, 2, 3, 3))).shape == (1, 2, 2, 2)


@pytest.mark.torch
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_signatures_are_pytorchs(torch, nd):
    F = torch.nn.functional

    def described(sig, count=None):
        return [(p.name, p.kind, p.default) for p in list(sig.parameters.values())[:count]]

    avg = inspect.signature(getattr(fastconv, f"adaptive_avg_pool{nd}d"))
    assert described(avg, 2) == described(inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in ("input", "output_size")]))
    maxed = inspect.signature(getattr(fastconv, f"adaptive_max_pool{nd}d"))
    assert described(maxed, 3) == described(inspect.signature(getattr(F, f"adaptive_max_pool{nd}d_with_indices")))
    for sig in (avg, maxed):
        assert [p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY] == ["method"]
    for kind in ("Avg", "Max"):
        ours = inspect.signature(getattr(nn, f"Adaptive{kind}Pool{nd}d"))
        theirs = inspect.signature(getattr(torch.nn, f"Adaptive{kind}Pool{nd}d"))
        assert described(ours, len(theirs.parameters)) == described(theirs)


# --------------------------------------------------------------------------- arrays, dtypes, empty batches


@pytest.mark.parametrize("method", IMPLEMENTING)
def test_inputs_not_modified_and_any_layout(method):
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 8)).astype(np.float32)
    keep = x.copy()
    expected_max, expected_idx = fastconv.adaptive_max_pool2d(x, (4, 3), True, method=method)
    expected_avg = fastconv.adaptive_avg_pool2d(x, (4, 3), method=method)
    np.testing.assert_array_equal(x, keep)
    for other in (np.asfortranarray(x), x.transpose(0, 1, 3, 2).copy().transpose(0, 1, 3, 2)):
        out, idx = fastconv.adaptive_max_pool2d(other, (4, 3), True, method=method)
        np.testing.assert_array_equal(out, expected_max)
        np.testing.assert_array_equal(idx, expected_idx)
        np.testing.assert_array_equal(fastconv.adaptive_avg_pool2d(other, (4, 3), method=method), expected_avg)
    x.flags.writeable = False
    fastconv.adaptive_avg_pool2d(x, 2, method=method)
    grad = np.ones((2, 3, 4, 3), np.float32)
    grad.flags.writeable = False
    fastconv.adaptive_avg_pool2d_backward(grad, x.shape, method=method)
    fastconv.adaptive_max_pool2d_backward(grad, expected_idx, x.shape, method=method)
    np.testing.assert_array_equal(grad, 1)


@pytest.mark.parametrize("method", IMPLEMENTING)
def test_integer_and_bool_inputs_are_computed_in_floating_point(method):
    x = np.arange(24, dtype=np.int16).reshape(2, 12)
    out = fastconv.adaptive_avg_pool1d(x, 3, method=method)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[1.5, 5.5, 9.5], [13.5, 17.5, 21.5]])
    assert fastconv.adaptive_max_pool1d(x.astype(np.int64), 3, method=method).dtype == np.float64
    assert fastconv.adaptive_avg_pool1d(x > 5, 2, method=method).dtype == np.float32
    grad = fastconv.adaptive_avg_pool1d_backward(np.ones((2, 3), np.int32), (2, 12), method=method)
    assert grad.dtype == np.float64 and grad.sum() == 6


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("method", IMPLEMENTING)
@pytest.mark.parametrize("shape, output_size, pooled", [
    ((0, 2, 6, 6), 3, (0, 2, 3, 3)),
    ((2, 0, 5), (7,), (2, 0, 7)),
    ((0, 1, 2, 3, 4), (None, 1, 5), (0, 1, 2, 1, 5)),
])
def test_empty_batches_and_channels(shape, output_size, pooled, method, dtype):
    nd = len(shape) - 2
    x = np.zeros(shape, dtype)
    out, idx = getattr(fastconv, f"adaptive_max_pool{nd}d")(x, output_size, True, method=method)
    assert (out.shape, out.dtype, idx.shape, idx.dtype) == (pooled, dtype, pooled, np.int64)
    out = getattr(fastconv, f"adaptive_avg_pool{nd}d")(x, output_size, method=method)
    assert (out.shape, out.dtype) == (pooled, dtype)
    gx = getattr(fastconv, f"adaptive_max_pool{nd}d_backward")(np.zeros(pooled, dtype), idx, shape, method=method)
    assert (gx.shape, gx.dtype) == (shape, dtype)
    gx = getattr(fastconv, f"adaptive_avg_pool{nd}d_backward")(np.zeros(pooled, dtype), shape, method=method)
    assert (gx.shape, gx.dtype) == (shape, dtype)


@pytest.mark.torch
def test_empty_batch_shapes_are_pytorchs(torch):
    x = torch.zeros((0, 2, 6, 6))
    assert tuple(torch.nn.functional.adaptive_avg_pool2d(x, 3).shape) == (0, 2, 3, 3)
    assert tuple(torch.nn.functional.adaptive_max_pool3d(torch.zeros((0, 1, 2, 3, 4)), (None, 1, 5)).shape) == (
        0, 1, 2, 1, 5)


# --------------------------------------------------------------------------- dispatch and threads


@pytest.mark.parametrize("op", ADAPTIVE_OPS)
def test_auto_runs_direct_and_says_why(op, monkeypatch):
    monkeypatch.delenv("FASTCONV_METHOD", raising=False)
    geom, _ = adaptive_pool_problem("t", 2, (1, 64, 56, 56), 7)
    dispatch._rules.cache_clear()
    method, reason, source = dispatch.decide(op, geom, np.float32, threads=2)
    assert (method, source) == ("direct", "rules") and "adaptive pooling" in reason
    assert dispatch.candidates(op, geom) == ("direct",)


def test_measure_mode_and_forced_methods(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("FASTCONV_METHOD", raising=False)
    measure.clear_memory()
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 7, 6))
    try:
        ref = fastconv.adaptive_max_pool3d(x, (2, 3, 4), True, method=ORACLE)
        for got in (fastconv.adaptive_max_pool3d(x, (2, 3, 4), True, method="measure"),
                    fastconv.adaptive_max_pool3d(x, (2, 3, 4), True, method="measure")):  # timed, then remembered
            np.testing.assert_array_equal(got[0], ref[0])
            np.testing.assert_array_equal(got[1], ref[1])
        np.testing.assert_allclose(fastconv.adaptive_avg_pool3d_backward(np.ones((2, 3, 2, 3, 4)), x.shape,
                                                                         method="measure"),
                                   fastconv.adaptive_avg_pool3d_backward(np.ones((2, 3, 2, 3, 4)), x.shape,
                                                                         method=ORACLE), rtol=1e-12)
        geom, _ = adaptive_pool_problem("t", 3, x.shape, (2, 3, 4), np.float64)
        assert measure.remembered("adaptive_max_pool", geom, np.float64) == "direct"
    finally:
        measure.clear_memory()
    monkeypatch.setenv("FASTCONV_METHOD", ORACLE)
    geom, _ = adaptive_pool_problem("t", 1, (2, 9), 4)
    assert dispatch.decide("adaptive_avg_pool", geom, np.float32)[0] == ORACLE


@pytest.mark.parametrize("method", FAST)
def test_results_do_not_depend_on_thread_count(method):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 5, 23, 17)).astype(np.float32)
    x3 = rng.standard_normal((2, 3, 7, 9, 11)).astype(np.float32)
    grad = rng.standard_normal((3, 5, 6, 5)).astype(np.float32)
    results = {}
    for threads in (1, 2):
        with fastconv.num_threads(threads):
            out, idx = fastconv.adaptive_max_pool2d(x, (6, 5), True, method=method)
            results[threads] = (out, idx, fastconv.adaptive_avg_pool2d(x, (6, 5), method=method),
                                fastconv.adaptive_avg_pool2d_backward(grad, x.shape, method=method),
                                fastconv.adaptive_max_pool2d_backward(grad, idx, x.shape, method=method),
                                *fastconv.adaptive_max_pool3d(x3, (3, 4, 5), True, method=method),
                                fastconv.adaptive_avg_pool3d(x3, 1, method=method))
    for one, two in zip(results[1], results[2]):
        np.testing.assert_array_equal(one, two)  # bitwise


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.parametrize("method", FAST)
def test_large_problems_match_pytorch(torch, method):
    """ImageNet-sized heads: global pooling of a ResNet's last map, 7x7 from 13x13, a 3D volume."""
    F = torch.nn.functional
    rng = np.random.default_rng(4)
    for shape, output_size in [((8, 512, 7, 7), 1), ((4, 256, 13, 13), 7), ((2, 16, 20, 30, 30), (3, 7, 5))]:
        x = rng.standard_normal(shape).astype(np.float32)
        nd = len(shape) - 2
        xt = torch.from_numpy(x)
        out, idx = getattr(fastconv, f"adaptive_max_pool{nd}d")(x, output_size, True, method=method)
        ref, ref_idx = getattr(F, f"adaptive_max_pool{nd}d")(xt, output_size, True)
        np.testing.assert_array_equal(out, ref.numpy())
        np.testing.assert_array_equal(idx, ref_idx.numpy())
        assert_close(getattr(fastconv, f"adaptive_avg_pool{nd}d")(x, output_size, method=method),
                     getattr(F, f"adaptive_avg_pool{nd}d")(xt, output_size).numpy(), method=method)


# --------------------------------------------------------------------------- bad input


X2 = np.zeros((2, 3, 6, 5))


def _forward(name, x=X2, output_size=2, **kw):
    return lambda: getattr(fastconv, name)(x, output_size, **kw)


BAD_FORWARD = [
    (_forward("adaptive_avg_pool2d", output_size=0), ValueError, r"adaptive_avg_pool2d: output_size must be >= 1"),
    (_forward("adaptive_max_pool2d", output_size=(3, -1)), ValueError, r"adaptive_max_pool2d: output_size must be >= 1"),
    (_forward("adaptive_avg_pool2d", output_size=(2,)), ValueError,
     r"adaptive_avg_pool2d: output_size must be an int or a tuple of 2 ints or Nones .*got 1 values"),
    (_forward("adaptive_max_pool3d", np.zeros((1, 2, 3, 3)), (1, 2, 3, 4)), ValueError,
     r"adaptive_max_pool3d: output_size must be an int or a tuple of 3"),
    (_forward("adaptive_avg_pool1d", np.zeros((2, 5)), None), TypeError,
     r"adaptive_avg_pool1d: output_size must be an int or a tuple of 1 ints or Nones, got None"),
    (_forward("adaptive_avg_pool2d", output_size=2.5), TypeError, r"adaptive_avg_pool2d: output_size must be an integer"),
    (_forward("adaptive_max_pool2d", output_size=True), TypeError, r"adaptive_max_pool2d: output_size must be an integer"),
    (_forward("adaptive_avg_pool2d", output_size="2"), TypeError, r"adaptive_avg_pool2d: output_size must be an integer"),
    (_forward("adaptive_avg_pool2d", output_size=(2, "a")), TypeError, r"adaptive_avg_pool2d: output_size must be"),
    (_forward("adaptive_avg_pool2d", np.zeros((1, 2, 3, 4, 5))), ValueError,
     r"adaptive_avg_pool2d: input must be \(N, C, H, W\) or unbatched \(C, H, W\), got 5 dimensions"),
    (_forward("adaptive_max_pool1d", np.zeros(5)), ValueError, r"adaptive_max_pool1d: input must be \(N, C, L\)"),
    (_forward("adaptive_avg_pool3d", np.zeros((2, 3))), ValueError, r"adaptive_avg_pool3d: input must be \(N, C, D, H, W\)"),
    (_forward("adaptive_avg_pool2d", np.zeros((1, 2, 0, 4))), ValueError,
     r"adaptive_avg_pool2d: input must have at least one element along every spatial axis"),
    (_forward("adaptive_max_pool2d", X2.astype(np.complex64)), TypeError,
     r"adaptive_max_pool2d: input must hold real numbers.*complex"),
    (_forward("adaptive_avg_pool1d", np.full((2, 3), "a")), TypeError, r"adaptive_avg_pool1d: input must hold real numbers"),
    (_forward("adaptive_avg_pool2d", X2.astype(object)), TypeError, r"adaptive_avg_pool2d: input must hold real numbers"),
    (_forward("adaptive_max_pool3d", None), TypeError, r"adaptive_max_pool3d: input must be an array"),
    (_forward("adaptive_avg_pool2d", method="fastest"), ValueError,
     r"adaptive_avg_pool2d: method must be one of 'auto', 'measure'"),
    (_forward("adaptive_max_pool2d", method="vectorized"), ValueError,
     r"adaptive_max_pool2d: method='vectorized' does not compute this problem"),
]

G2 = np.ones((2, 3, 2, 2))
I2 = np.zeros((2, 3, 2, 2), np.int64)

BAD_BACKWARD = [
    (lambda: fastconv.adaptive_avg_pool2d_backward(G2, (2, 3, 6)), ValueError,
     r"adaptive_avg_pool2d_backward: grad_output must be the pooled output of an input of shape \(2, 3, 6\)"),
    (lambda: fastconv.adaptive_avg_pool2d_backward(G2, (2, 3, 4, 6, 6)), ValueError,
     r"adaptive_avg_pool2d_backward: input_shape must be \(N, C, H, W\) or unbatched \(C, H, W\)"),
    (lambda: fastconv.adaptive_avg_pool2d_backward(G2, (2, 3, 6.0, 5)), TypeError,
     r"adaptive_avg_pool2d_backward: input_shape must be a tuple of ints"),
    (lambda: fastconv.adaptive_avg_pool1d_backward(np.ones((2, 3)), 5), TypeError,
     r"adaptive_avg_pool1d_backward: input_shape must be a tuple of ints, got 5"),
    (lambda: fastconv.adaptive_avg_pool2d_backward(G2, (-2, 3, 6, 5)), ValueError,
     r"adaptive_avg_pool2d_backward: input_shape must not have negative sizes"),
    (lambda: fastconv.adaptive_avg_pool2d_backward(G2, (2, 3, 0, 5)), ValueError,
     r"adaptive_avg_pool2d_backward: input_shape must have at least one element along every spatial axis"),
    (lambda: fastconv.adaptive_avg_pool2d_backward(np.ones((2, 3, 2, 2, 2)), (2, 3, 6, 5)), ValueError,
     r"adaptive_avg_pool2d_backward: grad_output must be \(N, C, H_out, W_out\)"),
    (lambda: fastconv.adaptive_avg_pool2d_backward(np.ones((2, 4, 2, 2)), (2, 3, 6, 5)), ValueError,
     r"adaptive_avg_pool2d_backward: grad_output must be the pooled output of an input of shape \(2, 3, 6, 5\)"),
    (lambda: fastconv.adaptive_avg_pool3d_backward(np.ones((1, 2, 0, 2)), (1, 3, 3, 3)), ValueError,
     r"adaptive_avg_pool3d_backward: grad_output must have at least one output along every spatial axis"),
    (lambda: fastconv.adaptive_avg_pool2d_backward(G2.astype(np.complex128), (2, 3, 6, 5)), TypeError,
     r"adaptive_avg_pool2d_backward: grad_output must hold real numbers"),
    (lambda: fastconv.adaptive_avg_pool2d_backward(G2, (2, 3, 6, 5), method="fastest"), ValueError,
     r"adaptive_avg_pool2d_backward: method must be one of"),
    (lambda: fastconv.adaptive_max_pool2d_backward(G2, I2.astype(np.float64), (2, 3, 6, 5)), TypeError,
     r"adaptive_max_pool2d_backward: indices must be integers"),
    (lambda: fastconv.adaptive_max_pool2d_backward(G2, I2[..., :1], (2, 3, 6, 5)), ValueError,
     r"adaptive_max_pool2d_backward: indices must have grad_output's shape \(2, 3, 2, 2\)"),
    (lambda: fastconv.adaptive_max_pool2d_backward(G2, I2 + 30, (2, 3, 6, 5)), ValueError,
     r"adaptive_max_pool2d_backward: indices must lie in \[0, 30\)"),
    (lambda: fastconv.adaptive_max_pool1d_backward(np.ones((3, 2)), -np.ones((3, 2), np.int64), (3, 4)), ValueError,
     r"adaptive_max_pool1d_backward: indices must lie in \[0, 4\)"),
    (lambda: fastconv.adaptive_max_pool3d_backward(np.ones((1, 1, 1, 1)), None, (1, 2, 2, 2)), TypeError,
     r"adaptive_max_pool3d_backward: indices must be an array"),
    (lambda: fastconv.adaptive_max_pool2d_backward(G2, I2, (2, 3, 6, 5), method="img2col"), ValueError,
     r"adaptive_max_pool2d_backward: method='img2col' does not compute this problem"),
]


@pytest.mark.parametrize("call, exc, pattern", BAD_FORWARD + BAD_BACKWARD)
def test_bad_input_is_a_clear_error(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


@pytest.mark.parametrize("nd, shape, output_size", [
    (1, (2, 3, 12), 4), (2, (1, 4, 14, 14), 7), (2, (2, 3, 12, 8), (4, 2)), (3, (1, 2, 4, 6, 6), (2, 3, 2))])
def test_divisible_sizes_take_the_fixed_window_kernels_and_agree(nd, shape, output_size):
    """Input sizes that are multiples of the output's: ordinary pooling (k = s = n/o) computes it, the same
    values, indices and gradients as the adaptive definition, with ties and NaN."""
    from fastconv.strategies import _adaptive_kernels

    rng = np.random.default_rng(nd)
    x = rng.integers(-3, 4, shape).astype(np.float32)  # ties everywhere
    x.reshape(-1)[rng.choice(x.size, 3, replace=False)] = np.nan
    geom, _ = adaptive_pool_problem("t", nd, shape, output_size)
    assert _adaptive_kernels.as_fixed_pool(geom) is not None
    max_pool = getattr(fastconv, f"adaptive_max_pool{nd}d")
    avg_pool = getattr(fastconv, f"adaptive_avg_pool{nd}d")
    out, idx = max_pool(x, output_size, return_indices=True, method="direct")
    ref, ref_idx = max_pool(x, output_size, return_indices=True, method="loop")
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(idx, ref_idx)
    y = np.nan_to_num(x)
    assert_close(avg_pool(y, output_size, method="direct"), avg_pool(y, output_size, method="loop"), np.float32)
    g = rng.standard_normal(ref.shape).astype(np.float32)
    backward = getattr(fastconv, f"adaptive_avg_pool{nd}d_backward")
    assert_close(backward(g, shape, method="direct"), backward(g, shape, method="loop"), np.float32)
