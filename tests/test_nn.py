"""fastconv.nn layers: against PyTorch's layers with copied weights, central differences, training."""

import pathlib
import runpy
import sys

import numpy as np
import pytest

import fastconv.nn as nn

ROOT = pathlib.Path(__file__).resolve().parent.parent

LAYERS = [
    ("Conv2d", dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, groups=2), (2, 4, 9, 8)),
    ("Conv2d", dict(in_channels=3, out_channels=3, kernel_size=(3, 2), dilation=2, groups=3, bias=False), (2, 3, 9, 8)),
    ("Conv1d", dict(in_channels=2, out_channels=5, kernel_size=4, stride=3, padding=2), (3, 2, 17)),
    ("MaxPool2d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), (2, 3, 9, 8)),
    ("MaxPool1d", dict(kernel_size=2, dilation=2), (2, 3, 11)),
    ("AvgPool2d", dict(kernel_size=2, padding=1, count_include_pad=False), (2, 3, 7, 8)),
    ("AvgPool2d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, divisor_override=-5), (2, 3, 8, 8)),
    ("AvgPool1d", dict(kernel_size=3, stride=2, ceil_mode=True), (2, 3, 12)),
]


def _make(name, kwargs, dtype=np.float64):
    cls = getattr(nn, name)
    if name.startswith("Conv"):
        return cls(**kwargs, dtype=dtype, rng=0)
    return cls(**kwargs)


@pytest.mark.torch
@pytest.mark.parametrize("name, kwargs, shape", LAYERS)
def test_layer_matches_torch(torch, name, kwargs, shape):
    layer = _make(name, kwargs)
    ref = getattr(torch.nn, name)(**kwargs).double()
    if name.startswith("Conv"):
        with torch.no_grad():
            ref.weight.copy_(torch.from_numpy(layer.params["weight"]))
            if "bias" in layer.params:
                ref.bias.copy_(torch.from_numpy(layer.params["bias"]))
    rng = np.random.default_rng(1)
    x = rng.permutation(int(np.prod(shape))).reshape(shape) / 7.0  # distinct values: no argmax ties
    xt = torch.tensor(x, requires_grad=True)
    yt = ref(xt)
    y = layer(x)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    gy = rng.standard_normal(y.shape)
    yt.backward(torch.from_numpy(gy))
    gx = layer.backward(gy)
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    if name.startswith("Conv"):
        np.testing.assert_allclose(layer.grads["weight"], ref.weight.grad.numpy(), rtol=1e-10, atol=1e-12)
        if "bias" in layer.params:
            np.testing.assert_allclose(layer.grads["bias"], ref.bias.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_initialisation_is_pytorch_default_and_seedable():
    a = nn.Conv2d(8, 16, 3, rng=42)
    b = nn.Conv2d(8, 16, 3, rng=42)
    np.testing.assert_array_equal(a.params["weight"], b.params["weight"])
    bound = 1 / np.sqrt(8 * 9)
    w = a.params["weight"]
    assert w.dtype == np.float32 and np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert abs(w.std() - bound / np.sqrt(3)) < 0.1 * bound  # uniform(-b, b) has std b/sqrt(3)
    assert np.abs(a.params["bias"]).max() <= bound
    assert "bias" not in nn.Conv2d(8, 16, 3, bias=False).params


@pytest.mark.parametrize("name, kwargs, shape", LAYERS)
def test_layer_central_differences(name, kwargs, shape):
    layer = _make(name, kwargs)
    rng = np.random.default_rng(2)
    x = rng.permutation(int(np.prod(shape))).reshape(shape) / 7.0
    gy = rng.standard_normal(layer(x).shape)
    gx = layer.backward(gy)
    eps = 1e-6
    for index in [tuple(rng.integers(0, n) for n in shape) for _ in range(6)]:
        xp, xm = x.copy(), x.copy()
        xp[index] += eps
        xm[index] -= eps
        numeric = ((layer(xp) * gy).sum() - (layer(xm) * gy).sum()) / (2 * eps)
        assert abs(numeric - gx[index]) < 1e-6 * max(1, abs(numeric))
    # parameter gradients (conv layers): perturb each parameter in place, same loss
    layer(x)
    layer.backward(gy)
    grads = {k: g.copy() for k, g in layer.grads.items()}
    for key, param in layer.params.items():
        for index in [tuple(rng.integers(0, n) for n in param.shape) for _ in range(4)]:
            saved = param[index]
            param[index] = saved + eps
            up = (layer(x) * gy).sum()
            param[index] = saved - eps
            down = (layer(x) * gy).sum()
            param[index] = saved
            numeric = (up - down) / (2 * eps)
            assert abs(numeric - grads[key][index]) < 1e-6 * max(1, abs(numeric)), (key, index)


def test_backward_before_forward_is_a_clear_error():
    for layer in (nn.Conv2d(1, 1, 3), nn.MaxPool2d(2), nn.AvgPool1d(2)):
        with pytest.raises(RuntimeError, match="backward called before forward"):
            layer.backward(np.ones((1, 1, 2, 2)))


def test_bad_construction_is_a_clear_error():
    with pytest.raises(ValueError, match="Conv2d: groups=3 must divide in_channels=4"):
        nn.Conv2d(4, 6, 3, groups=3)
    with pytest.raises(ValueError, match="Conv1d: kernel_size must be a positive int"):
        nn.Conv1d(1, 1, 0)
    with pytest.raises(TypeError, match="Conv2d: dtype must be float32 or float64"):
        nn.Conv2d(1, 1, 3, dtype=np.int32)


def test_torch_tensors_are_accepted(torch):
    layer = nn.Conv2d(2, 3, 3, rng=0)
    t = torch.randn(1, 2, 6, 6)
    y = layer(t)
    assert isinstance(y, np.ndarray)
    np.testing.assert_allclose(y, layer(t.numpy()))
    # No copy: the layer saw the tensor's memory through DLPack.
    assert np.shares_memory(layer._saved, t.numpy())


def test_a_few_sgd_steps_lower_the_loss():
    rng = np.random.default_rng(0)
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import train_digits as td
    finally:
        sys.path.pop(0)
    layers = td.build(0)
    x = rng.standard_normal((64, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    first, _ = td.softmax_cross_entropy(td.forward(layers, x), y)
    td.train(layers, x, y, epochs=20, lr=0.05, momentum=0.9, batch=16, seed=0, log=lambda *_: None)
    last, _ = td.softmax_cross_entropy(td.forward(layers, x), y)
    assert last < 0.8 * first


def test_example_runs_in_short_mode(capsys):
    pytest.importorskip("sklearn")
    runpy.run_path(str(ROOT / "examples" / "train_digits.py"), run_name="not_main")["main"](
        ["--epochs", "2", "--limit", "600"])
    out = capsys.readouterr().out
    assert "epoch  2" in out and "test accuracy: " in out
    acc = float(out.rsplit("test accuracy: ", 1)[1].split()[0])
    assert acc > 0.7  # two epochs on a third of the data already learn most digits (0.86 when written)


# ---------------------------------------------------------------------------------------------- prepared weights

from fastconv import _prepared  # noqa: E402
from fastconv.strategies import fft as _fft  # noqa: E402
from fastconv.strategies import winograd as _winograd  # noqa: E402

import fastconv  # noqa: E402

PREPARED = [
    # (layer, kwargs, input shape, method, the function that derives the weights' form)
    (nn.Conv2d, dict(in_channels=16, out_channels=24, kernel_size=3, padding=1), (2, 16, 12, 12), "winograd",
     (_winograd, "transform_weights")),
    (nn.Conv2d, dict(in_channels=16, out_channels=24, kernel_size=4, stride=2, padding=1), (2, 16, 12, 12),
     "winograd", (_winograd, "transform_weights")),
    (nn.ConvTranspose2d, dict(in_channels=16, out_channels=24, kernel_size=4, stride=2, padding=1), (2, 16, 6, 6),
     "winograd", (_winograd, "transform_weights")),
    (nn.Conv2d, dict(in_channels=4, out_channels=6, kernel_size=9, padding=4), (1, 4, 20, 20), "fft",
     (_fft, "kernel_spectra")),
]


def _functional(layer, x):
    """The functional call on copies of the layer's parameters, under a fresh WeightCache of its own: the FFT
    strategy picks its form knowing whether the kernel spectra are kept (a layer's are), so this runs the same
    algorithm as the layer, which must then agree bit for bit."""
    fn = fastconv.conv_transpose2d if isinstance(layer, nn.ConvTranspose2d) else fastconv.conv2d
    with fastconv.WeightCache():
        return fn(x, layer.weight.copy(), layer.bias.copy(), method=layer.method, **layer._geometry())


@pytest.mark.parametrize("cls, kwargs, shape, method, deriving", PREPARED)
def test_layers_keep_prepared_weights_and_never_use_a_stale_one(cls, kwargs, shape, method, deriving, monkeypatch):
    """The transformed weights (Winograd) or spectra (FFT) are derived once while params are unchanged;
    an in-place optimiser step, a replaced array, a single changed bit all derive them again, and
    every result equals the functional call's on a copy of the weights, bit for bit."""
    module, name = deriving
    calls = []
    original = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(1) or original(*a, **k))
    layer = cls(**kwargs, rng=0, method=method)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)

    def run():  # the layer's result and how many times it derived the weights' form
        before = len(calls)
        y = layer(x)
        return y, len(calls) - before

    first, derived = run()
    assert derived >= 1
    again, count = run()
    np.testing.assert_array_equal(again, first)
    assert count == 0  # kept
    np.testing.assert_array_equal(first, _functional(layer, x))
    layer.params["weight"] -= 0.1 * np.sign(layer.params["weight"])  # an in-place optimiser step
    updated, count = run()
    assert count == derived
    np.testing.assert_array_equal(updated, _functional(layer, x))
    assert not np.array_equal(updated, first)
    flat = layer.params["weight"].reshape(-1).view(np.uint32)
    flat[7] ^= 1  # one bit of one weight
    y, count = run()
    assert count == derived
    np.testing.assert_array_equal(y, _functional(layer, x))
    layer.params["weight"] = layer.params["weight"] * 1.5  # a new array
    y, count = run()
    assert count == derived
    np.testing.assert_array_equal(y, _functional(layer, x))
    if method == "winograd":  # the backward's flipped phases (or space-to-depth weights) are kept too, and right
        gy = np.random.default_rng(2).standard_normal(first.shape).astype(np.float32)
        fn = fastconv.conv_transpose2d_backward if cls is nn.ConvTranspose2d else fastconv.conv2d_backward
        for _ in range(2):
            gx = layer.backward(gy)
            want = fn(gy, x, layer.weight.copy(), method=method, **layer._geometry())
            np.testing.assert_array_equal(gx, want[0])
            np.testing.assert_array_equal(layer.grads["weight"], want[1])


def test_a_store_is_bounded_and_shared_safely_by_threads():
    store = fastconv.WeightCache(max_entries=3)
    weights = [np.full(4, float(i), np.float32) for i in range(5)]
    for i, w in enumerate(weights):
        assert store.get(("k", i), w, lambda owned, w=w: w * 2)[0] == 2 * i
    assert len(store) == 3
    import threading

    w = np.arange(1000, dtype=np.float64)
    results = []

    def work():
        with store:
            for _ in range(200):
                results.append(_prepared.prepared("t", w, (), lambda owned: w + 1)[5])

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [6.0] * 1600
    assert _prepared._current.get() is None  # the context ends with the block, per thread


def test_direct_keeps_its_channels_last_packed_weights(monkeypatch):
    """Channels-last input on direct's register-tiled kernel: the packed weights are kept, never stale."""
    from fastconv.strategies import _simd_direct

    if not _simd_direct.supports(fastconv.explain("conv2d", (1, 32, 10, 10), (32, 32, 3, 3), padding=1).geometry):
        pytest.skip("the channels-last tile kernel does not run here (no explicit-SIMD layer)")
    calls = []
    original = _simd_direct.pack_weights
    monkeypatch.setattr(_simd_direct, "pack_weights", lambda *a: calls.append(1) or original(*a))
    layer = nn.Conv2d(32, 32, 3, padding=1, rng=0, method="direct")
    x = np.random.default_rng(1).standard_normal((1, 10, 10, 32)).astype(np.float32).transpose(0, 3, 1, 2)
    first = layer(x)
    assert len(calls) == 1 and np.array_equal(layer(x), first) and len(calls) == 1
    layer.params["weight"][0, 0, 0, 0] += 1.0
    y = layer(x)
    assert len(calls) == 2
    np.testing.assert_array_equal(y, _functional(layer, x))
