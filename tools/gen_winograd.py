"""Write ``fastconv/strategies/_winograd_kernels.py``: the fused Winograd convolution kernels.

Like ``tools/gen_simd_tiles.py``: a register tile must be named local variables, the vector
width and tile shape must be constants in each kernel's own bytecode (Numba's disk cache is
keyed by it), and the transforms are written out with their zeros and +-1 folded. So each
(dtype, instruction set, output tile, kernel size) gets its own kernel, generated here from one template::

    python tools/gen_winograd.py

``tests/test_winograd.py`` fails when the checked-in file differs from what this writes.

The method (Lavin & Gray, 2016) for an r x r kernel (3x3 or 2x2), stride 1, output tiles of m x m
(F(m x m, r x r), input tiles of a = m + r - 1): ``Y = A^T [(G g G^T) o (B^T d B)] A`` per tile and
channel pair, summed over input channels in the transformed domain, where it is a^2 independent
matrix products. The kernel is fused per work item (a group of R tiles, counted over every image of
the call so that small maps still fill the register tile, and a chunk of output-channel blocks):
the R tiles' input transforms go to a per-item buffer (vectors over input channels), then per
block of 2 vectors of output channels the a^2 products run on a register tile (R tiles x 2
vectors, one broadcast per tile and two weight vectors per step, as the direct kernels), and the
output transform writes the block's outputs (plus bias) into the result, wherever its strides put
them (NCHW, channels-last, or one stride phase of a larger output). Every buffer an item touches
stays in L1/L2.
"""
from __future__ import annotations

import pathlib
import sys
from fractions import Fraction

#: B^T, G, A^T of F(2x2, 3x3) and F(4x4, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional
#: Neural Networks", 2016), as exact fractions, keyed by (m, r). They compute correlation, as CNNs
#: define it. The 2x2-kernel ones are derived below (:func:`toom_cook`).
TRANSFORMS = {
    (2, 3): dict(
        BT=[[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        G=[[1, 0, 0], [Fraction(1, 2), Fraction(1, 2), Fraction(1, 2)],
           [Fraction(1, 2), Fraction(-1, 2), Fraction(1, 2)], [0, 0, 1]],
        AT=[[1, 1, 1, 0], [0, 1, -1, -1]],
    ),
    (4, 3): dict(
        BT=[[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        G=[[Fraction(1, 4), 0, 0], [Fraction(-1, 6), Fraction(-1, 6), Fraction(-1, 6)],
           [Fraction(-1, 6), Fraction(1, 6), Fraction(-1, 6)], [Fraction(1, 24), Fraction(1, 12), Fraction(1, 6)],
           [Fraction(1, 24), Fraction(-1, 12), Fraction(1, 6)], [0, 0, 1]],
        AT=[[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    ),
}


def toom_cook(m, r, points):
    """``dict(BT=, G=, AT=)`` of F(m, r) on the finite ``points`` and infinity (m + r - 2 points), exact.

    ``AT[i][j] = p_j^i`` (the infinity column picks the top coefficient), ``G[j][k] = p_j^k / f_j``
    with ``f_j = prod_{l != j} (p_j - p_l)``, and ``BT`` solved from the identity every F(m, r)
    satisfies: ``sum_j AT[i][j] G[j][k] BT[j][l] = [l == i + k]`` (exact Gaussian elimination).
    """
    n = m + r - 1
    p = [Fraction(x) for x in points]
    assert len(p) == n - 1
    AT = [[p[j] ** i for j in range(n - 1)] + [Fraction(int(i == m - 1))] for i in range(m)]
    G = []
    for j in range(n - 1):
        f = Fraction(1)
        for l in range(n - 1):
            if l != j:
                f *= p[j] - p[l]
        G.append([p[j] ** k / f for k in range(r)])
    G.append([Fraction(int(k == r - 1)) for k in range(r)])
    rows = []  # one equation per (i, k, l) in the n*n unknowns BT[j][l]
    for i in range(m):
        for k in range(r):
            for l in range(n):
                row = [Fraction(0)] * (n * n)
                for j in range(n):
                    row[j * n + l] = AT[i][j] * G[j][k]
                rows.append(row + [Fraction(int(l == i + k))])
    pivots = []
    for col in range(n * n):
        found = next((q for q in range(len(pivots), len(rows)) if rows[q][col] != 0), None)
        if found is None:
            continue
        top = len(pivots)
        rows[top], rows[found] = rows[found], rows[top]
        rows[top] = [value / rows[top][col] for value in rows[top]]
        for q in range(len(rows)):
            if q != top and rows[q][col] != 0:
                factor = rows[q][col]
                rows[q] = [a - factor * b for a, b in zip(rows[q], rows[top])]
        pivots.append(col)
    assert all(row[-1] == 0 for row in rows[len(pivots):]), f"F({m}, {r}): no B^T for these points"
    solution = [Fraction(0)] * (n * n)
    for q, col in enumerate(pivots):
        solution[col] = rows[q][-1]
    return dict(BT=[solution[j * n:(j + 1) * n] for j in range(n)], G=G, AT=AT)


#: F(4, 2) on 0, +-1, -2 (float32 error 8.6e-6 of the output's scale over 256 channels in a NumPy
#: model, against 1.1-1.2e-5 with 2 or 1/2; F(4, 3) on Lavin's points: 2.0e-5) and F(3, 2) on 0, +-1
#: (2.0e-6, as F(2, 3)).
TRANSFORMS[(4, 2)] = toom_cook(4, 2, [0, 1, -1, -2])
TRANSFORMS[(3, 2)] = toom_cook(3, 2, [0, 1, -1])


def check_transforms():
    """Every transform satisfies F(m, r)'s identity exactly."""
    for (m, r), T in TRANSFORMS.items():
        n = m + r - 1
        for i in range(m):
            for k in range(r):
                for l in range(n):
                    total = sum(Fraction(T["AT"][i][j]) * Fraction(T["G"][j][k]) * Fraction(T["BT"][j][l])
                                for j in range(n))
                    assert total == int(l == i + k), (m, r)


#: (name, dtype, vector lanes, output tile m, kernel r, tile rows R) per kernel; the register tile
#: is R tiles x 2 vectors of output channels: AVX-512 14 x 2 = 28 zmm + 2 weight vectors + 1
#: broadcast, AVX2 6 x 2 = 12 ymm + 3 (the direct kernels' tiles, tools/gen_simd_tiles.py). 3x3
#: kernels: float32 uses F(4x4, 3x3) (4x fewer multiplications than direct, error ~1e-5 of the
#: output's scale) where a call has enough 4x4 tiles, F(2x2, 3x3) (2.25x fewer, error near direct's)
#: on smaller maps; float64 F(2x2, 3x3). 2x2 kernels (the stride phases of a 4x4 stride-2
#: transposed convolution, a DCGAN's up-sampling): float32 F(4x4, 2x2) (2.56x fewer), float64
#: F(3x3, 2x2) (2.25x fewer).
VARIANTS = tuple(
    (f"_winograd_{dt}_m{m}_k{r}_{isa}", dtype, lanes, m, r, rows)
    for isa, f32_lanes, rows in (("avx512", 16, 14), ("avx2", 8, 6))
    for dt, dtype, lanes, m, r in (("f32", "float32", f32_lanes, 4, 3), ("f32", "float32", f32_lanes, 2, 3),
                                   ("f64", "float64", f32_lanes // 2, 2, 3), ("f32", "float32", f32_lanes, 4, 2),
                                   ("f64", "float64", f32_lanes // 2, 3, 2))
)

#: F(m, r) along rows only (kernels 1 x r: 1D layers, lifted to height 1), float32: (name, dtype, lanes, m, r, R).
#: F(6, 3) on 0, +-1, +-2, +-1/2 does 8 multiplications where direct does 18 (2.25x fewer); measured on
#: audio_3 (8 x 64 x 4000, Zen 4): 3.6 ms against F(4, 3)'s 3.8 and direct's 4.6, error 2.4e-6 of the output's
#: scale (F(4, 3): 1.6e-6, direct 6e-7).
TRANSFORMS[(6, 3)] = toom_cook(6, 3, [0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2)])
ROW_VARIANTS = tuple(
    (f"_winograd_{dt}_m{m}_k1x{r}_{isa}", dtype, lanes, m, r, rows)
    for isa, f32_lanes, rows in (("avx512", 16, 14), ("avx2", 8, 6))
    for dt, dtype, lanes, m, r in (("f32", "float32", f32_lanes, 6, 3),)
)

HEADER = '''"""Fused Winograd F(m x m, r x r) convolution kernels, one per (dtype, instruction set, m, r).

GENERATED by tools/gen_winograd.py from one template: edit the template, not this file.
See :mod:`fastconv.strategies.winograd` for the layouts and the method.
"""
import numpy as np
from numba import get_thread_id, prange

from .._jit import kernel
from .._simd import vadd, vbroadcast, vfma, vload, vmul, vsplat, vstore, vstore_lanes, vsub, vzero

#: name -> (dtype, lanes, output tile m, kernel r, tile rows R) of each kernel below.
KERNELS = {
'''

TEMPLATE = '''

@kernel
def {name}(xp, u, bias, layout, out, work):
    """F({m}x{m}, {r}x{r}) over the padded channels-last input ``xp``: {rows} tiles x 2 vectors of {lanes} output channels per register tile.

    Output ``(n, c, i, j)`` is ``out[n*out_image + c*out_channel + i*out_row + j*out_col]`` (the
    layout's element strides): NCHW, channels-last (``out_channel == 1``: stored as vectors of
    channels) or one stride phase of a transposed convolution's result.

    ``work`` holds ``layout.work_len`` elements per thread (the item's V, M and output tile):
    buffers allocated inside the loop would be mapped and faulted in anew per item.
    """
    channels, in_h, in_w, row0, col0 = layout.channels, layout.in_h, layout.in_w, layout.row0, layout.col0
    tiles_w, tiles = layout.tiles_w, layout.tiles_h * layout.tiles_w
    co_blocks, per_chunk, chunks = layout.co_blocks, layout.chunk_blocks, layout.co_chunks
    out_channels, out_h, out_w = layout.out_channels, layout.out_h, layout.out_w
    out_image, out_channel, out_row, out_col = layout.out_image, layout.out_channel, layout.out_row, layout.out_col
    total = layout.images * tiles  # tiles of every image, grouped R at a time across images
    groups = (total + {rows} - 1) // {rows}
{constants}
    for item in prange(groups * chunks):
        chunk = item % chunks
        tg = item // chunks
        at = get_thread_id() * layout.work_len
        v = work[at:at + {xi} * {rows} * channels]
        at += {xi} * {rows} * channels
        m = work[at:at + {xi} * {rows} * {block}]
        at += {xi} * {rows} * {block}
        y = work[at:at + {mm} * {lanes}]
        at += {mm} * {lanes}
        tb = work[at:at + {xi} * {lanes}]
        # the tiles' input transforms, V[xi, r, c] = (B^T d B)[xi] (past the last tile: the last again)
        for r in range({rows}):
            t = min(tg * {rows} + r, total - 1)
            n = t // tiles
            t -= n * tiles
            ti = t // tiles_w
            at = ((n * in_h + row0 + ti * {m}) * in_w + col0 + (t - ti * tiles_w) * {m}) * channels
            for c in range(0, channels, {lanes}):
{input_transform}
        for cb in range(chunk * per_chunk, min(co_blocks, (chunk + 1) * per_chunk)):
{products}
            # output transforms: Y = A^T M A + bias, into the result
            for r in range({rows}):
                t = tg * {rows} + r
                if t >= total:
                    break
                n = t // tiles
                t -= n * tiles
                ti = t // tiles_w
                oi = ti * {m}
                oj = (t - ti * tiles_w) * {m}
                for half in range(2):
                    co0 = cb * {block} + half * {lanes}
                    if co0 >= out_channels:
                        break
                    mb = r * {block} + half * {lanes}
{output_transform}
                    lanes = min({lanes}, out_channels - co0)
                    rows = min({m}, out_h - oi)
                    cols = min({m}, out_w - oj)
                    corner = n * out_image + oi * out_row + oj * out_col
                    if out_channel == 1:  # channels-last result: one vector of channels per output
                        for i in range(rows):
                            for j in range(cols):
                                vstore_lanes(out, corner + i * out_row + j * out_col + co0,
                                             vload(y, (i * {m} + j) * {lanes}, {lanes}), 0, lanes)
                    else:
                        for k in range(lanes):
                            plane = corner + (co0 + k) * out_channel
                            for i in range(rows):
                                for j in range(cols):
                                    out[plane + i * out_row + j * out_col] = y[(i * {m} + j) * {lanes} + k]
'''


#: The weight transforms' docstrings (the template below serves both: a 1 x r kernel is r taps of one row).
WEIGHTS_DOC = """``u[cb, xi, c, k] = (G g G^T)[xi]`` for F({m}x{m}, {r}x{r}): output channel ``cb*{block} + k``, input channel ``c`` of
    ``weight`` (C_in, C_out, {r}, {r}), zero past them; vectors over the block's output channels.

    ``weight`` is any strided view (typed as such: one compiled version for every caller): the
    forward weights transposed, or a transposed convolution's taps of one stride phase."""
ROW_WEIGHTS_DOC = """``u[cb, xi, c, k] = (G g)[xi]`` for F({m}, {r}) along rows: output channel ``cb*{block} + k``, input channel
    ``c`` of ``weight`` (C_in, C_out, 1, {r}), zero past them; vectors over the block's output channels.
    ``weight`` is any strided view, as for the F(m x m, r x r) kernels."""

WEIGHTS_TEMPLATE = '''

@kernel
def {name}_weights(weight, channels, u):
    """{doc}
    """
    in_channels, out_channels = weight.shape[0], weight.shape[1]
    co_blocks = u.shape[0] // ({xi} * channels * {block})
{constants}
    spans = (channels + 7) // 8
    for item in prange(co_blocks * spans):
        cb = item // spans
        c0 = (item - cb * spans) * 8
        valid = min({block}, out_channels - cb * {block})
        g = np.zeros({taps} * {block}, dtype=np.{dtype})  # one input channel's kernels, output channel innermost
        for c in range(c0, min(channels, c0 + 8)):
            if c < in_channels:
                for k in range(valid):
                    for r in range({taps}):
                        g[r * {block} + k] = weight[c, cb * {block} + k, r // {r}, r % {r}]
            else:
                g[:] = 0
            for half in range(2):
{transform}
'''


ROW_TEMPLATE = """

@kernel
def {name}(xp, u, bias, layout, out, work):
    \"\"\"F({m}, {r}) along the rows of the padded channels-last input ``xp`` (a 1 x {r} kernel: 1D layers, lifted to
    height 1): {rows} tiles of {m} outputs x 2 vectors of {lanes} output channels per register tile.

    Layouts, output strides and ``work`` as the F(m x m, r x r) kernels'; a tile is {m} outputs of one row.
    \"\"\"
    channels, in_h, in_w, row0, col0 = layout.channels, layout.in_h, layout.in_w, layout.row0, layout.col0
    tiles_w, tiles = layout.tiles_w, layout.tiles_h * layout.tiles_w
    co_blocks, per_chunk, chunks = layout.co_blocks, layout.chunk_blocks, layout.co_chunks
    out_channels, out_w = layout.out_channels, layout.out_w
    out_image, out_channel, out_row, out_col = layout.out_image, layout.out_channel, layout.out_row, layout.out_col
    total = layout.images * tiles  # tiles of every row of every image, grouped R at a time
    groups = (total + {rows} - 1) // {rows}
{constants}
    for item in prange(groups * chunks):
        chunk = item % chunks
        tg = item // chunks
        at = get_thread_id() * layout.work_len
        v = work[at:at + {a} * {rows} * channels]
        at += {a} * {rows} * channels
        m = work[at:at + {a} * {rows} * {block}]
        at += {a} * {rows} * {block}
        y = work[at:at + {m} * {lanes}]
        # the tiles' input transforms, V[xi, r, c] = (B^T d)[xi] (past the last tile: the last again)
        for r in range({rows}):
            t = min(tg * {rows} + r, total - 1)
            n = t // tiles
            t -= n * tiles
            ti = t // tiles_w
            at = ((n * in_h + row0 + ti) * in_w + col0 + (t - ti * tiles_w) * {m}) * channels
            for c in range(0, channels, {lanes}):
{input_transform}
        for cb in range(chunk * per_chunk, min(co_blocks, (chunk + 1) * per_chunk)):
{products}
            # output transforms: y = A^T M + bias, into the result
            for r in range({rows}):
                t = tg * {rows} + r
                if t >= total:
                    break
                n = t // tiles
                t -= n * tiles
                ti = t // tiles_w
                oj = (t - ti * tiles_w) * {m}
                for half in range(2):
                    co0 = cb * {block} + half * {lanes}
                    if co0 >= out_channels:
                        break
                    mb = r * {block} + half * {lanes}
{output_transform}
                    lanes = min({lanes}, out_channels - co0)
                    cols = min({m}, out_w - oj)
                    corner = n * out_image + ti * out_row + oj * out_col
                    if out_channel == 1:  # channels-last result: one vector of channels per output
                        for j in range(cols):
                            vstore_lanes(out, corner + j * out_col + co0, vload(y, j * {lanes}, {lanes}), 0, lanes)
                    else:
                        for k in range(lanes):
                            plane = corner + (co0 + k) * out_channel
                            for j in range(cols):
                                out[plane + j * out_col] = y[j * {lanes} + k]
"""


#: The a (1D) or a^2 (2D) products of one block of output channels, shared by both templates (formatted first by
#: :func:`_products`, then placed in a template as ``{products}``).
PRODUCTS = """            # the {points} products M[xi] (tiles x channels of the block) = V[xi] U[xi]
            for xi in range({points}):
                ub = (cb * {points} + xi) * channels * {block}
                vb = xi * {rows} * channels
{zero}
                for c in range(channels):
                    w0 = vload(u, ub + c * {block}, {lanes})
                    w1 = vload(u, ub + c * {block} + {lanes}, {lanes})
{steps}
{store}"""


def _const_name(value) -> str:
    text = str(Fraction(value)).replace("-", "m").replace("/", "_")
    return f"k_{text}"


def _lincomb(coeffs, names, consts):
    """Vector code for sum(c * name), folding 0 and +-1; records the constants it splats."""
    terms = [(Fraction(c), n) for c, n in zip(coeffs, names) if c != 0]
    terms.sort(key=lambda term: term[0] != 1)  # start from a +1 term when there is one
    c, n = terms[0]
    if c == 1:
        expr = n
    else:
        consts.add(c)
        expr = f"vmul({_const_name(c)}, {n})"
    for c, n in terms[1:]:
        if c == 1:
            expr = f"vadd({expr}, {n})"
        elif c == -1:
            expr = f"vsub({expr}, {n})"
        else:
            consts.add(c)
            expr = f"vfma({_const_name(c)}, {n}, {expr})"
    return expr


def _transform_2d(T, src, dst, consts, indent):
    """Lines computing dst[k][l] = (T src T^T)[k][l] from named vectors src[i][j] (``{src}{i}_{j}``)."""
    rows, cols = len(T), len(T[0])
    lines = []
    for k in range(rows):  # first along the rows of src: s[k][j] = sum_i T[k][i] src[i][j]
        for j in range(cols):
            lines.append(f"s{k}_{j} = " + _lincomb(T[k], [f"{src}{i}_{j}" for i in range(cols)], consts))
    for k in range(rows):
        for l in range(rows):
            lines.append(f"{dst}{k}_{l} = " + _lincomb(T[l], [f"s{k}_{j}" for j in range(cols)], consts))
    return [indent + line for line in lines]


def render_weights(name, dtype, lanes, m, r):
    """The weight transform ``G g G^T`` of one variant, vectors over output channels."""
    T = TRANSFORMS[(m, r)]
    a = m + r - 1
    block = 2 * lanes
    consts: set = set()
    ind = " " * 16
    lines = [f"{ind}g{i}_{j} = vload(g, {(i * r + j) * block} + half * {lanes}, {lanes})"
             for i in range(r) for j in range(r)]
    G = T["G"]
    for i in range(a):  # h = G g (a x 3), then e = h G^T (a x a)
        for j in range(r):
            lines.append(f"{ind}h{i}_{j} = " + _lincomb(G[i], [f"g{k}_{j}" for k in range(r)], consts))
    for i in range(a):
        for l in range(a):
            lines.append(f"{ind}vstore(u, ((cb * {a * a} + {i * a + l}) * channels + c) * {block} + half * {lanes}, "
                         + _lincomb(G[l], [f"h{i}_{j}" for j in range(r)], consts) + ")")
    constants = [f"    {_const_name(c)} = vsplat(np.{dtype}({float(c)!r}), {lanes})" for c in sorted(consts)]
    doc = WEIGHTS_DOC.format(m=m, r=r, block=block)
    return WEIGHTS_TEMPLATE.format(name=name, dtype=dtype, lanes=lanes, m=m, r=r, taps=r * r, xi=a * a, block=block,
                                   doc=doc, constants="\n".join(constants), transform="\n".join(lines))


def _products(points, rows, lanes, block):
    """:data:`PRODUCTS` for ``points`` transformed points: the register tile (zeroing, one step per input channel,
    stores into M) of R tiles x 2 vectors, one broadcast per tile and two weight vectors per step."""
    ind = " " * 16
    zero = [f"{ind}a{row}_{b} = vzero(v, {lanes})" for row in range(rows) for b in range(2)]
    steps = []
    for row in range(rows):
        steps.append(f"{ind}    x = vbroadcast(v, vb + {row} * channels + c, {lanes})")
        steps.append(f"{ind}    a{row}_0 = vfma(x, w0, a{row}_0)")
        steps.append(f"{ind}    a{row}_1 = vfma(x, w1, a{row}_1)")
    store = [f"{ind}vstore(m, (xi * {rows} + {row}) * {block} + {b * lanes}, a{row}_{b})"
             for row in range(rows) for b in range(2)]
    return PRODUCTS.format(points=points, rows=rows, lanes=lanes, block=block, zero="\n".join(zero),
                           steps="\n".join(steps), store="\n".join(store))


def render(name, dtype, lanes, m, r, rows):
    T = TRANSFORMS[(m, r)]
    a = m + r - 1
    xi = a * a
    block = 2 * lanes
    consts: set = set()
    # The 2D transforms run as two 1D passes through a small per-thread buffer ``tb`` (a x a vectors,
    # L1-resident): loops over the columns, then the rows, each body one 1D transform of a vectors.
    # Fully unrolled, a 2D transform is ~200 vector operations LLVM cannot keep in registers anyway,
    # and compiling it took twice as long.
    ind_in = " " * 16
    input_lines = [f"{ind_in}for j in range({a}):  # columns: s[k][j] = sum_i BT[k][i] d[i][j]"]
    input_lines += [f"{ind_in}    d{i} = vload(xp, at + ({i} * in_w + j) * channels + c, {lanes})" for i in range(a)]
    input_lines += [f"{ind_in}    vstore(tb, ({k} * {a} + j) * {lanes}, "
                    + _lincomb(T["BT"][k], [f"d{i}" for i in range(a)], consts) + ")" for k in range(a)]
    input_lines.append(f"{ind_in}for k in range({a}):  # rows: V[k*a + l] = sum_j s[k][j] BT[l][j]")
    input_lines += [f"{ind_in}    s{j} = vload(tb, (k * {a} + {j}) * {lanes}, {lanes})" for j in range(a)]
    input_lines += [f"{ind_in}    vstore(v, ((k * {a} + {l}) * {rows} + r) * channels + c, "
                    + _lincomb(T["BT"][l], [f"s{j}" for j in range(a)], consts) + ")" for l in range(a)]
    ind_out = " " * 20
    output_lines = [f"{ind_out}for l in range({a}):  # columns: s[p][l] = sum_k AT[p][k] M[k*a + l]"]
    output_lines += [f"{ind_out}    q{k} = vload(m, ({k} * {a} + l) * {rows} * {block} + mb, {lanes})" for k in range(a)]
    output_lines += [f"{ind_out}    vstore(tb, ({p} * {a} + l) * {lanes}, "
                     + _lincomb(T["AT"][p], [f"q{k}" for k in range(a)], consts) + ")" for p in range(m)]
    output_lines.append(f"{ind_out}b = vload(bias, co0, {lanes})")
    output_lines.append(f"{ind_out}for p in range({m}):  # rows: y[p][q] = sum_l s[p][l] AT[q][l] + bias")
    output_lines += [f"{ind_out}    s{l} = vload(tb, (p * {a} + {l}) * {lanes}, {lanes})" for l in range(a)]
    output_lines += [f"{ind_out}    vstore(y, (p * {m} + {q}) * {lanes}, vadd("
                     + _lincomb(T["AT"][q], [f"s{l}" for l in range(a)], consts) + ", b))" for q in range(m)]
    constants = [f"    {_const_name(c)} = vsplat(np.{dtype}({float(c)!r}), {lanes})" for c in sorted(consts)]
    return TEMPLATE.format(name=name, dtype=dtype, lanes=lanes, m=m, r=r, rows=rows, xi=xi, block=block, mm=m * m,
                           constants="\n".join(constants), input_transform="\n".join(input_lines),
                           output_transform="\n".join(output_lines), products=_products(xi, rows, lanes, block))


def render_row(name, dtype, lanes, m, r, rows):
    """The kernel and weight transform of F(m, r) along rows (1 x r kernels)."""
    T = TRANSFORMS[(m, r)]
    a = m + r - 1
    block = 2 * lanes
    consts: set = set()
    ind = " " * 16
    input_lines = [f"{ind}d{i} = vload(xp, at + {i} * channels + c, {lanes})" for i in range(a)]
    input_lines += [f"{ind}vstore(v, ({xi} * {rows} + r) * channels + c, "
                    + _lincomb(T["BT"][xi], [f"d{i}" for i in range(a)], consts) + ")" for xi in range(a)]
    ind = " " * 20
    output_lines = [f"{ind}q{k} = vload(m, {k * rows} * {block} + mb, {lanes})" for k in range(a)]
    output_lines.append(f"{ind}b = vload(bias, co0, {lanes})")
    output_lines += [f"{ind}vstore(y, {p * lanes}, vadd(" + _lincomb(T["AT"][p], [f"q{k}" for k in range(a)], consts)
                     + ", b))" for p in range(m)]
    constants = [f"    {_const_name(c)} = vsplat(np.{dtype}({float(c)!r}), {lanes})" for c in sorted(consts)]
    text = ROW_TEMPLATE.format(name=name, dtype=dtype, lanes=lanes, m=m, r=r, rows=rows, a=a, block=block,
                               constants="\n".join(constants), input_transform="\n".join(input_lines),
                               output_transform="\n".join(output_lines), products=_products(a, rows, lanes, block))
    consts = set()
    ind = " " * 16
    lines = [f"{ind}g{t} = vload(g, {t * block} + half * {lanes}, {lanes})" for t in range(r)]
    lines += [f"{ind}vstore(u, ((cb * {a} + {xi}) * channels + c) * {block} + half * {lanes}, "
              + _lincomb(T["G"][xi], [f"g{t}" for t in range(r)], consts) + ")" for xi in range(a)]
    constants = [f"    {_const_name(c)} = vsplat(np.{dtype}({float(c)!r}), {lanes})" for c in sorted(consts)]
    doc = ROW_WEIGHTS_DOC.format(m=m, r=r, block=block)
    return text + WEIGHTS_TEMPLATE.format(name=name, dtype=dtype, lanes=lanes, m=m, r=r, taps=r, xi=a, block=block,
                                          doc=doc, constants="\n".join(constants), transform="\n".join(lines))


def generate() -> str:
    check_transforms()
    text = HEADER
    for name, dtype, lanes, m, r, rows in VARIANTS + ROW_VARIANTS:
        text += f'    "{name}": ("{dtype}", {lanes}, {m}, {r}, {rows}),\n'
    text += "}\n"
    for name, dtype, lanes, m, r, rows in VARIANTS:
        text += render(name, dtype, lanes, m, r, rows)
        text += render_weights(name, dtype, lanes, m, r)
    for variant in ROW_VARIANTS:
        text += render_row(*variant)
    return text


TARGET = pathlib.Path(__file__).resolve().parent.parent / "fastconv" / "strategies" / "_winograd_kernels.py"

if __name__ == "__main__":
    TARGET.write_text(generate())
    sys.stdout.write(f"wrote {TARGET}\n")
