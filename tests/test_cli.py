"""The ``fastconv bench`` command line: arguments, JSON schema, error messages. Fast: tiny problems only."""

import builtins
import json

import pytest

from fastconv import cli, shapes


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
        (["bench", "--methods", "fft"], "unknown method 'fft'"),
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
