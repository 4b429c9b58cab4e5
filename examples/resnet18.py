"""ResNet-18 inference on fastconv, against the same network in PyTorch eager.

    pip install -e . torch==2.13.0
    python examples/resnet18.py                  # batch 1 and 8, time per image, outputs compared
    python examples/resnet18.py --precision highest --repeat 20

The network of He et al. (2016), 224x224 input, with random weights (a seeded generator; the
same values in both). Batch normalisation is folded into the convolutions, as inference engines
do: ``w' = w * gamma / sqrt(var + eps)``, ``b' = beta - mean * gamma / sqrt(var + eps)``. The
fastconv network is its functions on NumPy arrays (``conv2d``, ``max_pool2d``,
``adaptive_avg_pool2d``; ReLU and the residual additions in place with NumPy); the PyTorch one is
``nn.Conv2d`` + ``nn.BatchNorm2d`` (eval mode) modules run eagerly, unfolded. fastconv's calls run
inside a ``fastconv.WeightCache``, as an inference engine keeps prepacked weights: Winograd's
transformed kernels are derived once, then reused while the weights are unchanged (checked on
every call; ``--no-weight-cache`` derives them on every call).

Printed: milliseconds per image at each batch size for both, their ratio, what ``auto`` chose
for each layer, and the largest difference between the two networks' logits relative to the
logits' scale (fastconv's precision setting decides whether the 3x3 layers may use Winograd;
"highest" keeps every layer on exact-order kernels).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import fastconv

#: (output channels, stride of the first block) per stage; two BasicBlocks each.
STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))
EPS = 1e-5


def _bn(rng, channels):
    """Random batch-norm statistics and affine parameters (running mean/var as after training)."""
    return dict(gamma=rng.uniform(0.5, 1.5, channels), beta=rng.normal(0, 0.1, channels),
                mean=rng.normal(0, 0.1, channels), var=rng.uniform(0.5, 1.5, channels))


def _conv(rng, c_out, c_in, k):
    """He-initialised weights."""
    return rng.normal(0, np.sqrt(2.0 / (c_in * k * k)), (c_out, c_in, k, k))


def make_weights(seed: int = 0) -> dict:
    """ResNet-18's parameters, float64, unfolded: ``{name: (weight, bn)}`` plus the classifier."""
    rng = np.random.default_rng(seed)
    params = {"conv1": (_conv(rng, 64, 3, 7), _bn(rng, 64))}
    c_in = 64
    for s, (c, stride) in enumerate(STAGES, 1):
        for b in range(2):
            first = b == 0
            cin = c_in if first else c
            params[f"layer{s}.{b}.conv1"] = (_conv(rng, c, cin, 3), _bn(rng, c))
            params[f"layer{s}.{b}.conv2"] = (_conv(rng, c, c, 3), _bn(rng, c))
            if first and (stride != 1 or cin != c):
                params[f"layer{s}.{b}.downsample"] = (_conv(rng, c, cin, 1), _bn(rng, c))
        c_in = c
    params["fc"] = (rng.normal(0, 1 / np.sqrt(512), (1000, 512)), rng.normal(0, 0.01, 1000))
    return params


def fold(params: dict, dtype=np.float32) -> dict:
    """Batch norm folded into each convolution: ``{name: (weight, bias)}`` in ``dtype``."""
    folded = {}
    for name, (w, bn) in params.items():
        if name == "fc":
            folded[name] = (w.astype(dtype), bn.astype(dtype))
            continue
        scale = bn["gamma"] / np.sqrt(bn["var"] + EPS)
        folded[name] = ((w * scale[:, None, None, None]).astype(dtype), (bn["beta"] - bn["mean"] * scale).astype(dtype))
    return folded


def forward(x: np.ndarray, folded: dict, chosen: dict | None = None) -> np.ndarray:
    """ResNet-18 on fastconv: ``x`` (N, 3, 224, 224) -> logits (N, 1000). ``chosen`` collects each layer's strategy."""

    def conv(name, y, stride, padding, relu):
        w, b = folded[name]
        if chosen is not None and name not in chosen:
            chosen[name] = fastconv.explain("conv2d", y.shape, w.shape, stride=stride, padding=padding).method
        out = fastconv.conv2d(y, w, b, stride=stride, padding=padding)
        return np.maximum(out, 0, out=out) if relu else out

    y = conv("conv1", x, 2, 3, True)
    y = fastconv.max_pool2d(y, 3, 2, 1)
    for s, (_, stride) in enumerate(STAGES, 1):
        for b in range(2):
            prefix = f"layer{s}.{b}"
            step = stride if b == 0 else 1
            h = conv(f"{prefix}.conv1", y, step, 1, True)
            h = conv(f"{prefix}.conv2", h, 1, 1, False)
            shortcut = conv(f"{prefix}.downsample", y, step, 0, False) if f"{prefix}.downsample" in folded else y
            h += shortcut
            y = np.maximum(h, 0, out=h)
    pooled = fastconv.adaptive_avg_pool2d(y, 1).reshape(y.shape[0], -1)
    w, b = folded["fc"]
    return pooled @ w.T + b


def torch_model(params: dict):
    """The same network as PyTorch modules (eval mode: batch norm uses the running statistics)."""
    import torch
    from torch import nn

    def conv_bn(name, stride, padding):
        w, bn = params[name]
        conv = nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], stride=stride, padding=padding, bias=False)
        conv.weight.data = torch.tensor(w, dtype=torch.float32)
        norm = nn.BatchNorm2d(w.shape[0], eps=EPS)
        for key, attr in (("gamma", "weight"), ("beta", "bias")):
            getattr(norm, attr).data = torch.tensor(bn[key], dtype=torch.float32)
        norm.running_mean.data = torch.tensor(bn["mean"], dtype=torch.float32)
        norm.running_var.data = torch.tensor(bn["var"], dtype=torch.float32)
        return nn.Sequential(conv, norm)

    class Block(nn.Module):
        def __init__(self, prefix, stride):
            super().__init__()
            self.a = conv_bn(f"{prefix}.conv1", stride, 1)
            self.b = conv_bn(f"{prefix}.conv2", 1, 1)
            self.down = conv_bn(f"{prefix}.downsample", stride, 0) if f"{prefix}.downsample" in params else None

        def forward(self, x):
            h = torch.relu(self.a(x))
            h = self.b(h)
            return torch.relu(h + (x if self.down is None else self.down(x)))

    layers = [conv_bn("conv1", 2, 3), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    for s, (_, stride) in enumerate(STAGES, 1):
        layers += [Block(f"layer{s}.0", stride), Block(f"layer{s}.1", 1)]
    fc = nn.Linear(512, 1000)
    fc.weight.data = torch.tensor(params["fc"][0], dtype=torch.float32)
    fc.bias.data = torch.tensor(params["fc"][1], dtype=torch.float32)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc]
    return nn.Sequential(*layers).eval()


def _ms_per_image(run, batch, repeat):
    for _ in range(3):  # untimed: compile / load kernels, warm caches and thread pools
        run()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3 / batch


def main(argv=None):
    parser = argparse.ArgumentParser(description="ResNet-18 inference: fastconv against PyTorch eager")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per batch size (median)")
    parser.add_argument("--precision", choices=("high", "highest"), default=None,
                        help="fastconv's precision setting (default: the current one, 'high' unless set)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-weight-cache", action="store_true",
                        help="derive the strategies' weight forms (Winograd transforms) on every call")
    args = parser.parse_args(argv)
    if args.precision:
        fastconv.set_precision(args.precision)
    params = make_weights(args.seed)
    folded = fold(params)
    # about two forms per convolution (20 of them) under one cache
    cache = None if args.no_weight_cache else fastconv.WeightCache(max_entries=64)

    def run(x):
        if cache is None:
            return forward(x, folded)
        with cache:
            return forward(x, folded)

    try:
        import torch

        torch.set_num_threads(fastconv.get_num_threads())
        model = torch_model(params)
    except ImportError:
        torch = model = None
    rng = np.random.default_rng(args.seed + 1)
    print(f"ResNet-18, 224x224, float32, {fastconv.get_num_threads()} threads, precision {fastconv.get_precision()!r}, "
          f"weight cache {'off' if cache is None else 'on'}")
    chosen: dict = {}
    for batch in args.batch:
        x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
        ours = forward(x, folded, chosen)
        line = f"  batch {batch}: fastconv {_ms_per_image(lambda: run(x), batch, args.repeat):7.2f} ms/image"
        if model is not None:
            with torch.no_grad():
                xt = torch.from_numpy(x)
                theirs = model(xt).numpy()
                torch_ms = _ms_per_image(lambda: model(xt), batch, args.repeat)
            ours_ms = _ms_per_image(lambda: run(x), batch, args.repeat)  # again, after torch's block
            error = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
            line = (f"  batch {batch}: fastconv {ours_ms:7.2f} ms/image   PyTorch eager {torch_ms:7.2f} ms/image   "
                    f"{torch_ms / ours_ms:4.2f}x   logits differ by {error:.1e} of their scale")
        print(line)
    methods: dict = {}
    for name, method in chosen.items():
        methods.setdefault(method, []).append(name)
    for method, names in methods.items():
        print(f"  {method}: {len(names)} layers ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")


if __name__ == "__main__":
    main()
