"""A multi-channel image larger than you want in memory, filtered on a dask.distributed cluster.

    pip install -e ".[dask]"
    python examples/large_image.py                       # 8192 x 8192 x 3 image, conv + ReLU + max pool
    python examples/large_image.py --size 16384 --channels 1 --filter-only --compare   # the benchmark

Steps: write a synthetic ``(C, size, size)`` float32 image to a zarr store on disk (chunk by chunk:
it never exists in memory), open it lazily with ``dask.array.from_zarr``, run
``max_pool2d(relu(conv2d(x, w, b, padding="same")), 2)`` with fastconv on a ``LocalCluster`` of
worker *processes*, and write the result to another zarr store. fastconv takes dask arrays
directly (dask arrays in, dask arrays out; see fastconv/_dask.py): every chunk is read with the
halo its windows need, and each output element is computed once.

The result is written to ``<name>.partial`` and renamed to ``<name>`` only when every chunk has
been written: a failure raises, removes the partial store and never leaves a half-written result
under the final name.

Printed: the wall time of the pipeline, its throughput (input megapixels per second), and the
peak resident memory of the whole process tree (this process and every worker), sampled every
20 ms, next to the tree's memory before the computation (interpreters, NumPy, Numba and the
compiled kernels: the fixed overhead). ``--compare`` runs the same single-channel filter through
dask-image's ``ndfilters.correlate`` (scipy.ndimage per chunk) on the same chunks and cluster.
"""

from __future__ import annotations

import argparse
import os
import shutil
import threading
import time

import numpy as np

import fastconv
from fastconv._dask import require


def write_synthetic(path: str, channels: int, size: int, chunk: tuple, seed: int = 0) -> None:
    """A ``(channels, size, size)`` float32 zarr array of noise, written chunk by chunk (``chunk``: rows, columns)."""
    da = require("large_image", "dask.array")
    rng = da.random.default_rng(seed)
    image = rng.standard_normal((channels, size, size), chunks=(channels,) + tuple(chunk), dtype=np.float32)
    write_zarr(image, path)


def write_zarr(array, path: str) -> None:
    """Store ``array`` at ``path`` all or nothing: written under ``path + '.partial'``, renamed when complete.

    If computing or writing any chunk fails, the error is raised, nothing appears at ``path`` (whatever
    was there before is left as it was) and the partial store is removed (best effort: a chunk
    another worker was still writing may leave a ``.partial`` behind, which the next call clears).
    """
    require("write_zarr", "zarr")
    partial = path + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        array.to_zarr(partial, mode="w", compressors=None)  # noise does not compress: spare the CPU
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(path, ignore_errors=True)
    os.rename(partial, path)


def pipeline(image, weight, bias):
    """conv2d ('same') + ReLU + 2x2 max pooling of a ``(C, H, W)`` dask array: lazy."""
    y = fastconv.conv2d(image, weight, bias, padding="same")
    return fastconv.max_pool2d(y.clip(min=0), 2)


class PeakMemory:
    """Samples the resident memory of this process and all its children (the cluster) in a thread."""

    def __init__(self, interval: float = 0.02):
        psutil = require("PeakMemory", "psutil")
        self._root = psutil.Process()
        self._interval = interval
        self.peak = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        total = 0
        for process in [self._root] + self._root.children(recursive=True):
            try:
                total += process.memory_info().rss
            except Exception:  # a process that ended between listing and reading
                pass
        return total

    def _run(self):
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self.now())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


#: What the example's workers do with freed memory. dask's nanny starts workers with
#: ``MALLOC_TRIM_THRESHOLD_=65536``: glibc hands freed memory back to the OS at once, so every
#: chunk-sized array is fresh pages again. On the VMs this was measured on a fresh page costs so
#: much (a 16 MB array: ~10 ms of page faults) that the pipeline's time went to the kernel's page
#: faults, not to filtering: with glibc keeping freed chunks (trim threshold 1 GiB, arrays up to
#: 32 MiB from the heap instead of fresh mmaps) a 2048x2048 chunk's 5x5 filter took 20 ms instead
#: of 90. Both libraries run with the same setting; ``--return-memory`` keeps dask's.
KEEP_FREED_MEMORY = {"MALLOC_TRIM_THRESHOLD_": str(2**30), "MALLOC_MMAP_THRESHOLD_": str(2**25)}


def run(args) -> None:
    dask = require("large_image", "dask")
    da = require("large_image", "dask.array")
    distributed = require("large_image", "distributed")
    chunk = args.chunk if len(args.chunk) == 2 else args.chunk * 2
    chunk = tuple(min(c, args.size) for c in chunk)
    source = os.path.join(args.store, f"image-{args.channels}x{args.size}-chunk{chunk[0]}x{chunk[1]}.zarr")
    if not os.path.exists(source):
        start = time.perf_counter()
        write_synthetic(source, args.channels, args.size, chunk)
        print(f"wrote {source} in {time.perf_counter() - start:.1f} s")
    image = da.from_zarr(source)
    rng = np.random.default_rng(1)
    k = args.kernel
    if args.filter_only:
        weight = rng.standard_normal((k, k)).astype(np.float32) / k
    else:
        weight = rng.standard_normal((args.out_channels, args.channels, k, k)).astype(np.float32)
        weight /= np.sqrt(args.channels * k * k)
    print(f"image {image.shape} {image.dtype} ({image.nbytes / 2**30:.2f} GiB), chunks {image.chunksize}, "
          f"kernel {k}x{k}")
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    if not args.return_memory:
        environ.update(KEEP_FREED_MEMORY)
    runs = [("fastconv", w) for w in args.workers]
    if args.compare:
        runs += [("dask-image", w) for w in args.workers]
    for name, workers in runs:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}), \
                distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                         dashboard_address=":0", silence_logs=40) as cluster, \
                distributed.Client(cluster) as client:
            if args.filter_only:
                plane = image[0]
                if name == "fastconv":
                    result = fastconv.conv2d(plane[None], weight[None, None], padding="same")[0]
                else:
                    ndfilters = require("large_image --compare", "dask_image.ndfilters")
                    result = ndfilters.correlate(plane, weight, mode="constant", cval=0.0)
            else:
                result = pipeline(image, weight, np.zeros(args.out_channels, np.float32))
            if name == "fastconv":  # every worker compiles (or loads from Numba's cache) its kernels
                client.run(fastconv.warmup)
            memory = PeakMemory()
            baseline = memory.now()  # the fixed overhead: interpreters, libraries, compiled kernels
            # Warm the workers on two rows of chunks (a long-running cluster is warm), then the whole image.
            rows = sum(result.chunks[-2][:2])
            result[..., :rows, :].sum().compute()
            target = os.path.join(args.store, f"result-{name}.zarr")
            with memory:
                start = time.perf_counter()
                if args.no_write:  # the filter alone: read, filter, and a checksum instead of a store
                    result.sum().compute()
                else:
                    write_zarr(result, target)
                seconds = time.perf_counter() - start
            megapixels = image.shape[-1] * image.shape[-2] * image.shape[0] / 1e6
            print(f"{name:10s} {workers} worker process(es): {seconds:6.2f} s, {megapixels / seconds:7.1f} "
                  f"Mpixel/s; process tree {baseline / 2**20:4.0f} MiB before (fixed), peak "
                  f"{memory.peak / 2**20:4.0f} MiB (+{(memory.peak - baseline) / 2**20:.0f} MiB = "
                  f"{(memory.peak - baseline) / image.nbytes:.1%} of the image)")
    if args.compare and args.filter_only and not args.no_write:
        a = da.from_zarr(os.path.join(args.store, "result-fastconv.zarr"))
        b = da.from_zarr(os.path.join(args.store, "result-dask-image.zarr"))
        difference = float(abs(a - b).max().compute())
        print(f"largest difference fastconv vs dask-image: {difference:.2e}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192, help="image height and width (default 8192)")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--out-channels", type=int, default=8)
    parser.add_argument("--kernel", type=int, default=5, help="odd kernel size (default 5)")
    parser.add_argument("--chunk", type=int, nargs="+", default=[256, 16384],
                        help="zarr / dask chunk: rows [columns] (default 256 16384: stripes)")
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="worker processes (several: one run each)")
    parser.add_argument("--store", default=os.path.join(os.getcwd(), "large-image-data"),
                        help="directory for the zarr stores")
    parser.add_argument("--filter-only", action="store_true", help="a single-channel 2D filter, nothing else")
    parser.add_argument("--compare", action="store_true", help="also run dask-image's ndfilters.correlate")
    parser.add_argument("--no-write", action="store_true", help="time reading and filtering only (no store)")
    parser.add_argument("--return-memory", action="store_true",
                        help="workers hand freed memory back to the OS at once (dask's default; slower here)")
    args = parser.parse_args(argv)
    if args.kernel % 2 == 0:
        parser.error("--kernel must be odd (dask-image's correlate centres the kernel)")
    os.makedirs(args.store, exist_ok=True)
    run(args)


if __name__ == "__main__":
    main()
