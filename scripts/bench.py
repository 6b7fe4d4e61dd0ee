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
with each batch run as pieces of --chunk images, and over --threads threads (xpcnn.parallel).
PyTorch uses every core by default; --torch-threads 1 (or 1,2,...) adds PyTorch rows held to
that many threads and prints each xpcnn CPU row against them: the per-core comparison.
Before timing it sets OPENBLAS_THREAD_TIMEOUT and glibc's malloc thresholds (xpcnn.hostmem)
for every implementation alike; the JSON records both.

  python scripts/bench.py                         # both workloads, table + bench.json
  python scripts/bench.py --batch-sizes 32,128,512 --filters 8,32 --plot
  python scripts/bench.py --workload bench --backends numpy --torch-threads 1
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time

# NumPy's OpenBLAS keeps its worker threads spinning for about 0.1 s of CPU after every matrix
# product.  On a small machine they then hold the cores that the next implementation in the
# round-robin needs: PyTorch measured up to 2x slower right after an xpcnn epoch.  Let them sleep
# at once (before NumPy loads OpenBLAS; a value set by the user wins).  docs/performance.md.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
# CuPy, PyTorch and JAX share the GPU in this process: JAX must not take 75% of its memory at
# start-up (its default).  A value set by the user wins.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from xpcnn import data  # noqa: E402
from xpcnn.backend import available, parse_spec, resolve, synchronize  # noqa: E402
from xpcnn.files import check_writable_file, write_json  # noqa: E402
from xpcnn.hostmem import keep_freed_memory  # noqa: E402
from xpcnn.layers import Conv2D, Dense, Flatten, Sigmoid  # noqa: E402
from xpcnn.losses import MSELoss, SoftmaxCrossEntropyLoss  # noqa: E402
from xpcnn.model import Sequential  # noqa: E402
from xpcnn.optim import SGD  # noqa: E402
from xpcnn.parallel import SplitStep, single_threaded_blas  # noqa: E402

SPECS = ["numpy", "torch:cpu", "jax:cpu", "array_api_strict:CPU_DEVICE", "cupy:cuda", "torch:cuda", "jax:cuda"]


# -- the networks -----------------------------------------------------------------------------

IM2COL = "auto"  # how xpcnn's convolutions build their patches (Conv2D's im2col; --im2col)


def xpcnn_network(workload: str, filters: int, seed: int = 0) -> Sequential:
    rng = np.random.default_rng(seed)
    if workload == "article":
        return Sequential(Conv2D(1, 3, 5, bias=False, init="uniform", rng=rng, im2col=IM2COL), Sigmoid(), Flatten(),
                          Dense(1728, 1, init="uniform", rng=rng), Sigmoid())
    return Sequential(Conv2D(1, filters, 5, rng=rng, im2col=IM2COL), Sigmoid(), Flatten(),
                      Dense(filters * 576, 10, rng=rng))


def workload_data(workload: str, count: int | None):
    train = data.load_embedded().train
    if workload == "article":
        train = train.take(200)
        return train.images, data.task_targets(train.labels, "binary")
    images, labels = train.images, train.labels.astype(np.int64)
    if count:  # repeat the digits to reach `count` images (the scale check)
        reps = -(-count // len(images))
        images, labels = np.concatenate([images] * reps)[:count], np.concatenate([labels] * reps)[:count]
    return images, labels


def batches_of(count: int, batch: int) -> list[np.ndarray]:
    return data.batch_indices(count, batch, np.random.default_rng(0))


def xpcnn_epoch(spec, workload, images, targets, batch, filters, dtype, threads=1, chunk=None):
    """A closure that trains xpcnn for one epoch on ``spec``; ``threads`` > 1 splits every
    batch over that many threads (xpcnn.parallel, BLAS one thread each), ``chunk`` runs it as
    pieces of at most that many images."""
    backend = resolve(*parse_spec(spec))
    model = xpcnn_network(workload, filters).to(backend, dtype=dtype)
    loss_fn = MSELoss() if workload == "article" else SoftmaxCrossEntropyLoss()
    optimizer = SGD(0.1 if workload == "article" else 0.05)
    batches = batches_of(len(images), batch)
    split = SplitStep(model, loss_fn, threads, chunk) if threads > 1 or chunk else None

    def train_epoch():
        loss = None
        for index in batches:
            x = data.to_batch(images[index], backend, dtype)
            y = data.targets_to_batch(targets[index], backend, dtype)
            if split:
                loss = split(x, y)
            else:
                loss = loss_fn(model(x), y)
                model.backward(loss_fn.backward(), input_grad=False)
            optimizer.step(model)
        synchronize(backend, loss, *model.params.values())
        return loss

    def epoch():
        if threads == 1:
            return train_epoch()
        with single_threaded_blas(backend):
            return train_epoch()

    return epoch


def torch_epoch(device, workload, images, targets, batch, filters, dtype, threads=None):
    """The same network in PyTorch's own layers and autograd; ``threads``: run the epoch with
    that many intra-op threads (``torch.set_num_threads``, restored after), else PyTorch's default."""
    import torch

    torch.manual_seed(0)
    tdtype = getattr(torch, dtype)
    if workload == "article":
        net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 5, bias=False), torch.nn.Sigmoid(), torch.nn.Flatten(),
                                  torch.nn.Linear(1728, 1), torch.nn.Sigmoid())
        loss_fn = lambda out, y: 0.5 * ((out - y) ** 2).sum() / out.shape[0]  # noqa: E731
        lr = 0.1
    else:
        net = torch.nn.Sequential(torch.nn.Conv2d(1, filters, 5), torch.nn.Sigmoid(), torch.nn.Flatten(),
                                  torch.nn.Linear(filters * 576, 10))
        loss_fn, lr = torch.nn.functional.cross_entropy, 0.05
    net = net.to(device=device, dtype=tdtype)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    batches = batches_of(len(images), batch)

    def epoch():
        default_threads = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            train_epoch()
        finally:
            torch.set_num_threads(default_threads)

    def train_epoch():
        for index in batches:
            x = torch.from_numpy(images[index][:, None]).to(device).to(tdtype) / 255.0
            y = torch.from_numpy(targets[index]).to(device)
            y = y.to(tdtype) if y.is_floating_point() else y
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(net(x), y)
            loss.backward()
            optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return epoch


def naive_epoch_seconds(workload, images, targets, filters, subset) -> float:
    """The article's style: Python loops over images, filters and patches (float64 NumPy,
    per-image SGD as in the article's code), timed on `subset` images and scaled to the epoch."""
    rng = np.random.default_rng(0)
    k = 3 if workload == "article" else filters
    outputs = 1 if workload == "article" else 10
    f = rng.random((k, 5, 5)) if workload == "article" else rng.normal(0, 0.2, (k, 5, 5))
    w = rng.random((k * 576, outputs)) * (1 if workload == "article" else 0.01)
    b = np.zeros(outputs)
    lr = 0.1
    started = time.perf_counter()
    for n in range(subset):
        image = images[n] / 255.0
        z1 = np.zeros((k, 24, 24))
        for c in range(k):
            for i in range(24):
                for j in range(24):
                    z1[c, i, j] = np.sum(image[i:i + 5, j:j + 5] * f[c])
        a = 1 / (1 + np.exp(-z1))
        z2 = a.reshape(-1) @ w + b
        if workload == "article":
            o = 1 / (1 + np.exp(-z2))
            grad_z2 = (o - targets[n]) * o * (1 - o)
        else:
            e = np.exp(z2 - z2.max())
            grad_z2 = e / e.sum()
            grad_z2[targets[n]] -= 1
        grad_a = (w @ grad_z2).reshape(k, 24, 24)
        grad_z1 = grad_a * a * (1 - a)
        grad_f = np.zeros_like(f)
        for c in range(k):
            for i in range(24):
                for j in range(24):
                    grad_f[c] += grad_z1[c, i, j] * image[i:i + 5, j:j + 5]
        w -= lr * np.outer(a.reshape(-1), grad_z2)
        b -= lr * grad_z2
        f -= lr * grad_f
    return (time.perf_counter() - started) / subset * len(images)


def interleaved(epochs: dict, repeats: int) -> dict[str, list[float]]:
    """Time the implementations round-robin, so that a slow spell of the machine hits
    each alike.  Before every timed epoch the same implementation runs one untimed
    epoch: that warms it up (JIT, allocator, caches) and lets the previous library's
    worker threads (OpenBLAS, OpenMP) go idle, so they do not steal the cores."""
    times = {name: [] for name in epochs}
    for _ in range(repeats):
        for name, epoch in epochs.items():
            epoch()
            started = time.perf_counter()
            epoch()
            times[name].append(time.perf_counter() - started)
    return times


def torch_devices() -> list[str]:
    try:
        import torch
    except ImportError:
        return []
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def run(workload, batch, filters, dtype, repeats, specs, naive_subset, naive=True, threads=1, chunk=None,
        torch_threads=()) -> dict:
    images, targets = workload_data(workload, None)
    if workload == "article":
        batch = len(images)
    epochs = {spec: xpcnn_epoch(spec, workload, images, targets, batch, filters, dtype) for spec in specs}
    if "numpy" in specs:  # the same NumPy code with each batch cut into shares (xpcnn.parallel)
        pieces = f", chunks of {chunk}" if chunk else ""
        if chunk:
            epochs[f"numpy{pieces}"] = xpcnn_epoch("numpy", workload, images, targets, batch, filters, dtype, 1, chunk)
        if threads > 1:
            epochs[f"numpy, {threads} threads{pieces}"] = xpcnn_epoch("numpy", workload, images, targets, batch,
                                                                    filters, dtype, threads, chunk)
    for device in torch_devices():
        epochs[f"torch-native:{device}"] = torch_epoch(device, workload, images, targets, batch, filters, dtype)
        if device == "cpu":  # PyTorch held to fewer threads: the per-core comparison
            for count in torch_threads:
                epochs[f"torch-native:cpu, {count} thread{'s' if count > 1 else ''}"] = torch_epoch(
                    device, workload, images, targets, batch, filters, dtype, threads=count)
    rows = []
    for spec, times in interleaved(epochs, repeats).items():
        impl = f"pytorch nn {spec.split(':', 1)[1]}" if spec.startswith("torch-native") else f"xpcnn {spec}"
        rows.append({"impl": impl, "spec": spec, "epoch_s": statistics.median(times), "times": times})
    if naive:
        seconds = naive_epoch_seconds(workload, images, targets, filters, naive_subset)
        rows.append({"impl": f"naive loops (numpy, {naive_subset} imgs)", "spec": "naive", "epoch_s": seconds,
                     "times": [seconds]})
    for row in rows:
        row["images_per_s"] = len(images) / row["epoch_s"]
    by_spec = {r["spec"]: r for r in rows}
    for row in rows:
        if not row["spec"].startswith("torch-native") and row["spec"] != "naive":
            device = "cuda" if "cuda" in row["spec"] else "cpu"
            native = by_spec.get(f"torch-native:{device}")
            row["speed_vs_pytorch"] = native["epoch_s"] / row["epoch_s"] if native else None
            row["speed_vs_naive"] = by_spec["naive"]["epoch_s"] / row["epoch_s"] if "naive" in by_spec else None
            if device == "cpu":  # against PyTorch held to N threads, where --torch-threads asked for it
                row["speed_vs_pytorch_threads"] = {
                    spec.rsplit(", ", 1)[1]: held["epoch_s"] / row["epoch_s"]
                    for spec, held in by_spec.items() if spec.startswith("torch-native:cpu, ")}
    return {"workload": workload, "batch": batch, "filters": filters, "dtype": dtype, "images": len(images),
            "repeats": repeats, "rows": rows}


def scale_check(dtype: str, repeats: int) -> dict:
    """Epoch time on 5,000 and on 60,000 images (the digits repeated), timed round-robin so
    that a slow spell of the machine does not land on one size only."""
    epochs = {count: xpcnn_epoch("numpy", "bench", *workload_data("bench", count), 128, 8, dtype)
              for count in (5000, 60000)}
    times = interleaved(epochs, repeats)
    small, large = statistics.median(times[5000]), statistics.median(times[60000])
    return {"epoch_s_5000": small, "epoch_s_60000": large, "ratio": large / small, "ideal": 12.0,
            "times_5000": times[5000], "times_60000": times[60000]}


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


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "numpy": np.__version__, "OPENBLAS_THREAD_TIMEOUT": os.environ.get("OPENBLAS_THREAD_TIMEOUT")}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


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
    try:
        torch_threads = [int(n) for n in args.torch_threads.split(",") if n.strip()]
    except ValueError:
        parser.error(f"--torch-threads takes comma-separated integers, got {args.torch_threads!r}")
    if torch_threads and min(torch_threads) < 1:
        parser.error(f"--torch-threads must be >= 1, got {args.torch_threads!r}")
    if torch_threads and importlib.util.find_spec("torch") is None:
        parser.error("--torch-threads needs PyTorch: pip install torch")
    # Check what would fail at the end before spending minutes on timings.
    problem = check_writable_file(args.out)
    if problem:
        parser.error(f"--out: {problem}")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        parser.error("--plot needs matplotlib: pip install 'xpcnn[plot]'")
    global IM2COL
    IM2COL = args.im2col
    specs = available([s for s in args.backends.split(",") if s])
    allocator = keep_freed_memory()  # for every implementation timed here, PyTorch's included
    report = {"machine": {**machine(), "allocator": allocator}, "im2col": IM2COL, "results": []}
    print(f"machine: {report['machine']}")
    if args.workload in ("article", "both"):
        result = run("article", 200, 3, args.dtype, args.repeats, specs, args.naive_subset, threads=args.threads,
                     chunk=args.chunk or None, torch_threads=torch_threads)
        print_table(result)
        report["results"].append(result)
    if args.workload in ("bench", "both"):
        for filters in filter_counts:
            for batch in batch_sizes:
                result = run("bench", batch, filters, args.dtype, args.repeats, specs, args.naive_subset, threads=args.threads,
                             chunk=args.chunk or None, naive=(batch == batch_sizes[0]), torch_threads=torch_threads)
                print_table(result)
                report["results"].append(result)
    if args.scale:
        report["scale"] = scale_check(args.dtype, args.repeats)
        small, large, ratio = report["scale"]["epoch_s_5000"], report["scale"]["epoch_s_60000"], report["scale"]["ratio"]
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

    from xpcnn.files import atomic_write

    fig, ax = plt.subplots(figsize=(7, 4))
    series: dict[str, list] = {}
    for result in report["results"]:
        if result["workload"] != "bench":
            continue
        for row in result["rows"]:
            if row["spec"] != "naive":
                series.setdefault(f"{row['impl']} F={result['filters']}", []).append((result["batch"], row["images_per_s"]))
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
