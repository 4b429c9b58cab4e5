"""Writing a register tile's results into the output, in either memory layout (for :mod:`._simd_tiles`)."""
from .._jit import kernel
from .._simd import vstore_lanes


@kernel(parallel=False)
def store_tile(tile, rows, block, start, p0, p_end, n, g, cb, layout, out):
    """Copy the tile's positions ``start + r`` that lie in ``[p0, p_end)`` and inside the output into ``out``.

    ``tile[r*block + k]`` is output channel ``g*out_per_group + cb*block + k`` at flat position
    ``start + r`` = output ``(p // row_pitch, p % row_pitch)``; columns ``>= out_w`` and
    channels past the group's end are padding and dropped. ``out`` is the flat output, in
    ``(N, C_out, oH, oW)`` order, or ``(N, oH, oW, C_out)`` if ``layout.channels_last``.
    """
    out_h, out_w, row_pitch = layout.out_h, layout.out_w, layout.row_pitch
    c_out = layout.groups * layout.out_per_group
    co0 = g * layout.out_per_group + cb * block
    valid = min(block, layout.out_per_group - cb * block)
    plane = out_h * out_w
    for r in range(rows):
        p = start + r
        if p < p0 or p >= p_end:
            continue
        i = p // row_pitch
        j = p - i * row_pitch
        if j >= out_w:
            continue
        src = tile[r * block:r * block + valid]
        if layout.channels_last:
            dst = out[((n * out_h + i) * out_w + j) * c_out + co0:][:valid]
            for k in range(valid):
                dst[k] = src[k]
        else:
            at = ((n * c_out + co0) * out_h + i) * out_w + j
            for k in range(valid):
                out[at + k * plane] = src[k]


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
