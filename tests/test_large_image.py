"""examples/large_image.py: the zarr -> dask.distributed -> zarr pipeline, and its all-or-nothing write."""

import importlib.util
import os
import pathlib

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
pytest.importorskip("zarr")

import fastconv  # noqa: E402

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "large_image.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("large_image", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _failing(x, block_info=None):
    if block_info[None]["chunk-location"] == (1, 1):
        raise RuntimeError("disk full")
    return x


def test_write_zarr_is_all_or_nothing(example, tmp_path):
    path = str(tmp_path / "result.zarr")
    good = da.from_array(np.arange(64.0, dtype=np.float32).reshape(8, 8), chunks=4)
    example.write_zarr(good, path)
    np.testing.assert_array_equal(da.from_zarr(path).compute(), good.compute())

    bad = (good + 1).map_blocks(_failing, dtype=np.float32)
    with pytest.raises(RuntimeError, match="disk full"):
        example.write_zarr(bad, path)
    np.testing.assert_array_equal(da.from_zarr(path).compute(), good.compute())  # the old result untouched

    fresh = str(tmp_path / "never.zarr")
    with pytest.raises(RuntimeError, match="disk full"):
        example.write_zarr(bad, fresh)
    assert not os.path.exists(fresh)  # never reported as written
    example.write_zarr(good, fresh)  # the next write succeeds, and clears what a failed one left
    np.testing.assert_array_equal(da.from_zarr(fresh).compute(), good.compute())
    assert not os.path.exists(fresh + ".partial")


@pytest.mark.slow
def test_example_pipeline_matches_in_memory(example, tmp_path, capsys):
    pytest.importorskip("distributed")
    pytest.importorskip("psutil")
    example.main(["--size", "200", "--chunk", "64", "--channels", "2", "--out-channels", "3", "--kernel", "3",
                  "--workers", "1", "--store", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "Mpixel/s" in printed and "peak" in printed
    image = da.from_zarr(str(tmp_path / "image-2x200-chunk64x64.zarr")).compute()
    result = da.from_zarr(str(tmp_path / "result-fastconv.zarr")).compute()
    rng = np.random.default_rng(1)  # the example's weights, drawn the same way
    weight = rng.standard_normal((3, 2, 3, 3)).astype(np.float32) / np.sqrt(2 * 3 * 3)
    expected = fastconv.max_pool2d(np.maximum(fastconv.conv2d(image, weight, np.zeros(3, np.float32),
                                                              padding="same"), 0), 2)
    assert result.shape == (3, 100, 100)
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)
