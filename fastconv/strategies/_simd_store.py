"""Writing a register tile's vectors into the output, in either memory layout (for :mod:`._simd_tiles`)."""
from .._jit import kernel
from .._simd import vstore_lanes


@kernel(parallel=False)
def put_last(out, v, lanes, p, p0, p_end, n, co, count, layout):
    """Store the vector ``v`` of output channels ``co .. co + min(lanes, count) - 1`` at flat position ``p``.

    ``out`` is the flat ``(N, oH, oW, C_out)`` output. Nothing is written for a position outside
    ``[p0, p_end)`` (another tile's), a column ``>= out_w`` (padding) or ``count <= 0``.
    """
    if p < p0 or p >= p_end or count <= 0:
        return
    i = p // layout.row_pitch
    j = p - i * layout.row_pitch
    if j >= layout.out_w:
        return
    c_out = layout.groups * layout.out_per_group
    vstore_lanes(out, ((n * layout.out_h + i) * layout.out_w + j) * c_out + co, v, 0, min(lanes, count))


@kernel(parallel=False)
def put_planar(out, v, lanes, q, p0, p_end, row_base, layout):
    """Store the vector ``v`` of flat positions ``q .. q + lanes - 1`` of one output channel.

    ``row_base`` is the index in the flat ``(N, C_out, oH, oW)`` output ``out`` of the channel's
    ``(0, 0)``. Only positions in ``[p0, p_end)`` (the work item's) and columns ``< out_w`` are
    written: one masked store per output row the vector reaches.
    """
    pitch, out_w = layout.row_pitch, layout.out_w
    lo = max(p0 - q, 0)
    hi = min(p_end - q, lanes)
    while lo < hi:
        p = q + lo
        i = p // pitch
        j = p - i * pitch
        seg = min(hi, lo + pitch - j)
        end = min(seg, lo + out_w - j)
        if end > lo:
            vstore_lanes(out, row_base + i * out_w + j - lo, v, lo, end)
        lo = seg
