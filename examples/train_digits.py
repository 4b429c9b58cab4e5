"""Train a LeNet-style CNN on scikit-learn's 8x8 digits with fastconv layers and plain-NumPy SGD.

    python examples/train_digits.py                  # ~15 epochs, prints 'test accuracy: 0.9xx'
    python examples/train_digits.py --compare-torch  # also trains the same network in PyTorch

The network: conv(1->8, 3x3, pad 1) - ReLU - maxpool 2 - conv(8->16, 3x3, pad 1) - ReLU -
maxpool 2 - dense(64->10), softmax cross-entropy, SGD with momentum. The data ship with
scikit-learn (no download): 1797 images, split 80/20 with a fixed seed.
"""

from __future__ import annotations

import argparse
import sys
import time

import numba
import numpy as np

import fastconv
import fastconv.nn as nn


def load_digits(seed: int = 0):
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        sys.exit("train_digits.py needs scikit-learn for its bundled digits: pip install 'fastconv[examples]'")
    data = sk_load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    x = (x - x.mean()) / x.std()
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    split = int(0.8 * len(x))
    train, test = order[:split], order[split:]
    return x[train], y[train], x[test], y[test]


class Dense(nn.Layer):
    """A fully connected layer (not part of fastconv: the example's own, as a user would write it)."""

    def __init__(self, n_in, n_out, rng):
        super().__init__()
        bound = 1 / np.sqrt(n_in)
        self.params = {"weight": rng.uniform(-bound, bound, (n_out, n_in)).astype(np.float32),
                       "bias": rng.uniform(-bound, bound, n_out).astype(np.float32)}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def forward(self, x):
        self._saved = x
        return x.reshape(len(x), -1) @ self.params["weight"].T + self.params["bias"]

    def backward(self, g):
        x = self._need_forward()
        self.grads["weight"][...] = g.T @ x.reshape(len(x), -1)
        self.grads["bias"][...] = g.sum(0)
        return (g @ self.params["weight"]).reshape(x.shape)


class ReLU(nn.Layer):
    def forward(self, x):
        self._saved = x > 0
        return x * self._saved

    def backward(self, g):
        return g * self._need_forward()


def build(seed: int = 0):
    rng = np.random.default_rng(seed)
    return [
        nn.Conv2d(1, 8, 3, padding=1, rng=rng), ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, rng=rng), ReLU(), nn.MaxPool2d(2),
        Dense(16 * 2 * 2, 10, rng),
    ]


def softmax_cross_entropy(logits, labels):
    """Mean loss and its gradient with respect to the logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    loss = -np.log(p[np.arange(len(labels)), labels] + 1e-12).mean()
    p[np.arange(len(labels)), labels] -= 1
    return float(loss), (p / len(labels)).astype(np.float32)


def forward(layers, x):
    for layer in layers:
        x = layer.forward(x)
    return x


def train(layers, x_train, y_train, epochs, lr, momentum, batch, seed, log=print):
    velocity = [{k: np.zeros_like(v) for k, v in layer.params.items()} for layer in layers]
    rng = np.random.default_rng(seed)
    epoch_times = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        order = rng.permutation(len(x_train))
        total = 0.0
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            loss, g = softmax_cross_entropy(forward(layers, x_train[idx]), y_train[idx])
            total += loss * len(idx)
            for layer in reversed(layers):
                g = layer.backward(g)
            for layer, vel in zip(layers, velocity):
                for k in layer.params:
                    vel[k] *= momentum
                    vel[k] -= lr * layer.grads[k]
                    layer.params[k] += vel[k]
        epoch_times.append(time.perf_counter() - t0)
        log(f"epoch {epoch + 1:2d}  loss {total / len(order):.4f}  ({epoch_times[-1]:.2f} s)")
    return epoch_times


def accuracy(layers, x, y):
    return float((forward(layers, x).argmax(axis=1) == y).mean())


def train_torch(layers, x_train, y_train, x_test, y_test, epochs, lr, momentum, batch, seed, threads):
    """The same network, initial weights and batch order in PyTorch; returns (epoch times, accuracy)."""
    import torch

    torch.set_num_threads(threads)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(64, 10),
    )
    with torch.no_grad():
        for ours, theirs in zip([layers[0], layers[3], layers[6]], [net[0], net[3], net[7]]):
            theirs.weight.copy_(torch.from_numpy(ours.params["weight"]))
            theirs.bias.copy_(torch.from_numpy(ours.params["bias"]))
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    rng = np.random.default_rng(seed)
    times = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        order = rng.permutation(len(x_train))
        for start in range(0, len(order), batch):
            idx = torch.from_numpy(order[start:start + batch])
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    with torch.no_grad():
        acc = float((net(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    return times, acc


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=min(2, numba.config.NUMBA_NUM_THREADS),
                        help="threads for fastconv (its own GEMMs included) and PyTorch (default: 2, or fewer if Numba has fewer)")
    parser.add_argument("--limit", type=int, default=None, help="use only this many training images (quick runs)")
    parser.add_argument("--compare-torch", action="store_true", help="also train the same network in PyTorch")
    args = parser.parse_args(argv)

    x_train, y_train, x_test, y_test = load_digits(args.seed)
    if args.limit:
        x_train, y_train = x_train[: args.limit], y_train[: args.limit]
    layers = build(args.seed)
    initial = [{k: v.copy() for k, v in layer.params.items()} for layer in layers]
    with fastconv.num_threads(args.threads):
        forward(layers, x_train[:2])  # compile the kernels before timing epochs
        times = train(layers, x_train, y_train, args.epochs, args.lr, args.momentum, args.batch, args.seed)
        acc = accuracy(layers, x_test, y_test)
    median = float(np.median(times))
    print(f"fastconv: median epoch {median:.3f} s")
    if args.compare_torch:
        fresh = build(args.seed)
        for layer, params in zip(fresh, initial):
            for k in layer.params:
                layer.params[k][...] = params[k]
        torch_times, torch_acc = train_torch(fresh, x_train, y_train, x_test, y_test, args.epochs, args.lr,
                                             args.momentum, args.batch, args.seed, args.threads)
        t = float(np.median(torch_times))
        print(f"pytorch:  median epoch {t:.3f} s, test accuracy {torch_acc:.3f} "
              f"(fastconv/pytorch epoch time ratio {median / t:.2f})")
    print(f"test accuracy: {acc:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
