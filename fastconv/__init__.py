"""fastconv: convolution and pooling on NumPy arrays, from a readable loop to Numba JIT kernels.

The public API mirrors ``torch.nn.functional`` on NumPy arrays::

    y = fastconv.conv2d(x, weight, bias, stride=1, padding="same")
    p, idx = fastconv.max_pool2d(y, 2, return_indices=True)

Every function takes ``method=``: ``"auto"`` (the default), ``"measure"`` or a strategy
name from :data:`fastconv.METHODS` (the registry, :mod:`fastconv.strategies`).
"""

from .adaptive import (
    adaptive_avg_pool1d,
    adaptive_avg_pool1d_backward,
    adaptive_avg_pool2d,
    adaptive_avg_pool2d_backward,
    adaptive_avg_pool3d,
    adaptive_avg_pool3d_backward,
    adaptive_max_pool1d,
    adaptive_max_pool1d_backward,
    adaptive_max_pool2d,
    adaptive_max_pool2d_backward,
    adaptive_max_pool3d,
    adaptive_max_pool3d_backward,
)
from .columns import col2im, im2col
from .conv import conv1d, conv1d_backward, conv2d, conv2d_backward, conv3d, conv3d_backward
from . import nn
from . import strategies
from .dispatch import choose_method, methods
from .explain import Explanation, explain
from .geometry import AdaptivePoolGeometry, ConvGeometry, PoolGeometry, conv_output_size, pool_output_size, resolve_padding, same_padding
from .info import show_config
from .precision import get_precision, precision, set_precision
from .pool import (
    avg_pool1d,
    avg_pool1d_backward,
    avg_pool2d,
    avg_pool2d_backward,
    avg_pool3d,
    avg_pool3d_backward,
    max_pool1d,
    max_pool1d_backward,
    max_pool2d,
    max_pool2d_backward,
    max_pool3d,
    max_pool3d_backward,
)
from . import threads
from .transpose import (
    conv_transpose1d,
    conv_transpose1d_backward,
    conv_transpose2d,
    conv_transpose2d_backward,
    conv_transpose3d,
    conv_transpose3d_backward,
)
from .threads import get_num_threads, num_threads, set_num_threads, share_cores
from .warmup import warmup
from .workspace import get_workspace_limit, set_workspace_limit
from ._prepared import WeightCache

__version__ = "0.1.0.dev0"


def __getattr__(name):
    if name == "METHODS":  # read from the registry each time: strategies can be registered later
        return methods()
    raise AttributeError(f"module 'fastconv' has no attribute {name!r}")


__all__ = [
    "AdaptivePoolGeometry",
    "ConvGeometry",
    "Explanation",
    "METHODS",
    "PoolGeometry",
    "WeightCache",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool1d_backward",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool2d_backward",
    "adaptive_avg_pool3d",
    "adaptive_avg_pool3d_backward",
    "adaptive_max_pool1d",
    "adaptive_max_pool1d_backward",
    "adaptive_max_pool2d",
    "adaptive_max_pool2d_backward",
    "adaptive_max_pool3d",
    "adaptive_max_pool3d_backward",
    "avg_pool1d",
    "avg_pool1d_backward",
    "avg_pool2d",
    "avg_pool2d_backward",
    "avg_pool3d",
    "avg_pool3d_backward",
    "choose_method",
    "col2im",
    "conv1d",
    "conv1d_backward",
    "conv2d",
    "conv2d_backward",
    "conv3d",
    "conv3d_backward",
    "conv_output_size",
    "conv_transpose1d",
    "conv_transpose1d_backward",
    "conv_transpose2d",
    "conv_transpose2d_backward",
    "conv_transpose3d",
    "conv_transpose3d_backward",
    "explain",
    "get_num_threads",
    "get_precision",
    "get_workspace_limit",
    "im2col",
    "max_pool1d",
    "max_pool1d_backward",
    "max_pool2d",
    "max_pool2d_backward",
    "max_pool3d",
    "max_pool3d_backward",
    "methods",
    "nn",
    "num_threads",
    "pool_output_size",
    "precision",
    "resolve_padding",
    "same_padding",
    "set_num_threads",
    "set_precision",
    "set_workspace_limit",
    "share_cores",
    "show_config",
    "strategies",
    "threads",
    "warmup",
]
