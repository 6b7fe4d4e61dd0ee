#!/usr/bin/env python
"""Benchmark xpcnn's training speed against PyTorch's own layers and the article's loops.

Workloads (float32 by default):
  bench    conv 1->F 5x5 (F=8), sigmoid, flatten, dense F*576 -> 10, softmax cross-entropy, SGD,
           batch 128, MNIST-sized images (the embedded digits)
  article  the article's network (conv 1->3 5x5, sigmoid, dense 1728 -> 1, sigmoid, 1/2 squared
           error, gradient descent) on its 200-image binary task, one full batch per epoch

Timed in one process on the same data: xpcnn on every available backend; the same network in
PyTorch (nn.Conv2d / nn.Linear / autograd) on the CPU, and on CUDA when present; and a naive
baseline in the article's style (Python loops over images, filters and patches) on a small
subset, scaled to a full epoch.  Warm-up first, then the median of --repeats epochs; GPU
timings synchronise the device before the clock is read.  On NumPy it also times the same code
with each batch run as pieces of --chunk images, and over --threads threads (xpcnn.training.executors).
PyTorch uses every core by default; --torch-threads 1 (or 1,2,...) adds PyTorch rows held to
that many threads and prints each xpcnn CPU row against them: the per-core comparison.
--ranks 2 (or 2,4,...) adds xpcnn on NumPy data-parallel over that many MPI ranks, each rank on one
core: one mpiexec job per rank count, run from here after the in-process rows
(benchmark_ranks), which times N ranks, one rank and PyTorch's network round-robin, and
gives the speed-up over one rank, the ratio to that PyTorch and the gradient exchange per step.
Before timing it sets OPENBLAS_THREAD_TIMEOUT and glibc's malloc thresholds (xpcnn.training.hostmem)
for every implementation alike; the JSON records both.

  python scripts/bench.py                         # both workloads, table + bench.json
  python scripts/bench.py --batch-sizes 32,128,512 --filters 8,32 --plot
  python scripts/bench.py --workload bench --backends numpy --torch-threads 1
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

# NumPy's OpenBLAS keeps its worker threads spinning for about 0.1 s of CPU after every matrix
# product.  On a small machine they then hold the cores that the next implementation in the
# round-robin needs: PyTorch measured up to 2x slower right after an xpcnn epoch.  Let them sleep
# at once (before NumPy loads OpenBLAS; a value set by the user wins).  docs/performance.md.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
# CuPy, PyTorch and JAX share the GPU in this process: JAX must not take 75% of its memory at
# start-up (its default).  A value set by the user wins.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import benchmark  # noqa: E402
import benchmark_ranks  # noqa: E402
from benchmark import SPECS, machine, run, scale_check  # noqa: E402

from xpcnn.backends import available  # noqa: E402
from xpcnn.io.files import check_writable_file, write_json  # noqa: E402
from xpcnn.nn.conv import Conv2D  # noqa: E402
from xpcnn.training.hostmem import keep_freed_memory  # noqa: E402


def print_table(result: dict) -> None:
    print(f"\nworkload {result['workload']}: {result['images']} images/epoch, batch {result['batch']}, "
          f"filters {result['filters'] if result['workload'] == 'bench' else 3}, {result['dtype']}, "
          f"median of {result['repeats']}")
    print(f"  {'implementation':<40} {'epoch (s)':>10} {'images/s':>10} {'xpcnn/pytorch':>14} {'xpcnn/naive':>12}")
    for row in result["rows"]:
        vs_torch = f"{row['speed_vs_pytorch']:.2f}x" if row.get("speed_vs_pytorch") else ""
        vs_naive = f"{row['speed_vs_naive']:.0f}x" if row.get("speed_vs_naive") else ""
        print(f"  {row['impl']:<40} {row['epoch_s']:10.4f} {row['images_per_s']:10.0f} {vs_torch:>14} {vs_naive:>12}")
    for row in result["rows"]:
        for held, ratio in row.get("speed_vs_pytorch_threads", {}).items():
            print(f"  {row['impl']:<40} vs pytorch nn cpu, {held}: {ratio:.2f}x")
        if row.get("speed_vs_torch_compile"):
            print(f"  {row['impl']:<40} vs pytorch torch.compile reduce-overhead: {row['speed_vs_torch_compile']:.2f}x")


def counts(parser, flag: str, text: str) -> list[int]:
    """A flag's comma-separated integers >= 1 (an empty string: none); a usage error otherwise."""
    try:
        values = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        parser.error(f"{flag} takes comma-separated integers, got {text!r}")
    if values and min(values) < 1:
        parser.error(f"{flag} must be >= 1, got {text!r}")
    return values


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--workload", choices=("bench", "article", "both"), default="both")
    parser.add_argument("--batch-sizes", default="128", help="comma-separated batch sizes for 'bench'")
    parser.add_argument("--filters", default="8", help="comma-separated filter counts for 'bench'")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backends", default=",".join(SPECS), help="xpcnn backends to time (those available)")
    parser.add_argument("--naive-subset", type=int, default=20, help="images the naive loops are timed on")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                        help="also time xpcnn on NumPy with each batch split over this many threads "
                             "(xpcnn.parallel; 1: no such row; default: 2 where there are 2 cores)")
    parser.add_argument("--chunk", type=int, default=64,
                        help="also time xpcnn on NumPy with each batch run as pieces of at most this many "
                             "images, and use them in the threads row (0: no pieces; default 64)")
    parser.add_argument("--torch-threads", default="", metavar="N[,M...]",
                        help="also time PyTorch on the CPU held to each of these intra-op thread counts "
                             "(the per-core comparison; the xpcnn/pytorch column stays against PyTorch's "
                             "default, all cores)")
    parser.add_argument("--ranks", default="", metavar="N[,M...]",
                        help="also time xpcnn on NumPy data-parallel over each of these numbers of MPI ranks "
                             "(mpiexec -n N, xpcnn.distributed; with --chunk pieces inside each rank), "
                             "plus one rank for the scaling efficiency; needs xpcnn[mpi]")
    parser.add_argument("--scale", action="store_true",
                        help="also time numpy on 5,000 and 60,000 images (linear-scaling check)")
    parser.add_argument("--im2col", choices=Conv2D.IM2COL, default="auto",
                        help="how xpcnn's convolution builds its patches: auto (gather on a GPU, slices on a "
                             "CPU), slices or gather")
    parser.add_argument("--out", default="bench.json")
    parser.add_argument("--plot", action="store_true", help="images/s over batch size and filters -> bench.png")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.chunk < 0:
        parser.error("--chunk must be >= 0")
    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
        filter_counts = [int(f) for f in args.filters.split(",")]
    except ValueError:
        parser.error("--batch-sizes and --filters take comma-separated integers")
    if min(batch_sizes) < 1 or min(filter_counts) < 1:
        parser.error("--batch-sizes and --filters must be >= 1")
    torch_threads = counts(parser, "--torch-threads", args.torch_threads)
    if torch_threads and importlib.util.find_spec("torch") is None:
        parser.error("--torch-threads needs PyTorch: pip install torch")
    ranks = counts(parser, "--ranks", args.ranks)
    if ranks and (importlib.util.find_spec("mpi4py") is None or benchmark_ranks.find_mpiexec() is None):
        parser.error("--ranks needs mpi4py and mpiexec: pip install 'xpcnn[mpi]'")
    # Check what would fail at the end before spending minutes on timings.
    problem = check_writable_file(args.out)
    if problem:
        parser.error(f"--out: {problem}")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        parser.error("--plot needs matplotlib: pip install 'xpcnn[plot]'")
    benchmark.IM2COL = args.im2col
    specs = available([s for s in args.backends.split(",") if s])
    allocator = keep_freed_memory()  # for every implementation timed here, PyTorch's included
    report = {"machine": {**machine(), "allocator": allocator}, "im2col": benchmark.IM2COL, "results": []}
    print(f"machine: {report['machine']}")
    if args.workload in ("article", "both"):
        result = run("article", 200, 3, args.dtype, args.repeats, specs, args.naive_subset, threads=args.threads,
                     chunk=args.chunk or None, torch_threads=torch_threads)
        print_table(result)
        report["results"].append(result)
    if args.workload in ("bench", "both"):
        for filters in filter_counts:
            for batch in batch_sizes:
                result = run("bench", batch, filters, args.dtype, args.repeats, specs, args.naive_subset,
                             threads=args.threads,
                             chunk=args.chunk or None, naive=(batch == batch_sizes[0]), torch_threads=torch_threads)
                if ranks:
                    benchmark_ranks.add_rank_rows(result, ranks, args.chunk or None)
                print_table(result)
                for line in benchmark_ranks.format_rank_rows(result):
                    print(line)
                report["results"].append(result)
    if args.scale:
        report["scale"] = scale_check(args.dtype, args.repeats)
        scale = report["scale"]
        small, large, ratio = scale["epoch_s_5000"], scale["epoch_s_60000"], scale["ratio"]
        print(f"\nscale (numpy, bench, batch 128, median of {args.repeats}, interleaved): 5,000 images {small:.3f}s, "
              f"60,000 images {large:.3f}s, ratio {ratio:.2f} (ideal 12, {100 * (ratio / 12 - 1):+.1f}%)")
    write_json(args.out, report)
    print(f"\nwrote {args.out}")
    if args.plot:
        plot(report, os.path.splitext(args.out)[0] + ".png")
    return 0


def plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from xpcnn.io.files import atomic_write

    fig, ax = plt.subplots(figsize=(7, 4))
    series: dict[str, list] = {}
    for result in report["results"]:
        if result["workload"] != "bench":
            continue
        for row in result["rows"]:
            if row["spec"] != "naive":
                name = f"{row['impl']} F={result['filters']}"
                series.setdefault(name, []).append((result["batch"], row["images_per_s"]))
    for label, points in series.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=label)
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="training images/s", title="workload 'bench'")
    batches = sorted({r["batch"] for r in report["results"] if r["workload"] == "bench"})
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    with atomic_write(path) as handle:
        fig.savefig(handle, format="png", dpi=110, bbox_inches="tight")
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
