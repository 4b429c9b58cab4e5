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
