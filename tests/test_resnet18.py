"""examples/resnet18.py: the fastconv network equals PyTorch's (batch norm folded vs applied) within the precision bound."""

import importlib.util
import pathlib

import numpy as np
import pytest

import fastconv

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "resnet18.py"


def _example():
    spec = importlib.util.spec_from_file_location("resnet18_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("level", ["high", "highest"])
def test_logits_equal_pytorch_eager(torch, level):
    example = _example()
    params = example.make_weights(0)
    x = np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32)
    chosen = {}
    with fastconv.precision(level):
        ours = example.forward(x, example.fold(params), chosen)
    with torch.no_grad():
        theirs = example.torch_model(params)(torch.from_numpy(x)).numpy()
    assert ours.shape == theirs.shape == (2, 1000)
    # 20 layers of float32 rounding either way (and Winograd's under "high"); measured ~1e-6
    assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max()
    assert ("winograd" in chosen.values()) == (level == "high" and fastconv._simd.AVAILABLE)
    assert len(chosen) == 20  # 17 convolutions + 3 downsamples


def test_folding_batch_norm_is_exact_in_float64():
    example = _example()
    params = example.make_weights(3)
    (w, bn), (wf, bf) = params["conv1"], example.fold(params, np.float64)["conv1"]
    x = np.random.default_rng(2).standard_normal((1, 3, 16, 16))
    y = fastconv.conv2d(x, w, stride=2, padding=3, method="loop")
    normed = (y - bn["mean"][:, None, None]) / np.sqrt(bn["var"][:, None, None] + example.EPS)
    expected = normed * bn["gamma"][:, None, None] + bn["beta"][:, None, None]
    np.testing.assert_allclose(fastconv.conv2d(x, wf, bf, stride=2, padding=3, method="loop"), expected, rtol=1e-12,
                               atol=1e-12)
