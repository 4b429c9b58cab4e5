"""Type aliases for the public signatures (annotations only; nothing here runs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["ArrayLike", "Array", "IntOrTuple", "Padding", "Gradients"]

#: What the functions return.
Array = np.ndarray
#: One value for every spatial axis, or one per axis.
IntOrTuple = Union[int, Sequence[int]]
#: An int, one per axis, one ``(lo, hi)`` pair per axis, 'valid' or 'same'.
Padding = Union[int, str, Sequence[int], Sequence[Sequence[int]]]
#: ``(grad_input, grad_weight, grad_bias)``, each None where ``output_mask`` said no.
Gradients = tuple[Union[np.ndarray, None], Union[np.ndarray, None], Union[np.ndarray, None]]
