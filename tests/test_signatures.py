"""The public functions take PyTorch's parameters: same names, order and defaults as torch.nn.functional.

Code written for ``torch.nn.functional`` should run unchanged, positional or keyword arguments
alike. fastconv may only add keyword-only parameters after PyTorch's (:data:`FASTCONV_EXTRAS`).
"""

import inspect

import pytest

import fastconv

#: Keyword-only parameters fastconv adds after PyTorch's.
FASTCONV_EXTRAS = {"method", "out"}


# torch.nn.functional.conv1d, conv2d, avg_pool1d and avg_pool2d are builtins without a signature:
# these stubs write down the signatures their docstrings document (the docstring's first line,
# ``name(params) -> Tensor``; test_documented_signatures_are_torchs checks the text is still there).
def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1): ...
def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1): ...
def avg_pool1d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True): ...
def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None): ...
def conv3d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1): ...
def conv_transpose1d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1): ...
def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1): ...
def conv_transpose3d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1): ...
def avg_pool3d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None): ...


DOCUMENTED = {f.__name__: f for f in (conv1d, conv2d, conv3d, avg_pool1d, avg_pool2d, avg_pool3d, conv_transpose1d,
                                      conv_transpose2d, conv_transpose3d)}
PAIRS = ["conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d",
         "avg_pool3d"]
#: The nn layers and what they take besides PyTorch's constructor parameters (keyword-only).
LAYERS = ["Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d",
          "AvgPool3d"]
LAYER_EXTRAS = {"rng", "method"}


def torch_signature(F, name):
    """PyTorch's signature of ``torch.nn.functional.<name>``."""
    if name in DOCUMENTED:
        return inspect.signature(DOCUMENTED[name])
    if name.startswith("max_pool"):
        # F.max_poolNd is boolean_dispatch(...) with a (*args, **kwargs) signature: it calls
        # max_poolNd_with_indices or _max_poolNd on return_indices, which take its parameters.
        return inspect.signature(getattr(F, f"{name}_with_indices"))
    return inspect.signature(getattr(F, name))


def _described(sig):
    """``[(name, kind, default)]`` of a signature (annotations left out)."""
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


@pytest.mark.torch
@pytest.mark.parametrize("name", PAIRS)
def test_parameters_match_pytorch(torch, name):
    ours = list(inspect.signature(getattr(fastconv, name)).parameters.values())
    theirs = _described(torch_signature(torch.nn.functional, name))
    head = ours[: len(theirs)]
    assert _described(inspect.Signature(head)) == theirs, (
        f"fastconv.{name}{inspect.signature(getattr(fastconv, name))} does not start with "
        f"torch.nn.functional.{name}'s parameters {[p[0] for p in theirs]} (same names, order, defaults)"
    )
    extras = ours[len(theirs):]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY and p.name in FASTCONV_EXTRAS for p in extras), (
        f"fastconv.{name}: parameters after PyTorch's must be keyword-only and among {sorted(FASTCONV_EXTRAS)}, "
        f"got {[str(p) for p in extras]}"
    )


@pytest.mark.torch
@pytest.mark.parametrize("name", sorted(DOCUMENTED) + ["max_pool1d", "max_pool2d", "max_pool3d"])
def test_documented_signatures_are_torchs(torch, name):
    # The stub (or, for max pooling, the dispatch target's) signature is the one torch documents.
    params = torch_signature(torch.nn.functional, name).parameters.values()
    expected = f"{name}({', '.join(_plain(p) for p in params)})"
    documented = getattr(torch.nn.functional, name).__doc__
    assert expected in documented, f"{expected} is not in the docstring: {documented.strip().splitlines()[0]}"


def _plain(p):
    """A parameter as a docstring writes it: ``name`` or ``name=default``, no annotation."""
    return p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}"


@pytest.mark.torch
@pytest.mark.parametrize("name", LAYERS)
def test_layer_constructors_match_pytorch(torch, name):
    ours = list(inspect.signature(getattr(fastconv.nn, name)).parameters.values())
    theirs = _described(inspect.signature(getattr(torch.nn, name)))
    assert _described(inspect.Signature(ours[: len(theirs)])) == theirs, (
        f"fastconv.nn.{name}{inspect.signature(getattr(fastconv.nn, name))} does not start with torch.nn.{name}'s "
        f"parameters {[p[0] for p in theirs]}")
    extras = ours[len(theirs):]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY and p.name in LAYER_EXTRAS for p in extras), extras
