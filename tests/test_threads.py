"""The thread policy (fastconv.threads): what import does to BLAS, what calls do, what is left alone.

Import-time behaviour is checked in fresh processes (the policy is applied once, at import).
Speed is not asserted here: the mixed step's ratios are a benchmark (``fastconv bench --mixed``).
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import threadpoolctl

import fastconv
from fastconv import threads
from fastconv.strategies import img2col


def _blas_counts():
    """Thread counts of NumPy's BLAS (the one fastconv's GEMMs call)."""
    return [c.num_threads for c in threads.numpy_blas()]


@pytest.fixture(autouse=True)
def _libraries_loaded():
    """Compile/load img2col first: a first call may load another BLAS (which a limit set before misses)."""
    x, w = np.ones((2, 3, 9, 9), np.float32), np.ones((130, 3, 3, 3), np.float32)
    fastconv.conv2d(x, w, method="img2col")
    fastconv.conv2d_backward(np.ones((2, 130, 7, 7), np.float32), x, w, method="img2col")


def _fresh(code: str, **env) -> dict:
    """Run ``code`` (which prints one JSON line last) in a fresh interpreter with ``env`` added."""
    full = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_THREAD_TIMEOUT", "FASTCONV_BLAS_IDLE")}
    full.update(env)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


_REPORT = """
    import json, os, threadpoolctl
    import numpy as np
    def counts():
        return {{c.filepath: c.num_threads
                 for c in threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers}}
    before = counts()
    a = np.ones((64, 64), np.float32); a @ a
    {prelude}
    import fastconv
    after_import = counts()
    x = np.ones((2, 3, 9, 9), np.float32); w = np.ones((130, 3, 3, 3), np.float32)
    fastconv.conv2d(x, w, method="img2col"); fastconv.conv2d(x, w, method="direct"); a @ a
    p = fastconv.threads.policy()
    extra = {{}}
    {epilogue}
    print(json.dumps({{**extra, "before": before, "after_import": after_import, "after_calls": counts(),
                      "env": os.environ.get("OPENBLAS_THREAD_TIMEOUT"), "idle": [b["idle"] for b in p.blas],
                      "apis": [b["internal_api"] for b in p.blas], "notes": list(p.notes), "text": str(p)}}))
"""


def _openblas_pthreads():
    libs = threadpoolctl.ThreadpoolController().select(internal_api="openblas").lib_controllers
    return any(getattr(c, "threading_layer", None) == "pthreads" for c in libs)


needs_openblas = pytest.mark.skipif(not _openblas_pthreads(), reason="NumPy's BLAS is not a pthreads OpenBLAS")


@needs_openblas
def test_import_makes_openblas_idle_threads_sleep_and_keeps_thread_counts():
    r = _fresh(_REPORT.format(prelude="", epilogue=""))
    assert r["env"] == threads.SLEEP_TIMEOUT
    for lib, count in r["before"].items():  # counts never changed (libraries loaded later aside)
        assert r["after_import"][lib] == r["after_calls"][lib] == count
    assert any(idle == threads._SETTING for api, idle in zip(r["apis"], r["idle"]) if api == "openblas")
    assert "idle threads spin 2**16 cycles" in r["text"] and not r["notes"]


@needs_openblas
def test_a_users_own_timeout_is_left_alone():
    r = _fresh(_REPORT.format(prelude="", epilogue=""), OPENBLAS_THREAD_TIMEOUT="10")
    assert r["env"] == "10"
    assert any("set by the user" in n for n in r["notes"])
    assert any(idle == "spin ~2**10 cycles, then sleep" for idle in r["idle"])


@needs_openblas
def test_opting_out_leaves_blas_spinning():
    r = _fresh(_REPORT.format(prelude="", epilogue=""), FASTCONV_BLAS_IDLE="spin")
    assert r["env"] is None
    assert any("FASTCONV_BLAS_IDLE=spin" in n for n in r["notes"])
    assert any("OpenBLAS's default" in idle for idle in r["idle"])


@needs_openblas
def test_other_threads_at_import_defer_the_restart_until_share_cores():
    prelude = """
    import threading
    stop = threading.Event(); t = threading.Thread(target=stop.wait); t.start()
    """
    epilogue = """extra["deferred"] = list(p.notes); p = fastconv.share_cores(); stop.set(); t.join()"""
    r = _fresh(_REPORT.format(prelude=prelude, epilogue=epilogue))
    assert any("other Python thread" in n for n in r["deferred"])
    assert not r["notes"] and threads._SETTING in r["idle"]


def test_num_threads_restores_numba_and_never_touches_blas():
    blas = _blas_counts()
    saved = fastconv.get_num_threads()
    with fastconv.num_threads(1):
        assert fastconv.get_num_threads() == 1
        assert _blas_counts() == blas
    assert fastconv.get_num_threads() == saved and _blas_counts() == blas


def test_blas_threads_lowers_for_the_block_only_and_never_raises():
    blas = _blas_counts()
    with threads.blas_threads(1):
        assert set(_blas_counts()) == {1}
    assert _blas_counts() == blas
    with threadpoolctl.threadpool_limits(1, user_api="blas"):  # the user's own limit
        with threads.blas_threads(2):
            assert set(_blas_counts()) == {1}
        fastconv.conv2d(np.ones((2, 3, 9, 9), np.float32), np.ones((130, 3, 3, 3), np.float32), method="img2col")
        assert set(_blas_counts()) == {1}
    assert _blas_counts() == blas


@pytest.mark.parametrize("op", ["forward", "backward"])
def test_fastconvs_own_gemms_use_at_most_its_thread_count(monkeypatch, op):
    seen = []
    real = np.matmul

    def spy(*args, **kwargs):
        seen.append(max(_blas_counts()))
        return real(*args, **kwargs)

    monkeypatch.setattr(img2col.np, "matmul", spy)
    x = np.ones((2, 3, 9, 9), np.float32)
    w = np.ones((130, 3, 3, 3), np.float32)
    blas = _blas_counts()
    with fastconv.num_threads(1):
        if op == "forward":
            fastconv.conv2d(x, w, method="img2col")
        else:
            fastconv.conv2d_backward(np.ones((2, 130, 7, 7), np.float32), x, w, method="img2col")
    monkeypatch.undo()
    assert seen and set(seen) == {1}
    assert _blas_counts() == blas


def test_explain_says_what_the_policy_does():
    text = str(fastconv.explain("conv2d", (1, 64, 56, 56), (64, 64, 3, 3), padding=1))
    assert "threads: Numba layer" in text and "GEMMs inside fastconv use <= its thread count" in text


def test_mixed_step_report_is_complete():
    from fastconv import mixed

    r = mixed.mixed_step(steps=2)
    assert set(r["ops"]) == {"conv1", "relu+pool1", "conv2", "relu+pool2", "dense"}
    for row in list(r["ops"].values()) + list(r["after_matmul"].values()):
        late = row.get("in_step_ms", row.get("after_matmul_ms"))
        assert row["alone_ms"] > 0 and late > 0
        assert row["ratio"] == pytest.approx(late / row["alone_ms"])
    assert r["step_ms"] >= 0.9 * sum(row["in_step_ms"] for row in r["ops"].values())
    text = mixed.format_mixed(r)
    assert "conv2" in text and "right after a 256x256 @" in text
    assert mixed.make_step()().shape == (64, 256)
