"""The ways fastconv can compute an operation, one module each, with the same signatures.

``loop`` (pure Python, the oracle), ``vectorized`` (NumPy only), ``direct``
(Numba sliding-window kernels) and ``img2col`` (Numba im2col + BLAS GEMM).
Modules are imported on first use so that ``import fastconv`` stays cheap.
"""

from __future__ import annotations

import importlib

#: Every strategy name, in the order the docs and benchmarks list them.
NAMES = ("loop", "vectorized", "direct", "img2col")


_loaded: dict = {}


def get(name: str):
    """The strategy module called ``name`` (one of :data:`NAMES`)."""
    module = _loaded.get(name)
    if module is None:
        if name not in NAMES:
            raise ValueError(f"unknown strategy {name!r}; expected one of {', '.join(NAMES)}")
        module = _loaded[name] = importlib.import_module(f"{__name__}.{name}")
    return module
