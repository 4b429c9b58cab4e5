"""Explicit SIMD for the kernels: an LLVM vector type as a Numba type, and its intrinsics.

The low-level room of fastconv: kernels import these functions and never build IR
themselves. A value of type ``Vec(dtype, width)`` is an SSA value of LLVM's
``<width x float>`` (or ``double``); kept in named local variables, a tile of them stays
in vector registers, which LLVM's auto-vectoriser will not arrange by itself.

Intrinsics (callable only inside a compiled kernel; ``a`` is a 1-D C-contiguous float32 or
float64 array, ``i`` a flat element index, ``width`` a compile-time constant)::

    vzero(a, width)          all-zero vector of a's dtype
    vload(a, i, width)       a[i : i + width]                  (unaligned load)
    vstore(a, i, v)          a[i : i + width] = v
    vbroadcast(a, i, width)  a[i] in every lane                (vbroadcastss/sd)
    vsplat(x, width)         the scalar x in every lane
    vfma(a, b, c)            a * b + c, one rounding           (vfmadd231ps/pd)
    vload_masked(a, i, n, width)   lanes < n from a[i + lane], others 0
    vstore_masked(a, i, v, n)      a[i + lane] = v[lane] for lanes < n
    vstore_lanes(a, i, v, lo, hi)  a[i + lane] = v[lane] for lo <= lane < hi
    vlane(v, k)              lane k as a scalar
    vsum(v)                  sum of the lanes (lane order)

Vector loads and stores bypass Numba's indexing, so under ``NUMBA_BOUNDSCHECK=1`` every one
of them checks its own range (``0 <= i`` and ``i + width <= a.size``, the masked ones
``i + n``) and raises ``IndexError`` like Numba's own checks.

The vector width is a property of the CPU Numba compiles for (:data:`LANES`): 16 float32 /
8 float64 lanes with AVX-512, 8 / 4 with AVX2 + FMA, none otherwise (:data:`AVAILABLE` is
then False and the kernels built on this layer are not used). ``FASTCONV_SIMD=avx2`` asks for
256-bit vectors on an AVX-512 machine, ``FASTCONV_SIMD=off`` disables the layer.
"""
from __future__ import annotations

import functools
import os
import warnings

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

__all__ = ["AVAILABLE", "ISA", "LANES", "REASON", "Vec", "vadd", "vbroadcast", "vfma", "vlane", "vload", "vload_masked",
           "vmul", "vsplat", "vstore", "vstore_lanes", "vstore_masked", "vsub", "vsum", "vzero"]


class Vec(types.Type):
    """Numba type of an LLVM vector of ``width`` lanes of ``dtype`` (float32 or float64)."""

    def __init__(self, dtype, width):
        self.dtype = dtype
        self.width = int(width)
        super().__init__(name=f"Vec({dtype}, {self.width})")


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.width))


_FLOATS = (types.float32, types.float64)


def _float_array(a):
    return isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" and a.dtype in _FLOATS


def _literal_width(width):
    """The int a width argument holds if it is a compile-time literal, else None."""
    if isinstance(width, types.IntegerLiteral):
        return int(width.literal_value)
    return None


def _suffix(vec):
    return f"v{vec.width}f{32 if vec.dtype == types.float32 else 64}"


def _pointer(context, builder, array_type, array, index, count):
    """Pointer to element ``index`` of a 1-D array, range-checked for ``count`` elements under bounds checking."""
    arr = context.make_array(array_type)(context, builder, array)
    if numba.config.BOUNDSCHECK:
        size = builder.extract_value(arr.shape, 0)
        one = ir.Constant(index.type, 1)
        last = builder.sub(builder.add(index, count), one)
        # an empty range (count == 0) is always fine; otherwise both ends must be inside
        nonempty = builder.icmp_signed(">", count, ir.Constant(count.type, 0))
        with builder.if_then(nonempty, likely=True):
            cgutils.do_boundscheck(context, builder, index, size)
            cgutils.do_boundscheck(context, builder, last, size)
    return builder.gep(arr.data, [index])


def _vector_pointer(builder, pointer, vector_type):
    return builder.bitcast(pointer, vector_type.as_pointer())


def _index(context, builder, index_type, index):
    return context.cast(builder, index, index_type, types.intp)


@intrinsic
def vzero(typingctx, a, width):
    """All-zero vector of ``a``'s dtype with ``width`` lanes."""
    w = _literal_width(width)
    if w is None or not _float_array(a):
        return None
    vec = Vec(a.dtype, w)

    def codegen(context, builder, signature, args):
        return ir.Constant(context.get_value_type(vec), None)

    return vec(a, width), codegen


@intrinsic
def vload(typingctx, a, i, width):
    """``a[i : i + width]`` as a vector (no alignment assumed)."""
    w = _literal_width(width)
    if w is None or not _float_array(a) or not isinstance(i, types.Integer):
        return None
    vec = Vec(a.dtype, w)

    def codegen(context, builder, signature, args):
        vt = context.get_value_type(vec)
        index = _index(context, builder, signature.args[1], args[1])
        ptr = _pointer(context, builder, signature.args[0], args[0], index, ir.Constant(index.type, w))
        return builder.load(_vector_pointer(builder, ptr, vt), align=a.dtype.bitwidth // 8)

    return vec(a, i, width), codegen


@intrinsic
def vstore(typingctx, a, i, v):
    """``a[i : i + width] = v``."""
    if not _float_array(a) or not isinstance(i, types.Integer) or not isinstance(v, Vec) or v.dtype != a.dtype:
        return None

    def codegen(context, builder, signature, args):
        vt = context.get_value_type(v)
        index = _index(context, builder, signature.args[1], args[1])
        ptr = _pointer(context, builder, signature.args[0], args[0], index, ir.Constant(index.type, v.width))
        builder.store(args[2], _vector_pointer(builder, ptr, vt), align=a.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.none(a, i, v), codegen


def _splat(builder, vt, scalar):
    zero = ir.Constant(ir.IntType(32), 0)
    one_lane = builder.insert_element(ir.Constant(vt, ir.Undefined), scalar, zero)
    return builder.shuffle_vector(one_lane, ir.Constant(vt, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), vt.count), [0] * vt.count))


@intrinsic
def vbroadcast(typingctx, a, i, width):
    """``a[i]`` in every lane (one ``vbroadcastss``/``vbroadcastsd`` from memory)."""
    w = _literal_width(width)
    if w is None or not _float_array(a) or not isinstance(i, types.Integer):
        return None
    vec = Vec(a.dtype, w)

    def codegen(context, builder, signature, args):
        vt = context.get_value_type(vec)
        index = _index(context, builder, signature.args[1], args[1])
        ptr = _pointer(context, builder, signature.args[0], args[0], index, ir.Constant(index.type, 1))
        return _splat(builder, vt, builder.load(ptr))

    return vec(a, i, width), codegen


@intrinsic
def vsplat(typingctx, x, width):
    """The float ``x`` in every lane."""
    w = _literal_width(width)
    if w is None or x not in _FLOATS:
        return None
    vec = Vec(x, w)

    def codegen(context, builder, signature, args):
        return _splat(builder, context.get_value_type(vec), args[0])

    return vec(x, width), codegen


@intrinsic
def vfma(typingctx, a, b, c):
    """``a * b + c`` lane by lane with one rounding (``llvm.fma``: ``vfmadd231ps``/``pd``)."""
    if not (isinstance(a, Vec) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        vt = context.get_value_type(a)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt, vt, vt]),
                                            f"llvm.fma.{_suffix(a)}")
        return builder.call(fn, list(args))

    return a(a, b, c), codegen


def _lanewise(op: str, doc: str):
    """An intrinsic ``f(a, b)`` doing ``op`` (an IR builder method: fadd, fsub, fmul) lane by lane."""

    def typer(typingctx, a, b):
        if not (isinstance(a, Vec) and a == b):
            return None

        def codegen(context, builder, signature, args):
            return getattr(builder, op)(args[0], args[1])

        return a(a, b), codegen

    typer.__doc__ = doc
    return intrinsic(typer)


vadd = _lanewise("fadd", "``a + b`` lane by lane.")
vsub = _lanewise("fsub", "``a - b`` lane by lane.")
vmul = _lanewise("fmul", "``a * b`` lane by lane.")


def _lane_mask(builder, count, width):
    lanes = ir.Constant(ir.VectorType(count.type, width), list(range(width)))
    limit = builder.insert_element(ir.Constant(ir.VectorType(count.type, width), ir.Undefined), count,
                                   ir.Constant(ir.IntType(32), 0))
    limit = builder.shuffle_vector(limit, ir.Constant(limit.type, ir.Undefined),
                                   ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width))
    return builder.icmp_signed("<", lanes, limit)


@intrinsic
def vload_masked(typingctx, a, i, n, width):
    """Lanes ``k < n`` from ``a[i + k]``, the others 0; nothing past ``a[i + n - 1]`` is read."""
    w = _literal_width(width)
    if w is None or not _float_array(a) or not isinstance(i, types.Integer) or not isinstance(n, types.Integer):
        return None
    vec = Vec(a.dtype, w)

    def codegen(context, builder, signature, args):
        vt = context.get_value_type(vec)
        index = _index(context, builder, signature.args[1], args[1])
        count = _index(context, builder, signature.args[2], args[2])
        ptr = _pointer(context, builder, signature.args[0], args[0], index, count)
        ptr = _vector_pointer(builder, ptr, vt)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vt, [ptr.type, ir.IntType(32), ir.VectorType(ir.IntType(1), w), vt]),
            f"llvm.masked.load.{_suffix(vec)}.p0")
        return builder.call(fn, [ptr, ir.Constant(ir.IntType(32), a.dtype.bitwidth // 8),
                                 _lane_mask(builder, count, w), ir.Constant(vt, None)])

    return vec(a, i, n, width), codegen


@intrinsic
def vstore_masked(typingctx, a, i, v, n):
    """``a[i + k] = v[k]`` for lanes ``k < n``; nothing else is written."""
    if (not _float_array(a) or not isinstance(i, types.Integer) or not isinstance(v, Vec) or v.dtype != a.dtype
            or not isinstance(n, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        vt = context.get_value_type(v)
        index = _index(context, builder, signature.args[1], args[1])
        count = _index(context, builder, signature.args[3], args[3])
        ptr = _pointer(context, builder, signature.args[0], args[0], index, count)
        ptr = _vector_pointer(builder, ptr, vt)
        fn = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(ir.VoidType(), [vt, ptr.type, ir.IntType(32), ir.VectorType(ir.IntType(1), v.width)]),
            f"llvm.masked.store.{_suffix(v)}.p0")
        builder.call(fn, [args[2], ptr, ir.Constant(ir.IntType(32), a.dtype.bitwidth // 8),
                          _lane_mask(builder, count, v.width)])
        return context.get_dummy_value()

    return types.none(a, i, v, n), codegen


def _range_mask(builder, lo, hi, width):
    """``lo <= lane < hi`` as an <width x i1> mask."""
    lanes = ir.Constant(ir.VectorType(lo.type, width), list(range(width)))

    def splat(value):
        one = builder.insert_element(ir.Constant(ir.VectorType(value.type, width), ir.Undefined), value,
                                     ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(one, ir.Constant(one.type, ir.Undefined),
                                      ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width))

    return builder.and_(builder.icmp_signed(">=", lanes, splat(lo)), builder.icmp_signed("<", lanes, splat(hi)))


@intrinsic
def vstore_lanes(typingctx, a, i, v, lo, hi):
    """``a[i + k] = v[k]`` for lanes ``lo <= k < hi`` only (``i`` itself may lie before the array)."""
    if (not _float_array(a) or not isinstance(i, types.Integer) or not isinstance(v, Vec) or v.dtype != a.dtype
            or not isinstance(lo, types.Integer) or not isinstance(hi, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        vt = context.get_value_type(v)
        index = _index(context, builder, signature.args[1], args[1])
        first = _index(context, builder, signature.args[3], args[3])
        end = _index(context, builder, signature.args[4], args[4])
        arr = context.make_array(a)(context, builder, args[0])
        if numba.config.BOUNDSCHECK:
            _pointer(context, builder, a, args[0], builder.add(index, first), builder.sub(end, first))
        ptr = _vector_pointer(builder, builder.gep(arr.data, [index]), vt)
        align = a.dtype.bitwidth // 8
        # every lane: a plain store (AVX2's masked store, vmaskmovps, is microcoded on AMD's cores)
        whole = builder.and_(builder.icmp_signed("<=", first, ir.Constant(first.type, 0)),
                             builder.icmp_signed(">=", end, ir.Constant(end.type, v.width)))
        with builder.if_else(whole, likely=True) as (plain, masked):
            with plain:
                builder.store(args[2], ptr, align=align)
            with masked:
                fn = cgutils.get_or_insert_function(
                    builder.module,
                    ir.FunctionType(ir.VoidType(), [vt, ptr.type, ir.IntType(32), ir.VectorType(ir.IntType(1), v.width)]),
                    f"llvm.masked.store.{_suffix(v)}.p0")
                builder.call(fn, [args[2], ptr, ir.Constant(ir.IntType(32), align),
                                  _range_mask(builder, first, end, v.width)])
        return context.get_dummy_value()

    return types.none(a, i, v, lo, hi), codegen


@intrinsic
def vlane(typingctx, v, k):
    """Lane ``k`` of ``v`` as a scalar."""
    if not isinstance(v, Vec) or not isinstance(k, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        index = context.cast(builder, args[1], signature.args[1], types.int32)
        return builder.extract_element(args[0], index)

    return v.dtype(v, k), codegen


@intrinsic
def vsum(typingctx, v):
    """The sum of ``v``'s lanes, added in lane order (deterministic)."""
    if not isinstance(v, Vec):
        return None

    def codegen(context, builder, signature, args):
        total = builder.extract_element(args[0], ir.Constant(ir.IntType(32), 0))
        for k in range(1, v.width):
            total = builder.fadd(total, builder.extract_element(args[0], ir.Constant(ir.IntType(32), k)))
        return total

    return v.dtype(v), codegen


# --------------------------------------------------------------------------- the machine

_AVX512_CPUS = frozenset({
    "skylake-avx512", "cascadelake", "cooperlake", "cannonlake", "icelake-client", "icelake-server", "tigerlake",
    "rocketlake", "sapphirerapids", "emeraldrapids", "graniterapids", "graniterapids-d", "znver4", "znver5",
    "x86-64-v4", "knl", "knm"})
_AVX2_CPUS = frozenset({
    "haswell", "broadwell", "skylake", "alderlake", "raptorlake", "meteorlake", "arrowlake", "lunarlake",
    "gracemont", "znver1", "znver2", "znver3", "x86-64-v3", "bdver4"})


@functools.lru_cache(maxsize=1)
def _target_features() -> tuple[str, frozenset]:
    """(cpu name or "", enabled features) of the CPU Numba compiles for."""
    import llvmlite.binding as llvm

    # as Numba does (numba.core.codegen): NUMBA_CPU_FEATURES if set, else the host's features, even
    # when NUMBA_CPU_NAME names another CPU; an empty NUMBA_CPU_FEATURES leaves them to the name
    name = numba.config.CPU_NAME
    features = numba.config.CPU_FEATURES
    if features is None:
        host = llvm.get_host_cpu_features()
        return name or "", frozenset(f for f, enabled in host.items() if enabled)
    if features.strip():  # "+avx2,+fma,-avx512f,..."
        return name or "", frozenset(f.strip()[1:] for f in features.split(",") if f.strip().startswith("+"))
    name = name or llvm.get_host_cpu_name()
    return name, frozenset({"avx512f", "avx2", "fma"} if name in _AVX512_CPUS
                           else {"avx2", "fma"} if name in _AVX2_CPUS else ())


def _target_isa() -> tuple[str, str]:
    """(isa, reason): the vector ISA of the CPU Numba compiles for: 'avx512', 'avx2' or 'none'."""
    import llvmlite.binding as llvm

    choice = os.environ.get("FASTCONV_SIMD", "").strip().lower()
    if choice in ("0", "off", "no", "none", "false"):
        return "none", "FASTCONV_SIMD=off"
    name, on = _target_features()
    if "avx512f" in on and "fma" in on and choice != "avx2":
        return "avx512", "AVX-512 (16 float32 / 8 float64 lanes)"
    if "avx2" in on and "fma" in on:
        return "avx2", "AVX2 + FMA (8 float32 / 4 float64 lanes)" + (" by FASTCONV_SIMD=avx2" if choice else "")
    return "none", f"the CPU Numba compiles for ({name or llvm.get_host_cpu_name()}) has neither AVX-512 nor AVX2 + FMA"


#: Vector registers of the CPU Numba compiles for (32 with AVX-512, else 16), whichever vectors the
#: layer uses: portable kernels whose register blocks LLVM allocates size them by it.
REGISTERS = 32 if "avx512f" in _target_features()[1] else 16

ISA, REASON = _target_isa()

#: Lanes per vector, by dtype name, for the CPU Numba compiles for (0: no vector layer).
LANES = {"avx512": {"float32": 16, "float64": 8}, "avx2": {"float32": 8, "float64": 4}}.get(
    ISA, {"float32": 0, "float64": 0})

AVAILABLE = ISA != "none"


def disable(reason: str) -> None:
    """Turn the layer off for this process (a kernel built on it failed to compile), with one warning."""
    global AVAILABLE, REASON
    if AVAILABLE:
        AVAILABLE = False
        REASON = reason
        warnings.warn(f"fastconv: the explicit-SIMD kernels are off ({reason}); using the portable kernels",
                      RuntimeWarning, stacklevel=3)
