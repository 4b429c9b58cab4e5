"""The benchmark shape set: the problems fastconv's speed is judged on.

Carried from the team's BENCHMARKS.md (fp32, NCHW). A :class:`Problem` builds
its inputs and knows its FLOP / byte counts, so the benchmark suite, the
``fastconv bench`` report and the dispatcher's tuning script share one table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Problem", "SHAPES", "QUICK", "BACKWARD", "get", "parse_problem"]


@dataclass(frozen=True)
class Problem:
    """One benchmark problem: an op and its geometry.

    ``op`` is a public function's name (``"conv1d"``, ``"conv2d"``, ``"conv3d"``,
    ``"max_pool2d"``, ``"avg_pool3d"``, ``"adaptive_avg_pool2d"``, ...). ``spatial`` is ``(L,)``,
    ``(H, W)`` or ``(D, H, W)`` and ``kernel`` the kernel size; for pooling ``out_channels`` is
    unused; adaptive pooling has its output size in ``extra["output_size"]`` (an int) instead of a
    kernel.
    """

    name: str
    op: str
    batch: int
    in_channels: int
    spatial: tuple
    out_channels: int
    kernel: tuple
    stride: int = 1
    padding: int = 0
    groups: int = 1
    description: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def nd(self) -> int:
        return len(self.spatial)

    @property
    def is_conv(self) -> bool:
        return self.op.startswith("conv")

    @property
    def is_adaptive(self) -> bool:
        """Adaptive pooling: the output size is given, the windows follow from it."""
        return self.op.startswith("adaptive")

    @property
    def is_transpose(self) -> bool:
        """A transposed convolution: weight ``(C_in, C_out/groups, k...)``, output upsampled."""
        return self.op.startswith("conv_transpose")

    @property
    def input_shape(self) -> tuple:
        return (self.batch, self.in_channels) + tuple(self.spatial)

    @property
    def weight_shape(self) -> tuple:
        if self.is_transpose:
            return (self.in_channels, self.out_channels // self.groups) + tuple(self.kernel)
        return (self.out_channels, self.in_channels // self.groups) + tuple(self.kernel)

    def output_spatial(self) -> tuple:
        from .geometry import conv_output_size, pool_output_size

        if self.is_transpose:
            return tuple((n - 1) * self.stride - 2 * self.padding + k for n, k in zip(self.spatial, self.kernel))
        if self.is_conv:
            return tuple(conv_output_size(n, k, self.stride, self.padding) for n, k in zip(self.spatial, self.kernel))
        if self.is_adaptive:
            return (self.extra["output_size"],) * self.nd
        return tuple(pool_output_size(n, k, self.stride, self.padding) for n, k in zip(self.spatial, self.kernel))

    def flops(self) -> int:
        """``2 * N * C_out * (C_in/groups) * prod(k) * prod(out)`` for convolutions (``prod(in)`` for transposed
        ones: every input value times the kernel); window reads for pooling."""
        out = int(np.prod(self.spatial if self.is_transpose else self.output_spatial()))
        k = int(np.prod(self.kernel))
        if self.is_conv:
            return 2 * self.batch * self.out_channels * (self.in_channels // self.groups) * k * out
        if self.is_adaptive:  # every input element read about once
            return self.batch * self.in_channels * max(int(np.prod(self.spatial)), out)
        return self.batch * self.in_channels * k * out

    def bytes_moved(self, itemsize: int = 4) -> int:
        """Bytes read (the input) plus written (the output): what a memory-bound op must move."""
        out_channels = self.out_channels if self.is_conv else self.in_channels
        out = self.batch * out_channels * int(np.prod(self.output_spatial()))
        return itemsize * (int(np.prod(self.input_shape)) + out)

    def arrays(self, dtype=np.float32, seed: int = 0):
        """Random inputs: ``(x, weight, bias)`` for convolutions, ``(x,)`` for pooling."""
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(self.input_shape, dtype=np.float64).astype(dtype)
        if not self.is_conv:
            return (x,)
        w = (rng.standard_normal(self.weight_shape) / np.sqrt(np.prod(self.weight_shape[1:]))).astype(dtype)
        return x, w, rng.standard_normal(self.out_channels).astype(dtype)

    def kwargs(self) -> dict:
        """Keyword arguments of the fastconv call (and, under the same names, of torch's)."""
        if self.is_conv:
            return dict(stride=self.stride, padding=self.padding, groups=self.groups)
        if self.is_adaptive:
            return dict(output_size=self.extra["output_size"])
        return dict(kernel_size=self.kernel, stride=self.stride, padding=self.padding)

    def describe(self) -> str:
        if self.is_conv:
            dims = "x".join(map(str, self.spatial))
            k = "x".join(map(str, self.kernel))
            g = f", groups={self.groups}" if self.groups > 1 else ""
            return (f"{self.op} N={self.batch} {self.in_channels}x{dims} -> {self.out_channels}, "
                    f"k={k} s={self.stride} p={self.padding}{g}")
        dims = "x".join(map(str, self.spatial))
        if self.is_adaptive:
            return f"{self.op} N={self.batch} C={self.in_channels} {dims} -> {self.extra['output_size']}"
        return f"{self.op} N={self.batch} C={self.in_channels} {dims}, k={self.kernel[0]} s={self.stride} p={self.padding}"


def _conv3d(name, n, c, d, h, w, co, k, s, p, description=""):
    return Problem(name, "conv3d", n, c, (d, h, w), co, (k, k, k), s, p, 1, description)


def _transpose(name, op, n, c, spatial, co, k, s, p, description=""):
    return Problem(name, op, n, c, spatial, co, (k,) * len(spatial), s, p, 1, description)


def _pool3d(name, op, n, c, d, h, w, k, s, p, description=""):
    return Problem(name, op, n, c, (d, h, w), c, (k, k, k), s, p, 1, description)


def _conv2d(name, n, c, h, w, co, kh, kw, s, p, groups=1, description=""):
    return Problem(name, "conv2d", n, c, (h, w), co, (kh, kw), s, p, groups, description)


def _conv1d(name, n, c, length, co, k, s, p, description=""):
    return Problem(name, "conv1d", n, c, (length,), co, (k,), s, p, 1, description)


def _pool(name, op, n, c, h, w, k, s, p, description=""):
    return Problem(name, op, n, c, (h, w), c, (k, k), s, p, 1, description)


def _pool1d(name, op, n, c, length, k, s, p, description=""):
    return Problem(name, op, n, c, (length,), c, (k,), s, p, 1, description)


def _adaptive(name, op, n, c, h, w, out, description=""):
    return Problem(name, op, n, c, (h, w), c, (1, 1), 1, 0, 1, description, extra={"output_size": out})


_ALL = [
    _conv2d("resnet_conv1", 1, 3, 224, 224, 64, 7, 7, 2, 3, description="ResNet stem"),
    _conv2d("resnet_3x3_56", 1, 64, 56, 56, 64, 3, 3, 1, 1, description="ResNet stage 1"),
    _conv2d("resnet_3x3_28", 1, 128, 28, 28, 128, 3, 3, 1, 1, description="ResNet stage 2"),
    _conv2d("resnet_3x3_14", 1, 256, 14, 14, 256, 3, 3, 1, 1, description="ResNet stage 3"),
    _conv2d("resnet_3x3_7", 1, 512, 7, 7, 512, 3, 3, 1, 1, description="ResNet stage 4"),
    _conv2d("batch8_3x3_56", 8, 64, 56, 56, 64, 3, 3, 1, 1, description="training-size batch"),
    _conv2d("vgg_3x3_224", 1, 64, 224, 224, 64, 3, 3, 1, 1, description="VGG stage 1, large map"),
    _conv2d("pointwise_expand", 1, 64, 56, 56, 256, 1, 1, 1, 0, description="1x1 expand"),
    _conv2d("pointwise_stride2", 1, 256, 56, 56, 128, 1, 1, 2, 0, description="strided 1x1"),
    _conv2d("depthwise_112", 1, 32, 112, 112, 32, 3, 3, 1, 1, groups=32, description="MobileNet depthwise"),
    _conv2d("lenet_conv1", 32, 1, 28, 28, 8, 5, 5, 1, 0, description="MNIST-size first layer"),
    _conv2d("lenet_conv2", 32, 8, 12, 12, 16, 5, 5, 1, 0, description="MNIST-size second layer"),
    _conv2d("image_filter", 1, 1, 512, 512, 1, 3, 3, 1, 1, description="single-channel image filter"),
    _conv2d("filter_31x31", 1, 1, 1024, 1024, 1, 31, 31, 1, 15, description="large-kernel image filter ('same')"),
    _conv2d("multichannel_15x15", 1, 16, 256, 256, 16, 15, 15, 1, 7, description="16 -> 16 channels, 15x15 kernels"),
    _conv1d("audio_frontend", 8, 1, 16000, 128, 80, 4, 0, description="raw-waveform first layer"),
    _conv1d("audio_3", 8, 64, 4000, 64, 3, 1, 1, description="1D ResNet block"),
    _conv1d("long1d_k511", 1, 1, 200000, 1, 511, 1, 255, description="long FIR filter ('same')"),
    _pool("resnet_maxpool", "max_pool2d", 1, 64, 112, 112, 3, 2, 1, description="ResNet stem pooling"),
    _pool("lenet_maxpool", "max_pool2d", 32, 8, 24, 24, 2, 2, 0, description="LeNet pooling"),
    _pool("global_avgpool", "avg_pool2d", 1, 2048, 7, 7, 7, 7, 0, description="global average pooling"),
    _pool("avgpool_3x3", "avg_pool2d", 8, 256, 28, 28, 3, 1, 1, description="3x3 average pooling"),
    _pool("global_avgpool_b32", "avg_pool2d", 32, 512, 7, 7, 7, 7, 0, description="global average pooling, batch 32"),
    _adaptive("adaptive_avg_7x7", "adaptive_avg_pool2d", 1, 512, 14, 14, 7, description="adaptive average to 7x7"),
    _pool1d("maxpool1d_8000", "max_pool1d", 8, 128, 8000, 4, 4, 0, description="1D max pooling, long rows"),
    _pool1d("maxpool1d_3", "max_pool1d", 4, 256, 2000, 3, 3, 0, description="1D max pooling, window 3"),
    _conv3d("unet3d_3x3x3", 1, 32, 64, 64, 64, 32, 3, 1, 1, description="3D U-Net stage (CT, microscopy)"),
    _conv3d("c3d_video", 1, 64, 16, 56, 56, 128, 3, 1, 1, description="video (C3D)"),
    _conv3d("ct_stem_3d", 1, 1, 128, 128, 128, 16, 5, 2, 2, description="CT volume first layer"),
    _pool3d("maxpool3d", "max_pool3d", 1, 64, 32, 56, 56, 2, 2, 0, description="3D pooling"),
    _transpose("dcgan_up", "conv_transpose2d", 16, 256, (8, 8), 128, 4, 2, 1, description="GAN generator"),
    _transpose("unet_up", "conv_transpose2d", 1, 128, (64, 64), 64, 2, 2, 0, description="U-Net up-convolution"),
    _transpose("upsample1d", "conv_transpose1d", 8, 64, (1000,), 32, 4, 2, 1, description="1D decoder"),
]

#: Every problem of the shape set, by name, in the order of BENCHMARKS.md.
SHAPES = {p.name: p for p in _ALL}

#: A subset that runs quickly (``fastconv bench --quick``).
QUICK = ("resnet_3x3_28", "depthwise_112", "lenet_conv1", "image_filter", "audio_3", "resnet_maxpool", "lenet_maxpool")

#: The shapes backward is judged on.
BACKWARD = ("resnet_3x3_28", "batch8_3x3_56", "lenet_conv1", "lenet_conv2")


def get(name: str) -> Problem:
    """The problem called ``name``; an unknown name is a ValueError listing the known ones."""
    try:
        return SHAPES[name]
    except KeyError:
        raise ValueError(f"unknown shape {name!r}; known shapes: {', '.join(SHAPES)}") from None


def parse_problem(spec: str) -> Problem:
    """A user's own problem from the command line.

    ``conv2d:N,C_in,H,W,C_out,kH,kW,stride,pad[,groups]``,
    ``conv1d:N,C_in,L,C_out,k,stride,pad``,
    ``max_pool2d:N,C,H,W,k,stride,pad`` or ``avg_pool2d:N,C,H,W,k,stride,pad``.
    """
    op, _, numbers = spec.partition(":")
    try:
        v = [int(t) for t in numbers.split(",")]
    except ValueError:
        raise ValueError(f"shape {spec!r}: expected op:int,int,...") from None
    counts = {"conv2d": (9, 10), "conv1d": (7,), "max_pool2d": (7,), "avg_pool2d": (7,)}
    if op not in counts:
        raise ValueError(f"shape {spec!r}: op must be one of {', '.join(counts)}")
    if len(v) not in counts[op]:
        raise ValueError(f"shape {spec!r}: {op} takes {' or '.join(map(str, counts[op]))} numbers, got {len(v)}")
    if min(v) < 0 or (op != "conv2d" and min(v[:-1]) < 1):
        raise ValueError(f"shape {spec!r}: sizes must be positive")
    if op == "conv2d":
        problem = _conv2d(spec, *v)
    elif op == "conv1d":
        problem = _conv1d(spec, *v)
    else:
        problem = _pool(spec, op, *v)
    from .explain import explain

    try:  # the library's own checks: stride >= 1, channels divisible by groups, a non-empty output, ...
        if problem.is_conv:
            explain(op, problem.input_shape, problem.weight_shape, **problem.kwargs())
        else:
            explain(op, problem.input_shape, **problem.kwargs())
    except (ValueError, TypeError) as exc:
        raise ValueError(f"shape {spec!r}: {exc}") from None
    return problem
