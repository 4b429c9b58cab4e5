"""The ``fastconv`` command line (bench, compare, info): arguments, JSON, error messages. Fast: tiny problems only."""

import builtins
import io
import json
import sys

import pytest

import fastconv
from fastconv import bench, cli, info, shapes


def run(capsys, *argv):
    code = cli.main(list(argv))
    return code, capsys.readouterr()


def test_list_shows_the_shape_set(capsys):
    code, out = run(capsys, "bench", "--list")
    assert code == 0
    for name in shapes.SHAPES:
        assert name in out.out


def test_own_shape_json_schema(capsys, tmp_path):
    path = tmp_path / "r.json"
    code, out = run(capsys, "bench", "--shape", "conv2d:1,2,9,9,3,3,3,1,1", "--shape", "max_pool2d:1,2,8,8,2,2,0",
                    "--methods", "loop,vectorized", "--threads", "1", "--json", str(path), "--no-progress")
    assert code == 0
    data = json.loads(path.read_text())
    assert data["schema"] == 1 and data["environment"]["threads"] == 1
    rows = data["results"]
    assert {(r["op"], r["method"]) for r in rows} == {
        ("conv2d", "loop"), ("conv2d", "vectorized"), ("max_pool2d", "loop"), ("max_pool2d", "vectorized")}
    for r in rows:
        assert {"op", "shape", "method", "ms", "gflops", "gbps", "speedup_vs_torch", "speedup_vs_vectorized",
                "speedup_vs_loop", "fraction_of_gemm", "extrapolated"} <= set(r)
        assert r["ms"] > 0 and r["gflops"] > 0
        assert r["speedup_vs_vectorized"] > 0 and r["speedup_vs_loop"] > 0
    assert "conv2d:1,2,9,9,3,3,3,1,1" in out.out and "x vect" in out.out


def test_backward_report(capsys):
    code, out = run(capsys, "bench", "--shape", "conv2d:1,2,8,8,2,3,3,1,1", "--methods", "vectorized",
                    "--backward", "--threads", "1", "--no-progress")
    assert code == 0 and "(backward)" in out.out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "--shapes", "resnet_9000"], "unknown shape 'resnet_9000'; known shapes: resnet_conv1"),
        (["bench", "--methods", "fourier"], "unknown method 'fourier'"),
        (["bench", "--shape", "conv3d:1,2,3"], "op must be one of conv2d"),
        (["bench", "--shape", "conv2d:1,2,3"], "conv2d takes 9 or 10 numbers, got 3"),
        (["bench", "--shape", "conv2d:a,b"], "expected op:int,int"),
        (["bench", "--threads", "0", "--shape", "conv2d:1,1,4,4,1,3,3,1,1"], "--threads must be between 1 and"),
        (["bench", "--threads", "10000", "--shape", "conv2d:1,1,4,4,1,3,3,1,1"], "--threads must be between 1 and"),
        (["bench", "--shape", "conv2d:1,1,8,8,1,3,3,0,0"], "stride must be >= 1, got 0"),
        (["bench", "--shape", "conv2d:1,1,2,2,1,3,3,1,0"], "the output would be empty"),
        (["bench", "--shape", "conv2d:1,3,8,8,4,3,3,1,1,2"], "groups=2 does not divide the 3 input channels"),
        (["bench", "--shape", "max_pool2d:1,2,8,8,5,1,3"], "padding must be at most half the kernel size"),
        (["bench", "--quick", "--shapes", "image_filter"], "cannot be combined"),
        (["bench", "--repeat", "0", "--shape", "conv2d:1,1,4,4,1,3,3,1,1"], "--repeat must be >= 1, got 0"),
    ],
)
def test_bad_arguments_are_clear(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_plot_without_matplotlib_says_how_to_install(capsys, monkeypatch, tmp_path):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    monkeypatch.setattr(cli.bench, "measure", lambda *a, **k: pytest.fail("the benchmark ran before the check"))
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--shape", "conv2d:1,1,6,6,1,3,3,1,0", "--methods", "vectorized", "--threads", "1",
                  "--plot", str(tmp_path / "p.png"), "--no-progress"])
    assert "pip install 'fastconv[plot]'" in str(exc.value.code)


def test_pooling_report_compares_with_copyto(capsys, tmp_path):
    path = tmp_path / "pool.json"
    assert cli.main(["bench", "--shape", "max_pool2d:1,2,8,8,2,2,0", "--methods", "direct,copyto", "--threads", "1",
                     "--json", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "of copy" in out and "copyto" in out
    rows = {r["method"]: r for r in json.loads(path.read_text())["results"]}
    assert rows["copyto"]["fraction_of_copy"] == pytest.approx(1.0)
    assert rows["direct"]["fraction_of_copy"] == pytest.approx(rows["direct"]["gbps"] / rows["copyto"]["gbps"])


def test_repeat_runs_interleaved_rounds(capsys, tmp_path, monkeypatch):
    calls = []
    real = cli.bench.median_time

    def counting(fn, *args, **kwargs):
        calls.append(fn)
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(cli.bench, "median_time", counting)
    cli.bench._square_gemm_gflops.cache_clear()
    path = tmp_path / "r.json"
    assert cli.main(["bench", "--shape", "conv2d:1,1,6,6,1,3,3,1,0", "--methods", "loop,vectorized,direct",
                     "--threads", "1", "--repeat", "3", "--json", str(path), "--no-progress"]) == 0
    assert "best of 3 interleaved rounds" in capsys.readouterr().out
    data = json.loads(path.read_text())
    assert data["environment"]["repeats"] == 3
    # the loop once, the two strategies three times each (the np.matmul reference once)
    assert len(calls) == 1 + 2 * 3 + 1
    assert {r["method"] for r in data["results"]} == {"loop", "vectorized", "direct"}


# --- fastconv info / fastconv.show_config() -----------------------------------------------------


def _leaves(value):
    """Every str and int (not bool) inside a nested dict/list: the values the text form must show."""
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    elif isinstance(value, (str, int)) and not isinstance(value, bool):
        yield value


def test_info_json_has_every_section_with_the_right_types(capsys):
    code, out = run(capsys, "info", "--json")
    assert code == 0
    data = json.loads(out.out)
    assert set(data) == {"versions", "cpu", "threads", "jit_cache", "workspace_limit", "strategies", "measure_cache"}
    versions = data["versions"]
    for name in ("fastconv", "python", "numpy", "numba", "llvmlite", "threadpoolctl"):
        assert isinstance(versions[name], str), name
    for name in ("torch", "scipy", "dask", "tqdm"):
        assert name in versions and (versions[name] is None or isinstance(versions[name], str))
    assert versions["fastconv"] == fastconv.__version__
    cpu = data["cpu"]
    assert isinstance(cpu["model"], str) and isinstance(cpu["numba_target"], str) and cpu["vector_isa"]
    assert cpu["float32_lanes"] is None or cpu["float32_lanes"] >= 1
    threads = data["threads"]
    assert isinstance(threads["numba_threads"], int) and 1 <= threads["numba_threads"] <= threads["numba_max_threads"]
    assert isinstance(threads["threading_layer"], str) and isinstance(threads["notes"], list)
    for lib in threads["blas"]:
        assert {"filepath", "internal_api", "version", "threading_layer", "num_threads", "idle"} <= set(lib)
    cache = data["jit_cache"]
    assert isinstance(cache["enabled"], bool)
    assert cache["kernels"] > 0 or cache["off_by"] == "NUMBA_DISABLE_JIT=1"
    assert cache["cached"] + len(cache["not_cached"]) + len(cache["unknown"]) == (cache["kernels"] if cache["enabled"]
                                                                                  else 0)
    assert all(name.startswith("fastconv.strategies.") for name in cache["not_cached"])
    assert data["workspace_limit"] == fastconv.get_workspace_limit()
    assert data["strategies"] == list(fastconv.strategies.names())
    assert data["measure_cache"]["path"] == fastconv.measure.cache_path()
    assert isinstance(data["measure_cache"]["exists"], bool)


def test_info_text_shows_every_value_of_the_json(capsys):
    code, out = run(capsys, "info")
    assert code == 0
    text = out.out
    for section in ("versions", "cpu", "threads", "jit cache", "workspace limit", "strategies", "measure cache"):
        assert f"\n{section}" in text, section
    data = info.collect()
    kernels = data["jit_cache"].pop("not_cached") + data["jit_cache"].pop("unknown")
    missing = [v for v in _leaves(data) if str(v) not in text]
    assert not missing, missing
    for name in kernels:  # listed under their module: "fastconv.strategies.direct: _conv_rows, ..."
        module, kernel = name.rsplit(".", 1)
        assert f"{module}: " in text and kernel in text, name
    assert all(f"{name:<15} not installed" in text for name, v in data["versions"].items() if v is None)


def test_show_config_prints_the_text_and_returns_the_json(capsys):
    assert cli.main(["info", "--json"]) == 0
    from_cli = json.loads(capsys.readouterr().out)
    config = fastconv.show_config()
    printed = capsys.readouterr().out
    assert config == from_cli
    assert printed.startswith(f"fastconv {fastconv.__version__}\nversions\n") and "jit cache" in printed
    assert fastconv.show_config(quiet=True) == config and capsys.readouterr().out == ""


@pytest.mark.parametrize(
    "features, expected",
    [
        ({"sse2", "avx", "avx2", "fma", "avx512f"}, ("avx512", 16)),
        ({"sse2", "avx", "avx2", "fma"}, ("avx2+fma", 8)),
        ({"sse2", "avx", "avx2"}, ("avx2", 8)),
        ({"sse2", "sse4.2"}, ("sse4.2", 4)),
        ({"neon"}, ("neon", 4)),
        ({"sve"}, ("sve", None)),
        (set(), ("scalar", 1)),
    ],
)
def test_vector_isa(features, expected):
    assert info.vector_isa(features) == expected


def test_info_reports_the_cpu_numba_is_told_to_compile_for(monkeypatch):
    import numba

    monkeypatch.setattr(numba.config, "CPU_NAME", "nehalem")
    monkeypatch.setattr(numba.config, "CPU_FEATURES", "+sse2,+sse4.2,-avx,-avx2")
    cpu = info.machine()
    assert (cpu["numba_target"], cpu["vector_isa"], cpu["float32_lanes"]) == ("nehalem", "sse4.2", 4)


def test_info_says_when_the_disk_cache_is_off(monkeypatch):
    from fastconv import _jit

    monkeypatch.setattr(_jit, "CACHE", False)
    data = info.collect()
    assert data["jit_cache"]["enabled"] is False and data["jit_cache"]["cached"] == 0
    assert data["jit_cache"]["off_by"] in ("FASTCONV_JIT_CACHE=0", "NUMBA_DISABLE_JIT=1")
    assert f"disk cache      off ({data['jit_cache']['off_by']})" in info.format_text(data)


# --- fastconv compare --------------------------------------------------------------------------


def _report(path, rows, **environment):
    env = {"date": "2026-12-05T02:00:00+00:00", "cpu": "Test CPU", "threads": 2, "dtype": "float32"}
    env.update(environment)
    path.write_text(json.dumps({"schema": cli.SCHEMA_VERSION, "environment": env, "results": [
        {"op": op, "shape": shape, "method": method, "ms": ms, "gflops": 1.0} for op, shape, method, ms in rows]}))
    return str(path)


@pytest.fixture
def two_reports(tmp_path):
    """B: direct 2x slower, img2col unchanged, a pooling row only B has."""
    a = _report(tmp_path / "a.json", [("conv2d", "resnet_conv1", "direct", 1.5),
                                      ("conv2d", "resnet_conv1", "img2col", 4.0)])
    b = _report(tmp_path / "b.json", [("conv2d", "resnet_conv1", "direct", 3.0),
                                      ("conv2d", "resnet_conv1", "img2col", 4.0),
                                      ("max_pool2d", "vgg_pool", "direct", 0.25)],
                date="2026-12-06T03:00:00+00:00", threads=1)
    return a, b


def _line(text, *words):
    (found,) = [line for line in text.splitlines() if all(w in line.split() for w in words)]
    return found


def test_compare_ratio_flags_and_unmatched_rows(capsys, two_reports):
    a, b = two_reports
    code, out = run(capsys, "compare", a, b)
    assert code == 0
    text = out.out
    slower = _line(text, "conv2d", "resnet_conv1", "direct")
    assert slower.split()[3:] == ["1.500", "3.000", "2.00x", "slower"]
    same = _line(text, "conv2d", "resnet_conv1", "img2col")
    assert same.split()[3:] == ["4.000", "4.000", "1.00x"]
    assert "only in B: max_pool2d vgg_pool direct" in text and "only in A:" not in text
    # the header: both environments' date, CPU, threads; and that the thread counts differ
    assert "2026-12-05T02:00:00+00:00  Test CPU  threads=2" in text
    assert "2026-12-06T03:00:00+00:00  Test CPU  threads=1" in text
    assert "differ in threads" in text
    assert "2 row(s) in both: 1 slower, 0 faster, 1 within 10%; 0 only in A, 1 only in B" in text


def test_compare_fail_on_regression(capsys, two_reports):
    a, b = two_reports
    assert cli.main(["compare", a, b, "--fail-on-regression"]) == 1
    # 2x is within a 150% threshold, and B -> A is faster, not a regression
    assert cli.main(["compare", a, b, "--fail-on-regression", "--threshold", "1.5"]) == 0
    assert cli.main(["compare", b, a, "--fail-on-regression"]) == 0
    reverse = capsys.readouterr().out.split("fastconv compare")[-1]
    assert _line(reverse, "direct", "resnet_conv1").split()[-2:] == ["0.50x", "faster"]
    assert "only in A: max_pool2d vgg_pool direct" in reverse


def test_compare_reads_what_bench_writes(capsys, tmp_path):
    path = tmp_path / "r.json"
    assert cli.main(["bench", "--shape", "conv2d:1,2,9,9,3,3,3,1,1", "--methods", "loop,vectorized", "--threads", "1",
                     "--json", str(path), "--no-progress"]) == 0
    capsys.readouterr()
    code, out = run(capsys, "compare", str(path), str(path), "--fail-on-regression")
    assert code == 0
    assert "2 row(s) in both: 0 slower, 0 faster, 2 within 10%" in out.out
    assert _line(out.out, "conv2d", "loop*").split()[-1] == "1.00x"  # extrapolated rows are marked


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "cannot read"),
        ("{not json", "is not JSON"),
        ("[1, 2]", "is not a report of 'fastconv bench --json'"),
        ('{"schema": 99, "results": []}', "has report schema 99; this fastconv reads schema 1"),
        ('{"schema": 1, "environment": {}, "mixed_step": {}}', "is a 'bench --mixed' report"),
        ('{"schema": 1, "results": [{"op": "conv2d", "shape": "s"}]}',
         "row 0 lacks one of the fields op, shape, method"),
        ('{"schema": 1, "results": [{"op": "conv2d", "shape": "s", "method": "direct", "ms": 0}]}',
         "row 0 (conv2d s direct) has no positive time 'ms', got 0"),
    ],
)
def test_compare_bad_files_are_usage_errors(capsys, tmp_path, two_reports, content, message):
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    with pytest.raises(SystemExit) as exc:
        cli.main(["compare", two_reports[0], str(bad)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and str(bad) in err


@pytest.mark.parametrize("threshold", ["-0.1", "nan", "inf"])
def test_compare_bad_threshold(capsys, two_reports, threshold):
    with pytest.raises(SystemExit) as exc:
        cli.main(["compare", *two_reports, "--threshold", threshold])
    assert exc.value.code == 2 and "--threshold must be a finite fraction >= 0" in capsys.readouterr().err


# --- the progress bar ----------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _fake_measure(problem, methods, threads, dtype, backward, repeats=1):
    return [bench.Row(problem.op, problem.name, "vectorized", 1.0, 1.0, 1.0, problem.flops())]


TWO_SHAPES = ["bench", "--shape", "conv2d:1,1,6,6,1,3,3,1,0", "--shape", "max_pool2d:1,1,8,8,2,2,0",
              "--methods", "vectorized", "--threads", "1"]


def test_no_progress_output_when_stderr_is_not_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr(cli.bench, "measure", _fake_measure)
    code, out = run(capsys, *TWO_SHAPES)
    assert code == 0 and out.err == ""
    assert out.out.count("vectorized") == 2


def test_progress_bar_on_a_terminal_and_not_with_no_progress(capsys, monkeypatch):
    pytest.importorskip("tqdm")
    monkeypatch.setattr(cli.bench, "measure", _fake_measure)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert cli.main(TWO_SHAPES) == 0
    assert "1/2" in terminal.getvalue() and "shape" in terminal.getvalue()
    assert "1/2" not in capsys.readouterr().out  # the bar went to stderr only
    terminal.seek(0), terminal.truncate()
    assert cli.main(TWO_SHAPES + ["--no-progress"]) == 0
    assert terminal.getvalue() == ""


def test_no_progress_bar_without_tqdm(capsys, monkeypatch):
    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name.startswith("tqdm"):
            raise ImportError("No module named 'tqdm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    monkeypatch.setattr(cli.bench, "measure", _fake_measure)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert cli.main(TWO_SHAPES) == 0
    assert terminal.getvalue() == ""
    assert capsys.readouterr().out.count("vectorized") == 2


# --- the --plot figure ---------------------------------------------------------------------------

PLOT_ENV = {"date": "2026-12-05T02:00:00+00:00", "cpu": "Test CPU 9000", "threads": 2, "dtype": "float32",
            "fastconv": "0.1.0", "numpy": "2.0", "numba": "0.60", "torch": "2.13.0"}


def _row(op, shape, method, ms, torch_ms=None, copy_ms=None, extrapolated=False, chosen=None):
    """A report row as bench writes it, for a problem of 1 GFLOP and 0.1 GB moved."""
    return {"op": op, "shape": shape, "method": method, "ms": ms, "gflops": 1e3 / ms, "gbps": 1e2 / ms,
            "speedup_vs_torch": None if torch_ms is None else torch_ms / ms,
            "fraction_of_copy": None if copy_ms is None else copy_ms / ms, "extrapolated": extrapolated,
            "chosen": chosen}


def _plot_rows(torch=True, suffix=""):
    """Two convolutions and a pooling: loop (extrapolated), vectorized, direct, auto (ran direct),
    torch when ``torch``; the pooling also np.copyto."""
    rows = []
    for op, shape, times, copy in [("conv2d", "resnet_3x3_28", (9.0, 2.0, 4.0), None),
                                   ("conv2d", "lenet_conv1", (3.0, 0.5, 1.0), None),
                                   ("max_pool2d", "resnet_maxpool", (4.0, 0.4, 2.0), 0.1)]:
        vect, direct, torch_ms = times
        t = torch_ms if torch else None
        rows += [_row(op + suffix, shape, "loop", 5e4, t, copy, extrapolated=True),
                 _row(op + suffix, shape, "vectorized", vect, t, copy),
                 _row(op + suffix, shape, "direct", direct, t, copy),
                 _row(op + suffix, shape, "auto", direct * 1.02, t, copy, chosen="direct")]
        if torch:
            rows.append(_row(op + suffix, shape, "torch", torch_ms, t, copy))
        if copy is not None:
            rows.append(_row(op + suffix, shape, "copyto", copy, t, copy))
    return rows


def _bars_by_method(ax):
    """{method: BarContainer} of one panel."""
    from matplotlib.container import BarContainer

    return {c.get_label(): c for c in ax.containers if isinstance(c, BarContainer)}


def _outside(fig, legend, ax):
    renderer = fig.canvas.get_renderer()
    return not legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))


def test_plot_three_panels_against_torch_gflops_and_copy(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.colors import to_rgba

    path = tmp_path / "p.png"
    fig = cli.plot(_plot_rows(), str(path), PLOT_ENV)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(fig.axes) == 3
    first, conv, pool = fig.axes
    title = fig.get_suptitle()
    for word in ("Test CPU 9000", "2 threads", "float32", "2026-12-05", "torch 2.13.0"):
        assert word in title, word
    # (1) x PyTorch: log scale, the 1x line, bars from it (up = faster, down = slower), torch not a bar
    assert first.get_yscale() == "log"
    assert any(list(line.get_ydata()) == [1, 1] for line in first.get_lines())
    assert "PyTorch" in first.get_title(loc="left") and "PyTorch" in first.get_ylabel()
    speed = _bars_by_method(first)
    assert set(speed) == {"vectorized", "direct", "auto"}
    bar = speed["vectorized"].patches[0]  # resnet_3x3_28: 9 ms against torch's 4, 0.44x: down from the line
    assert sorted([bar.get_y(), bar.get_y() + bar.get_height()]) == pytest.approx([4.0 / 9.0, 1.0])
    assert all(p.get_y() == pytest.approx(1.0) and p.get_height() > 0 for p in speed["direct"].patches)
    # (2) convolutions in GFLOP/s, log; (3) pooling in GB/s with np.copyto's bandwidth drawn
    assert conv.get_yscale() == "log" and "GFLOP/s" in conv.get_title(loc="left") + conv.get_ylabel()
    assert [t.get_text() for t in conv.get_xticklabels()] == ["resnet_3x3_28", "lenet_conv1"]
    assert all(t.get_rotation() == 30 for t in conv.get_xticklabels())
    assert set(_bars_by_method(conv)) == {"vectorized", "direct", "auto", "torch"}
    assert [t.get_text() for t in pool.get_xticklabels()] == ["resnet_maxpool"]
    assert "GB/s" in pool.get_ylabel() and "copyto" in pool.get_title(loc="left")
    (copy_line,) = [c for c in pool.collections if c.get_label() == "np.copyto"]
    assert copy_line.get_segments()[0][0][1] == pytest.approx(1e2 / 0.1)  # np.copyto's GB/s
    assert "copyto" not in _bars_by_method(pool)
    # the extrapolated loop is left out of every panel, and the legend says so
    assert all("loop" not in _bars_by_method(ax) for ax in fig.axes)
    # one colour per method in every panel; auto striped in the colour of what it ran (direct)
    for method in ("vectorized", "direct"):
        colours = {to_rgba(p.get_facecolor()) for ax in fig.axes for p in _bars_by_method(ax)[method].patches}
        assert len(colours) == 1, method
    direct = to_rgba(_bars_by_method(conv)["direct"].patches[0].get_facecolor())
    for ax in fig.axes:
        assert all(to_rgba(p.get_facecolor()) == direct and p.get_hatch() for p in _bars_by_method(ax)["auto"])
    # the legend names the methods, sits outside the first panel, and explains auto and the loop
    legend = first.get_legend()
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels[:3] == ["vectorized", "direct", "torch"]
    assert any(t.startswith("auto") and "strategy it ran" in t for t in labels)
    assert any("not drawn: loop" in t for t in labels)
    assert _outside(fig, legend, first) and _outside(fig, legend, conv) and _outside(fig, pool.get_legend(), pool)


def test_plot_without_torch_says_so(tmp_path):
    pytest.importorskip("matplotlib")
    env = dict(PLOT_ENV, torch=None)
    path = tmp_path / "p.png"
    fig = cli.plot(_plot_rows(torch=False), str(path), env)
    assert path.exists() and len(fig.axes) == 3
    first, conv, pool = fig.axes
    assert not _bars_by_method(first)
    assert any("PyTorch is not installed" in t.get_text() for t in first.texts)
    assert "torch not installed" in fig.get_suptitle()
    assert set(_bars_by_method(conv)) == {"vectorized", "direct", "auto"}
    assert _outside(fig, conv.get_legend(), conv)  # the legend moves to the first panel with bars
    # PyTorch installed but left out of --methods: the panel says that instead
    fig = cli.plot(_plot_rows(torch=False), str(path), PLOT_ENV)
    assert any("torch was not among --methods" in t.get_text() for t in fig.axes[0].texts)


def test_plot_of_a_backward_report(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "p.png"
    fig = cli.plot(_plot_rows(suffix="_backward"), str(path), PLOT_ENV)
    assert path.exists() and len(fig.axes) == 3
    first, conv, pool = fig.axes
    assert "backward" in fig.get_suptitle()
    assert [t.get_text() for t in conv.get_xticklabels()] == ["resnet_3x3_28", "lenet_conv1"]
    assert set(_bars_by_method(first)) == {"vectorized", "direct", "auto"}
    assert set(_bars_by_method(pool)) == {"vectorized", "direct", "auto", "torch"}


def test_plot_of_a_report_without_pooling_or_environment(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [r for r in _plot_rows() if r["op"] == "conv2d"]
    fig = cli.plot(rows, str(tmp_path / "p.png"))
    assert len(fig.axes) == 3 and fig.get_suptitle() == "fastconv bench"
    assert any("No pooling rows" in t.get_text() for t in fig.axes[2].texts)


def test_bench_writes_the_plot(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "bench.png"
    assert cli.main(["bench", "--shape", "conv2d:1,2,9,9,3,3,3,1,1", "--shape", "max_pool2d:1,2,8,8,2,2,0",
                     "--methods", "vectorized,direct", "--threads", "1", "--no-progress", "--plot", str(path)]) == 0
    assert f"wrote {path}" in capsys.readouterr().out
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
