"""fastconv: convolution and pooling on NumPy arrays, from a readable loop to Numba JIT kernels.

The public API mirrors ``torch.nn.functional`` on NumPy arrays::

    y = fastconv.conv2d(x, weight, bias, stride=1, padding="same")
    p, idx = fastconv.max_pool2d(y, 2, return_indices=True)

Every function takes ``method=``: ``"auto"`` (the default) or a strategy name
from :data:`fastconv.METHODS`.
"""

from .columns import col2im, im2col
from .conv import conv1d, conv1d_backward, conv2d, conv2d_backward
from . import nn
from .dispatch import METHODS, choose_method, explain, warmup
from .geometry import ConvGeometry, PoolGeometry, conv_output_size, pool_output_size, resolve_padding, same_padding
from .pool import (
    avg_pool1d,
    avg_pool1d_backward,
    avg_pool2d,
    avg_pool2d_backward,
    max_pool1d,
    max_pool1d_backward,
    max_pool2d,
    max_pool2d_backward,
)
from . import threads
from .threads import get_num_threads, num_threads, set_num_threads, share_cores
from .workspace import get_workspace_limit, set_workspace_limit

__version__ = "0.1.0.dev0"

__all__ = [
    "METHODS",
    "ConvGeometry",
    "PoolGeometry",
    "avg_pool1d",
    "choose_method",
    "col2im",
    "im2col",
    "explain",
    "nn",
    "avg_pool1d_backward",
    "avg_pool2d",
    "avg_pool2d_backward",
    "conv1d",
    "conv1d_backward",
    "conv2d",
    "conv2d_backward",
    "conv_output_size",
    "max_pool1d",
    "max_pool1d_backward",
    "max_pool2d",
    "max_pool2d_backward",
    "num_threads",
    "get_num_threads",
    "get_workspace_limit",
    "set_workspace_limit",
    "warmup",
    "set_num_threads",
    "share_cores",
    "threads",
    "pool_output_size",
    "resolve_padding",
    "same_padding",
]
