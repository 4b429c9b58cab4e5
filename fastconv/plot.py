"""The PNG of ``fastconv bench --plot``: three stacked panels drawn from the report's rows.

1. speedup against PyTorch (``speedup_vs_torch``) per shape and method, log scale, bars growing
   from the 1x line: up means faster than PyTorch, down slower;
2. GFLOP/s of the convolution rows (ops starting with ``conv``), log scale;
3. GB/s of the pooling rows, log scale, with ``np.copyto``'s bandwidth on the same bytes drawn
   as a black bar across each shape's group: pooling is judged against it.

Shapes keep the report's order in every panel (panels 2 and 3 show their part of it). A method
has one colour in every panel; the ``auto`` bar is striped, in the colour of the strategy it ran.
Rows extrapolated from a shrunken problem (the pure-Python ``loop``) are left out: they sit three
to four orders of magnitude below the rest and would squash the log axes; the table prints them.

matplotlib is imported here only inside functions, so ``fastconv.cli`` can import this module
without it. The figure is drawn on the non-interactive Agg canvas without touching pyplot's
global backend or state.
"""

from __future__ import annotations

from math import log10

INSTALL_HINT = "pip install 'fastconv[plot]'"

# One colour per method in every panel (matplotlib's tab10); methods not listed here get FALLBACK's.
COLOURS = {
    "vectorized": "#1f77b4",
    "direct": "#ff7f0e",
    "img2col": "#2ca02c",
    "auto": "#9467bd",
    "torch": "#d62728",
    "scipy": "#8c564b",
    "loop": "#7f7f7f",
}
FALLBACK = ("#e377c2", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a")
COPY_METHOD = "copyto"  # not a way to compute the op: the bandwidth reference of panel 3

WIDTH_IN = 10.0  # README width at DPI
DPI = 100
MIN_SLOTS = 5  # the x axis of a panel is at least this many shapes wide


def require_matplotlib():
    """matplotlib, or a clear exit saying how to install it (checked before a report runs)."""
    try:
        import matplotlib
        from matplotlib.backends import backend_agg  # noqa: F401  the canvas the PNG is drawn on
    except ImportError:
        raise SystemExit(
            f"fastconv bench: --plot needs matplotlib, which is not installed; install it with: {INSTALL_HINT}"
        ) from None
    return matplotlib


def is_conv(op: str) -> bool:
    return op.startswith("conv")


def is_backward(op: str) -> bool:
    return op.endswith("_backward")


def _group_key(row) -> tuple:
    return row["shape"], is_backward(row["op"])


def _colours(methods) -> dict:
    spare = iter(FALLBACK * (1 + len(methods) // len(FALLBACK)))
    return {m: COLOURS.get(m) or next(spare) for m in methods}


def _drawn(row) -> bool:
    """Whether a row gets a bar in the speed panels: extrapolated rows and np.copyto do not."""
    return not row.get("extrapolated") and row["method"] != COPY_METHOD


def title(environment, backward: bool) -> str:
    """CPU, threads, dtype and date of the run (from the report's ``environment``)."""
    what = "fastconv bench" + (" (backward: dx and dw)" if backward else "")
    if not environment:
        return what
    parts = [environment.get("cpu") or "unknown CPU"]
    threads = environment.get("threads")
    if threads is not None:
        parts.append(f"{threads} thread{'s' if threads != 1 else ''}")
    if environment.get("dtype"):
        parts.append(str(environment["dtype"]))
    if environment.get("date"):
        parts.append(str(environment["date"])[:10])
    versions = [f"{name} {environment[name]}" for name in ("fastconv", "numpy", "numba") if environment.get(name)]
    if "torch" in environment:
        versions.append(f"torch {environment['torch']}" if environment["torch"] else "torch not installed")
    return f"{what}: {', '.join(parts)}" + (f"\n{', '.join(versions)}" if versions else "")


def _log_axis(ax, values, suffix=""):
    """Log y axis with plain labels (0.5, 1, 2, 5, ... or decades when the range is wide)."""
    from matplotlib import ticker

    ax.set_yscale("log")
    low, high = min(values), max(values)
    decades = log10(high / low) if low > 0 else 10
    subs = (1.0, 2.0, 5.0) if decades <= 2.5 else (1.0,) if decades > 5 else (1.0, 3.0)
    ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}{suffix}"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.grid(axis="y", which="major", color="0.88", linewidth=0.6)
    ax.set_axisbelow(True)


def _shape_ticks(ax, labels):
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right", rotation_mode="anchor", fontsize=8)
    span = max(len(labels), MIN_SLOTS)  # a panel of one or two shapes keeps bars of the usual width
    ax.set_xlim((len(labels) - 1 - span) / 2 - 0.1, (len(labels) - 1 + span) / 2 + 0.1)
    ax.tick_params(axis="x", length=0)


def _message(ax, text):
    """An empty panel that says why it is empty."""
    ax.set_xticks([]), ax.set_yticks([])
    for side in ax.spines.values():
        side.set_color("0.8")
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=9, color="0.3", wrap=True)


AUTO_HATCH = "////"


def _bars(ax, groups, rows, methods, colours, value, base=None):
    """Grouped bars: one group per shape in ``groups``, one bar per method with a value.

    ``value(row)`` gives the bar's top (None: no bar). With ``base`` the bars start there (the 1x
    line) instead of at the axis floor. The ``auto`` bar is striped, in the colour of the strategy
    it ran (its row's ``chosen``). Returns the values drawn.
    """
    index = {(_group_key(r), r["method"]): r for r in rows}
    shown = [m for m in methods if any(value(index[g, m]) for g in groups if (g, m) in index)]
    width = 0.84 / max(len(shown), 1)
    drawn = []
    for m_i, method in enumerate(shown):
        xs, tops, fills = [], [], []
        for g_i, group in enumerate(groups):
            row = index.get((group, method))
            top = None if row is None else value(row)
            if not top or top <= 0:
                continue
            xs.append(g_i + (m_i - (len(shown) - 1) / 2) * width)
            tops.append(top)
            fills.append(colours.get(row.get("chosen") or method, colours[method]))
        heights = tops if base is None else [t - base for t in tops]
        striped = {"hatch": AUTO_HATCH, "edgecolor": "white", "linewidth": 0} if method == "auto" else {}
        ax.bar(xs, heights, width, bottom=base, color=fills, label=method, **striped)
        drawn += tops
    return drawn


def _headroom(ax, values, base=None):
    """A little room above (and below) the bars on a log axis."""
    low, high = min(values + ([base] if base else [])), max(values + ([base] if base else []))
    ax.set_ylim(low / (1.5 if base else 1.3), high * 1.5)


def figure(results, environment=None):
    """The three-panel :class:`matplotlib.figure.Figure` of a report's rows (not saved)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    results = list(results)
    methods = list(dict.fromkeys(r["method"] for r in results))
    chosen = [r["chosen"] for r in results if r["method"] == "auto" and r.get("chosen")]
    colours = _colours(list(dict.fromkeys([m for m in methods if m != COPY_METHOD] + chosen)))
    groups = list(dict.fromkeys(_group_key(r) for r in results))  # the report's order, in every panel
    all_backward = bool(groups) and all(b for _, b in groups)

    def label(group):
        shape, backward = group
        return shape + (" (bwd)" if backward and not all_backward else "")

    conv_groups = [g for g in groups if any(is_conv(r["op"]) and _group_key(r) == g for r in results)]
    pool_groups = [g for g in groups if g not in conv_groups]
    drawn = [r for r in results if _drawn(r)]
    has_torch = any(r["method"] == "torch" for r in results)
    vs_torch = [r for r in drawn if has_torch and r["method"] != "torch" and (r.get("speedup_vs_torch") or 0) > 0]

    heights = [3.0 if vs_torch else 0.8, 3.0 if conv_groups else 0.8, 3.0 if pool_groups else 0.8]
    fig = Figure(figsize=(WIDTH_IN, 1.4 + sum(h * 0.8 + (0.9 if h > 1 else 0) for h in heights)), dpi=DPI,
                 layout="constrained")
    FigureCanvasAgg(fig)
    ax_torch, ax_conv, ax_pool = fig.subplots(3, 1, height_ratios=heights)
    fig.suptitle(title(environment, all_backward), fontsize=10)

    # (1) speedup against PyTorch
    ax_torch.set_title("Speedup against PyTorch (PyTorch's time / this time): above 1x is faster than PyTorch",
                       fontsize=9, loc="left")
    if not has_torch:
        if environment and environment.get("torch"):
            why = "This report has no torch rows (torch was not among --methods): no speedup to show."
        else:
            why = ("PyTorch is not installed (no torch rows in this report): no speedup to show. "
                   "pip install torch to compare.")
        _message(ax_torch, why)
    elif not vs_torch:
        _message(ax_torch, "No method has a speedup against PyTorch in this report (only torch itself was timed).")
    else:
        values = _bars(ax_torch, groups, drawn, [m for m in methods if m != "torch"], colours,
                       lambda r: r.get("speedup_vs_torch"), base=1.0)
        _log_axis(ax_torch, values + [1.0], suffix="x")
        _headroom(ax_torch, values, base=1.0)
        ax_torch.axhline(1.0, color="black", linewidth=1.0, zorder=3)
        ax_torch.set_ylabel("x PyTorch (log)")
        _shape_ticks(ax_torch, [label(g) for g in groups])
        for g_i, group in enumerate(groups):  # PyTorch could not run this problem
            if not any(_group_key(r) == group and r["method"] == "torch" for r in results):
                ax_torch.text(g_i, 1.0, "no torch row", ha="center", va="bottom", fontsize=6.5, color="0.4")

    # (2) convolutions, GFLOP/s
    ax_conv.set_title("Convolutions: GFLOP/s (higher is better)", fontsize=9, loc="left")
    conv_rows = [r for r in drawn if is_conv(r["op"]) and r.get("gflops")]
    if conv_rows:
        values = _bars(ax_conv, conv_groups, conv_rows, methods, colours, lambda r: r.get("gflops"))
        _log_axis(ax_conv, values)
        _headroom(ax_conv, values)
        ax_conv.set_ylabel("GFLOP/s (log)")
        _shape_ticks(ax_conv, [label(g) for g in conv_groups])
    else:
        _message(ax_conv, "No convolution rows in this report.")

    # (3) pooling, GB/s against np.copyto
    ax_pool.set_title("Pooling: GB/s (input read + output written), against np.copyto of the input",
                      fontsize=9, loc="left")
    pool_rows = [r for r in drawn if not is_conv(r["op"]) and r.get("gbps")]
    copies = {_group_key(r): r["gbps"] for r in results
              if r["method"] == COPY_METHOD and not is_conv(r["op"]) and r.get("gbps")}
    if pool_rows or copies:
        values = _bars(ax_pool, pool_groups, pool_rows, methods, colours, lambda r: r.get("gbps"))
        xs = [i for i, g in enumerate(pool_groups) if g in copies]
        ys = [copies[pool_groups[i]] for i in xs]
        ax_pool.hlines(ys, [x - 0.46 for x in xs], [x + 0.46 for x in xs], colors="black", linewidth=2.2,
                       zorder=3, label="np.copyto")
        _log_axis(ax_pool, values + ys)
        _headroom(ax_pool, values + ys)
        ax_pool.set_ylabel("GB/s (log)")
        _shape_ticks(ax_pool, [label(g) for g in pool_groups])
        if ys:
            ax_pool.legend(handles=[Line2D([], [], color="black", linewidth=2.2)],
                           labels=["np.copyto of\nthe same input\n(the bandwidth\nto aim for)"],
                           loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    else:
        _message(ax_pool, "No pooling rows in this report.")

    # one legend for the methods, right of the first panel with bars, outside every axes
    runs = {r.get("chosen") for r in drawn if r["method"] == "auto"} - {None}
    legend_methods = [m for m in colours if m != "auto" and (m in runs or any(r["method"] == m for r in drawn))]
    handles = [Patch(color=colours[m]) for m in legend_methods]
    labels = list(legend_methods)
    if any(r["method"] == "auto" for r in drawn):
        handles.append(Patch(facecolor=colours["auto"] if not runs else "0.6", edgecolor="white", hatch=AUTO_HATCH,
                             linewidth=0))
        labels.append("auto: striped, in\nthe colour of the\nstrategy it ran" if runs else "auto")
    left_out = sorted({r["method"] for r in results if r.get("extrapolated")})
    if left_out:
        handles.append(Patch(color="none"))
        labels.append(f"not drawn: {', '.join(left_out)}\n(extrapolated from\na shrunken problem;\nsee the table)")
    if handles:
        anchor = ax_torch if vs_torch else ax_conv if conv_rows else ax_pool
        anchor.legend(handles, labels, title="method", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
                      title_fontsize=8, frameon=False)
    return fig


def plot_report(results, path, environment=None):
    """Write the report's PNG to ``path`` and return its :class:`~matplotlib.figure.Figure`.

    Parameters
    ----------
    results : list of dict
        The report's rows (``fastconv bench --json``'s ``results``): ``op``, ``shape``, ``method``,
        ``gflops``, ``gbps``, ``speedup_vs_torch``, ``extrapolated``, ``chosen``.
    path : str or path-like
        Where the PNG goes.
    environment : dict, optional
        The report's ``environment`` (``cpu``, ``threads``, ``dtype``, ``date``, versions): the title.
    """
    fig = figure(results, environment)
    fig.savefig(path, dpi=DPI)
    return fig
