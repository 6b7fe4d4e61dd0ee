"""The benchmark's workloads and timing harness (``scripts/bench.py``, ``scripts/profile_step.py``,
``scripts/bench_floor.py``): xpcnn through the training engine's step executor, the same network in
PyTorch's own layers, and the article's Python loops, timed round-robin in one process.

Workloads (float32 by default):
  bench    conv 1->F 5x5, sigmoid, flatten, dense F*576 -> 10, softmax cross-entropy, SGD
  article  the article's network on its 200-image binary task, one full batch per epoch
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import numpy as np

from xpcnn import data
from xpcnn.backends import resolve, split_spec, synchronize
from xpcnn.nn.losses import MSELoss, SoftmaxCrossEntropyLoss
from xpcnn.nn.presets import article_network, bench_network
from xpcnn.nn.sequential import Sequential
from xpcnn.optim import SGD
from xpcnn.training import make_executor
from xpcnn.training.executors.compiled import compiled_executor, has_compiled_executor

SPECS = ["numpy", "torch:cpu", "jax:cpu", "array_api_strict:CPU_DEVICE", "cupy:cuda", "torch:cuda", "jax:cuda"]


# -- the networks -----------------------------------------------------------------------------

IM2COL = "auto"  # how xpcnn's convolutions build their patches (Conv2D's im2col; --im2col)


def xpcnn_network(workload: str, filters: int, seed: int = 0) -> Sequential:
    if workload == "article":
        return article_network(outputs=1, init="uniform", rng=seed, im2col=IM2COL)
    return bench_network(filters, outputs=10, rng=seed, im2col=IM2COL)


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


def xpcnn_epoch(spec, workload, images, targets, batch, filters, dtype, threads=1, chunk=None, compiled=False):
    """A closure that trains xpcnn for one epoch on ``spec`` with the training engine's step executor:
    ``threads`` > 1 splits every batch over that many threads (BLAS one thread each), ``chunk`` runs
    it as pieces of at most that many images (xpcnn.training.executors.SplitStep), ``compiled`` runs
    each step compiled (jax.jit, a CUDA graph: xpcnn.training.executors.compiled); the first call compiles."""
    backend = resolve(*split_spec(spec))
    model = xpcnn_network(workload, filters).to(backend, dtype=dtype)
    loss_fn = MSELoss() if workload == "article" else SoftmaxCrossEntropyLoss()
    executor = compiled_executor(backend) if compiled else make_executor(threads, chunk)
    executor.bind(model, loss_fn, SGD(0.1 if workload == "article" else 0.05), backend, dtype)
    batches = batches_of(len(images), batch)

    def epoch():
        loss = None
        with executor.running():
            for index in batches:
                loss = executor.step(executor.to_device(images[index], targets[index]))
        synchronize(backend, loss, *model.params.values())
        return loss

    return epoch


def torch_epoch(device, workload, images, targets, batch, filters, dtype, threads=None, compile_mode=None):
    """The same network in PyTorch's own layers and autograd; ``threads``: run the epoch with
    that many intra-op threads (``torch.set_num_threads``, restored after), else PyTorch's default;
    ``compile_mode``: the training step under ``torch.compile(mode=...)`` (forward, backward and
    the optimizer's step in one compiled function)."""
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

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        optimizer.step()
        return loss

    if compile_mode:
        step = torch.compile(step, mode=compile_mode)

    def train_epoch():
        for index in batches:
            x = torch.from_numpy(images[index]).to(device).to(tdtype) / 255.0
            y = torch.from_numpy(targets[index]).to(device)
            y = y.to(tdtype) if y.is_floating_point() else y
            step(x, y)
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
        image = images[n, 0] / 255.0
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
    epochs = {spec: xpcnn_epoch(spec, workload, images, targets, batch, filters, dtype,
                                compiled=False) for spec in specs}
    for spec in specs:  # each compiled executor next to its eager twin
        if has_compiled_executor(resolve(*split_spec(spec))):
            epochs[f"{spec} compiled"] = xpcnn_epoch(spec, workload, images, targets, batch, filters, dtype,
                                                      compiled=True)
    if "numpy" in specs:  # the same NumPy code with each batch cut into shares (xpcnn.training.executors)
        pieces = f", chunks of {chunk}" if chunk else ""
        if chunk:
            epochs[f"numpy{pieces}"] = xpcnn_epoch("numpy", workload, images, targets, batch, filters, dtype, 1, chunk)
        if threads > 1:
            epochs[f"numpy, {threads} threads{pieces}"] = xpcnn_epoch("numpy", workload, images, targets, batch,
                                                                    filters, dtype, threads, chunk)
    for device in torch_devices():
        epochs[f"torch-native:{device}"] = torch_epoch(device, workload, images, targets, batch, filters, dtype)
        if device == "cuda":  # PyTorch's own CUDA-graph path: the strongest thing a user could pick instead
            epochs["torch-native:cuda, torch.compile reduce-overhead"] = torch_epoch(
                device, workload, images, targets, batch, filters, dtype, compile_mode="reduce-overhead")
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
            compiled = by_spec.get("torch-native:cuda, torch.compile reduce-overhead")
            if device == "cuda" and compiled:
                row["speed_vs_torch_compile"] = compiled["epoch_s"] / row["epoch_s"]
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


