#!/usr/bin/env python
"""Benchmark xpcnn's training speed against PyTorch's own layers and the article's loops.

Workloads (--workload, a comma-separated list; float32 by default):
  bench     conv 1->F 5x5 (F=8), sigmoid, flatten, dense F*576 -> 10, softmax cross-entropy, SGD,
            MNIST-sized images (the embedded digits)
  article   the article's network (conv 1->3 5x5, sigmoid, dense 1728 -> 1, sigmoid, 1/2 squared
            error, gradient descent) on its 200-image binary task, one full batch per epoch
  lenet5    the lenet5 preset on the embedded digits (1x28x28)
  vgg       the vgg preset on the embedded digits painted on 3x32x32 colour canvases (the images of
            scripts/colour_digits.py, colours from seed 0)
  resnet20  the resnet20 preset on the same colour images
  both      bench and article (the default)
The presets train with their recipe's optimizer, learning rate and weight decay (no schedule, no
normalisation, no augmentation), against their PyTorch twin (scripts/torch_twin.py: the same layers
and starting weights, torch.optim's same optimizer); the parameter counts of both, and both losses
before and after one step on the same images, are printed once per workload (the sanity line).
Every workload takes all 4,500 embedded digits per epoch (the article 200); --images N cuts that.

Rows, timed in one process on the same data: "xpcnn default (train.py)", what `python scripts/train.py`
runs by default (NumPy, xpcnn.training.executors.default_executor); "xpcnn numpy, 1 thread" (whole
batches, one BLAS thread); xpcnn on every other available backend, eager and, where the backend has
one, compiled; for bench and article NumPy with each batch run as pieces of --chunk images and over
--threads threads; the same network in PyTorch (nn layers, autograd) with its default threads (all
cores), held to each --torch-threads count (default 1), and on CUDA (eager and torch.compile
reduce-overhead) when present; and for bench and article a naive baseline in the article's style
(Python loops over images, filters and patches) on a small subset, scaled to a full epoch.
Implementations alternate round-robin, each timed epoch after an untimed one of its own (warm-up),
the median of --repeats; GPU timings synchronise the device before the clock is read.

Each row carries `threads` (the cores it computes on; none on a GPU), `default` (the default
command's row) and `speed_vs_pytorch`: PyTorch's time over the row's, against the PyTorch row with
the same thread count (PyTorch's default row for xpcnn's default row; PyTorch on CUDA for CUDA rows).
Peak host memory (`peak_mb`, MB = 10^6 bytes; not GPU memory): each row's implementation is built
again in a child process of its own, which resets its peak resident memory (VmHWM, via
/proc/self/clear_refs) after building the model and reports how far one epoch (the first:
compilation included) raised it above the resident memory at that point; Linux only, --no-memory
skips it.  --contend repeats each round while a child
process (a Python busy loop) keeps one core busy, and reports each row's contended time and its
slowdown (contended / quiet time); the child is killed when the round ends, however it ends.
--ranks 2 (or 2,4,...) adds xpcnn on NumPy data-parallel over that many MPI ranks (workload bench),
each rank on one core: one mpiexec job per rank count, run from here after the in-process rows
(benchmark_ranks), which times N ranks, one rank and PyTorch's network round-robin, and
gives the speed-up over one rank, the ratio to that PyTorch and the gradient exchange per step.
Before timing it sets OPENBLAS_THREAD_TIMEOUT and glibc's malloc thresholds (xpcnn.training.hostmem)
for every implementation alike; the JSON records both.

  python scripts/bench.py                         # bench and article, table + bench.json
  python scripts/bench.py --workload lenet5,vgg,resnet20,bench --batch-sizes 128 --repeats 5
  python scripts/bench.py --workload vgg --images 1280 --contend
  python scripts/bench.py --batch-sizes 32,128,512 --filters 8,32 --plot
  python scripts/bench.py --workload bench --backends numpy --torch-threads 1,2
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
from benchmark import PRESET_WORKLOADS, SPECS, WORKLOADS, machine, run, scale_check  # noqa: E402

from xpcnn.backends import available  # noqa: E402
from xpcnn.io.files import check_writable_file, write_json  # noqa: E402
from xpcnn.nn.conv import Conv2D  # noqa: E402
from xpcnn.training.hostmem import keep_freed_memory  # noqa: E402


def print_table(result: dict) -> None:
    workload = result["workload"]
    what = f", filters {result['filters']}" if workload == "bench" else ""
    shape = "x".join(map(str, result.get("image_shape", [])))
    print(f"\nworkload {workload}: {result['images']} images/epoch of {shape}, batch {result['batch']}{what}, "
          f"{result['dtype']}, median of {result['repeats']}")
    twin = result.get("twin")
    if twin:
        counts, ok = twin["parameters"], "agree" if twin["ok"] else "DIFFER"
        ours, theirs = twin["xpcnn_losses"], twin["pytorch_losses"]
        print(f"  parameters: xpcnn {counts['xpcnn']:,}, PyTorch twin {counts['pytorch']:,}; loss on {twin['images']} "
              f"images before/after one step: xpcnn {ours[0]:.5f}/{ours[1]:.5f}, "
              f"PyTorch {theirs[0]:.5f}/{theirs[1]:.5f} ({ok})")
    contend = result.get("contend")
    extra = f" {'contended':>10} {'slowdown':>9}" if contend else ""
    print(f"  {'implementation':<46} {'threads':>7} {'epoch (s)':>10} {'images/s':>10} {'vs pytorch':>10} "
          f"{'peak MB':>8}{extra} {'xpcnn/naive':>12}")
    for row in result["rows"]:
        vs_torch = f"{row['speed_vs_pytorch']:.2f}x" if row.get("speed_vs_pytorch") else ""
        vs_naive = f"{row['speed_vs_naive']:.0f}x" if row.get("speed_vs_naive") else ""
        threads = "gpu" if row.get("threads") is None else str(row["threads"])
        peak = f"{row['peak_mb']:.0f}" if row.get("peak_mb") is not None else ""
        more = ""
        if contend:
            more = f" {row['epoch_s_contended']:10.4f} {row['slowdown']:8.2f}x" if "slowdown" in row else " " * 21
        name = ("* " if row.get("default") else "  ") + row["impl"]
        print(f"  {name:<46} {threads:>7} {row['epoch_s']:10.4f} {row['images_per_s']:10.0f} {vs_torch:>10} "
              f"{peak:>8}{more} {vs_naive:>12}")
    print("  * the default command's row.  vs pytorch: against PyTorch with as many threads (its default for *)")
    for row in result["rows"]:
        if row.get("speed_vs_torch_compile"):
            print(f"  {row['impl']:<46} vs pytorch torch.compile reduce-overhead: {row['speed_vs_torch_compile']:.2f}x")


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
    parser.add_argument("--workload", default="both", metavar="W[,W...]",
                        help=f"comma-separated workloads among {', '.join(WORKLOADS)} and both (bench,article); "
                             "default both")
    parser.add_argument("--batch-sizes", default="128",
                        help="comma-separated batch sizes for every workload but article (one full batch)")
    parser.add_argument("--images", type=int, metavar="N",
                        help="train each epoch on the first N images (default: all 4,500 digits; article 200)")
    parser.add_argument("--filters", default="8", help="comma-separated filter counts for 'bench'")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backends", default=",".join(SPECS), help="xpcnn backends to time (those available)")
    parser.add_argument("--naive-subset", type=int, default=20, help="images the naive loops are timed on")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                        help="also time xpcnn on NumPy with each batch split over this many threads "
                             "(SplitStep; bench and article; 1: no such row; default: 2 where there are 2 cores)")
    parser.add_argument("--chunk", type=int, default=64,
                        help="also time xpcnn on NumPy with each batch run as pieces of at most this many "
                             "images, and use them in the threads row (0: no pieces; default 64)")
    parser.add_argument("--torch-threads", default="1", metavar="N[,M...]",
                        help="also time PyTorch on the CPU held to each of these intra-op thread counts "
                             "(default 1: the per-core comparison; '' for none): an xpcnn row's 'vs pytorch' "
                             "is against the PyTorch row with its thread count")
    parser.add_argument("--torch-devices", default="cpu,cuda", metavar="D[,D]",
                        help="PyTorch's devices to time, of those present (default cpu,cuda; '' for none)")
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="skip the peak-memory children (one fresh process and one epoch per row)")
    parser.add_argument("--contend", action="store_true",
                        help="also time every round while another process keeps one core busy; report each "
                             "row's contended time and slowdown")
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
    if args.images is not None and args.images < 1:
        parser.error(f"--images must be >= 1, got {args.images}")
    workloads: list[str] = []
    for name in (w.strip() for w in args.workload.split(",")):
        if name not in (*WORKLOADS, "both"):
            parser.error(f"--workload: unknown workload {name!r}; choose among {', '.join(WORKLOADS)} or both")
        for one in (("article", "bench") if name == "both" else (name,)):
            if one not in workloads:
                workloads.append(one)
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
    if any(w in PRESET_WORKLOADS for w in workloads) and importlib.util.find_spec("torch") is None:
        parser.error("--workload lenet5, vgg and resnet20 compare against PyTorch's twin: pip install torch")
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
    asked = [s for s in args.backends.split(",") if s]
    specs = available(asked)
    torch_on = [d for d in args.torch_devices.split(",") if d]
    if set(torch_on) - {"cpu", "cuda"}:
        parser.error(f"--torch-devices takes cpu and/or cuda, got {args.torch_devices!r}")
    missing = [s for s in asked if s not in specs] + [
        f"pytorch {d}" for d in torch_on if d not in benchmark.torch_devices()]
    if not specs and not [d for d in torch_on if d in benchmark.torch_devices()]:
        parser.error(f"nothing to time: none of --backends {args.backends!r} and no PyTorch device of "
                     f"--torch-devices {args.torch_devices!r} is available here")
    if missing:
        print(f"skipped (not available here): {', '.join(missing)}")
    allocator = keep_freed_memory()  # for every implementation timed here, PyTorch's included
    report = {"machine": {**machine(), "allocator": allocator}, "im2col": benchmark.IM2COL, "results": []}
    print(f"machine: {report['machine']}")
    common = {"threads": args.threads, "chunk": args.chunk or None, "torch_threads": torch_threads,
              "images": args.images, "memory": args.memory, "contend": args.contend, "torch_on": torch_on}
    for workload in workloads:
        if workload == "article":
            result = run("article", 200, 3, args.dtype, args.repeats, specs, args.naive_subset, **common)
            print_table(result)
            report["results"].append(result)
            continue
        for filters in (filter_counts if workload == "bench" else filter_counts[:1]):
            for batch in batch_sizes:
                result = run(workload, batch, filters, args.dtype, args.repeats, specs, args.naive_subset,
                             naive=(batch == batch_sizes[0]), **common)
                if ranks and workload == "bench":
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
