"""The benchmark's workloads and timing harness (``scripts/bench.py``, ``scripts/profile_step.py``,
``scripts/bench_floor.py``): xpcnn through the training engine's step executor, the same network in
PyTorch's own layers, and the article's Python loops, timed round-robin in one process.

Workloads (float32 by default):
  bench     conv 1->F 5x5, sigmoid, flatten, dense F*576 -> 10, softmax cross-entropy, SGD
  article   the article's network on its 200-image binary task, one full batch per epoch
  lenet5    the lenet5 preset on the embedded digits (1x28x28)
  vgg       the vgg preset on the embedded digits painted on 3x32x32 colour canvases
  resnet20  the resnet20 preset on the same colour images
The three presets train with their recipe's optimizer (xpcnn.training.config.PRESETS: momentum SGD,
Adam for vgg, with the recipe's weight decay) at its constant learning rate, on pixels scaled to
[0, 1] (no normalisation, no augmentation, on either side); PyTorch runs their twin
(scripts/torch_twin.py: the same layers and starting weights) with torch.optim's same optimizer.

``python scripts/benchmark.py --memory-row JSON`` is the child process bench.py starts for each row's
peak memory (:func:`memory_row`).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from xpcnn import data  # noqa: E402
from xpcnn.backends import limit_blas_threads, resolve, split_spec, synchronize  # noqa: E402
from xpcnn.nn.losses import MSELoss, SoftmaxCrossEntropyLoss  # noqa: E402
from xpcnn.nn.presets import article_network, bench_network, preset_network  # noqa: E402
from xpcnn.nn.sequential import Sequential  # noqa: E402
from xpcnn.optim import SGD  # noqa: E402
from xpcnn.training import make_executor  # noqa: E402
from xpcnn.training.builders import build_optimizer  # noqa: E402
from xpcnn.training.config import PRESETS  # noqa: E402
from xpcnn.training.executors import default_executor  # noqa: E402
from xpcnn.training.executors.compiled import compiled_executor, has_compiled_executor  # noqa: E402
from xpcnn.training.noise import needs_noise, step_noise  # noqa: E402

SPECS = ["numpy", "torch:cpu", "jax:cpu", "array_api_strict:CPU_DEVICE", "cupy:cuda", "torch:cuda", "jax:cuda"]
PRESET_WORKLOADS = ("lenet5", "vgg", "resnet20")
WORKLOADS = ("bench", "article", *PRESET_WORKLOADS)
DEFAULT = "default"  # the row of xpcnn's default command (train.py: default_executor on NumPy)
ONE_THREAD = "numpy, 1 thread"  # xpcnn on NumPy, whole batches, one BLAS thread


# -- the networks -----------------------------------------------------------------------------

IM2COL = "auto"  # how the bench and article convolutions build their patches (Conv2D's im2col; --im2col)


def xpcnn_network(workload: str, filters: int, seed: int = 0, image_shape: tuple = (1, 28, 28)) -> Sequential:
    if workload == "article":
        return article_network(outputs=1, init="uniform", rng=seed, im2col=IM2COL)
    if workload in PRESET_WORKLOADS:
        return preset_network(workload, 10, PRESETS[workload].init, seed, tuple(image_shape))
    return bench_network(filters, outputs=10, rng=seed, im2col=IM2COL)


def xpcnn_optimizer(workload: str):
    """The preset's recipe (its optimizer, learning rate, momentum, weight decay); SGD for bench/article."""
    if workload in PRESET_WORKLOADS:
        return build_optimizer(PRESETS[workload])
    return SGD(0.1 if workload == "article" else 0.05)


def workload_data(workload: str, count: int | None):
    """(images uint8 (N, C, H, W), targets) of a workload: the embedded digits (4,500), for vgg and
    resnet20 painted on 32x32 colour canvases (scripts/colour_digits.py, colours from seed 0);
    ``count`` images: the first ``count``, the digits repeated where there are fewer."""
    train = data.load_embedded().train
    if workload == "article":
        train = train.take(200)
        images, targets = train.images, data.task_targets(train.labels, "binary")
        return (images[:count], targets[:count]) if count else (images, targets)
    images, labels = train.images, train.labels.astype(np.int64)
    if count:  # repeat the digits to reach `count` images (the scale check), or take the first `count`
        reps = -(-count // len(images))
        images, labels = np.concatenate([images] * reps)[:count], np.concatenate([labels] * reps)[:count]
    if workload in ("vgg", "resnet20"):
        from colour_digits import colourise

        images = np.ascontiguousarray(colourise(images[:, 0], np.random.default_rng(0)).transpose(0, 3, 1, 2))
    return images, labels


def batches_of(count: int, batch: int) -> list[np.ndarray]:
    return data.batch_indices(count, batch, np.random.default_rng(0))


def cpu_threads() -> int:
    return os.cpu_count() or 1


def xpcnn_epoch(spec, workload, images, targets, batch, filters, dtype, threads=1, chunk=None, compiled=False,
                executor=None, blas_threads=None):
    """A closure that trains xpcnn for one epoch on ``spec`` with the training engine's step executor:
    ``threads`` > 1 splits every batch over that many threads (BLAS one thread each), ``chunk`` runs
    it as pieces of at most that many images (xpcnn.training.executors.SplitStep), ``compiled`` runs
    each step compiled (jax.jit, a CUDA graph: xpcnn.training.executors.compiled); the first call
    compiles.  ``executor="default"``: the executor train.py picks by default
    (xpcnn.training.executors.default_executor); ``blas_threads``: BLAS (and the backend's own
    intra-op threads) held to that many while the epoch runs.  A model with Dropout gets each step's
    noise drawn on the host, as the Trainer draws it.  The closure's ``threads`` attribute is the
    number of threads the epoch computes on (None on a GPU), ``executor`` the executor's description."""
    backend = resolve(*split_spec(spec))
    model = xpcnn_network(workload, filters, image_shape=images.shape[1:]).to(backend, dtype=dtype)
    loss_fn = MSELoss() if workload == "article" else SoftmaxCrossEntropyLoss()
    if executor == DEFAULT:
        step_executor = default_executor(backend, model)
    else:
        step_executor = compiled_executor(backend) if compiled else make_executor(threads, chunk)
    step_executor.bind(model, loss_fn, xpcnn_optimizer(workload), backend, dtype)
    batches = batches_of(len(images), batch)
    noisy = needs_noise(model)

    def epoch():
        loss = None
        limit = limit_blas_threads(backend, blas_threads) if blas_threads else contextlib.nullcontext()
        with limit, step_executor.running():
            for step, index in enumerate(batches):
                noise = step_noise(model, images[index], 0, 0, step, dtype) if noisy else None
                moved = (step_executor.to_device(images[index], targets[index], noise=noise) if noise
                         else step_executor.to_device(images[index], targets[index]))
                loss = step_executor.step(moved)
        synchronize(backend, loss, *model.params.values())
        return loss

    on_gpu = "cuda" in spec
    split = getattr(step_executor, "threads", None)
    epoch.threads = None if on_gpu else (blas_threads or split or cpu_threads())  # type: ignore[attr-defined]
    epoch.executor = step_executor.describe() or "whole batches"  # type: ignore[attr-defined]
    return epoch


def torch_epoch(device, workload, images, targets, batch, filters, dtype, threads=None, compile_mode=None):
    """The same network in PyTorch's own layers and autograd; ``threads``: run the epoch with
    that many intra-op threads (``torch.set_num_threads``, restored after), else PyTorch's default;
    ``compile_mode``: the training step under ``torch.compile(mode=...)`` (forward, backward and
    the optimizer's step in one compiled function).  The presets: their twin (scripts/torch_twin.py)
    with the recipe's optimizer in torch.optim."""
    import torch

    torch.manual_seed(0)
    tdtype = getattr(torch, dtype)
    if workload == "article":
        net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 5, bias=False), torch.nn.Sigmoid(), torch.nn.Flatten(),
                                  torch.nn.Linear(1728, 1), torch.nn.Sigmoid())
        loss_fn = lambda out, y: 0.5 * ((out - y) ** 2).sum() / out.shape[0]  # noqa: E731
        lr = 0.1
    elif workload in PRESET_WORKLOADS:
        from torch_twin import twin

        net = twin(xpcnn_network(workload, filters, image_shape=images.shape[1:]))
        loss_fn = torch.nn.functional.cross_entropy
    else:
        net = torch.nn.Sequential(torch.nn.Conv2d(1, filters, 5), torch.nn.Sigmoid(), torch.nn.Flatten(),
                                  torch.nn.Linear(filters * 576, 10))
        loss_fn, lr = torch.nn.functional.cross_entropy, 0.05
    net = net.to(device=device, dtype=tdtype).train()
    if workload in PRESET_WORKLOADS:
        from torch_twin import torch_optimizer

        optimizer = torch_optimizer(net, PRESETS[workload])
    else:
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

    epoch.threads = None if device.startswith("cuda") else (threads or torch.get_num_threads())  # type: ignore[attr-defined]
    return epoch


def twin_check(workload: str, images: np.ndarray, targets: np.ndarray, count: int = 16) -> dict:
    """The preset's parameter count in xpcnn and in its PyTorch twin, and the loss of both on the
    first ``count`` images before and after one training step (float32, the same dropout mask on
    both sides): the sanity line printed with each preset workload."""
    import torch
    from torch_twin import parameter_count, torch_optimizer, twin

    model = xpcnn_network(workload, 0, image_shape=images.shape[1:])
    net = twin(model).train()
    counts = {"xpcnn": parameter_count(model), "pytorch": sum(p.numel() for p in net.parameters())}
    backend = resolve("numpy")
    model = model.to(backend, dtype="float32")
    executor = make_executor(1, None)
    executor.bind(model, SoftmaxCrossEntropyLoss(), xpcnn_optimizer(workload), backend, "float32")
    x, y = images[:count], targets[:count]
    noise = step_noise(model, x, 0, 0, 0, "float32")
    ours = []
    for _ in range(2):
        moved = executor.to_device(x, y, noise=noise) if noise else executor.to_device(x, y)
        ours.append(float(np.asarray(executor.step(moved))))
    for name, value in (noise or {}).items():  # PyTorch's Dropout takes xpcnn's mask (top-level layers)
        index, p = int(name.split(".")[0]), model.layers[int(name.split(".")[0])].p
        mask = torch.from_numpy((value >= p).astype(np.float32) / (1 - p))
        net[index].register_forward_hook(lambda module, inputs, output, mask=mask: inputs[0] * mask)
    optimizer = torch_optimizer(net, PRESETS[workload])
    tx, ty = torch.from_numpy(x).float() / 255.0, torch.from_numpy(y)
    theirs = []
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(tx), ty)
        loss.backward()
        optimizer.step()
        theirs.append(float(loss.detach()))
    ok = bool(np.allclose(ours, theirs, rtol=1e-3, atol=1e-5)) and counts["xpcnn"] == counts["pytorch"]
    return {"parameters": counts, "images": len(x), "xpcnn_losses": ours, "pytorch_losses": theirs, "ok": ok}


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


@contextlib.contextmanager
def busy_core() -> Iterator[subprocess.Popen]:
    """A child process that keeps one core busy (a Python busy loop) while the block runs; it is
    killed when the block ends, however it ends (an exception, Ctrl-C)."""
    child = subprocess.Popen([sys.executable, "-S", "-c", "while True: pass"], stdin=subprocess.DEVNULL)
    try:
        yield child
    finally:
        child.kill()
        child.wait()


def interleaved(epochs: dict, repeats: int, contended: dict | None = None) -> dict[str, list[float]]:
    """Time the implementations round-robin, so that a slow spell of the machine hits
    each alike.  Before every timed epoch the same implementation runs one untimed
    epoch: that warms it up (JIT, allocator, caches) and lets the previous library's
    worker threads (OpenBLAS, OpenMP) go idle, so they do not steal the cores.
    ``contended`` (a dict): after each quiet round, the same round again while :func:`busy_core`
    holds a core, its times into ``contended`` by implementation.  Returns the quiet times."""
    times: dict[str, list[float]] = {name: [] for name in epochs}
    if contended is not None:
        contended.update({name: [] for name in epochs})

    def round_of(into: dict) -> None:
        for name, epoch in epochs.items():
            epoch()
            started = time.perf_counter()
            epoch()
            into[name].append(time.perf_counter() - started)

    for _ in range(repeats):
        round_of(times)
        if contended is not None:
            with busy_core():
                round_of(contended)
    return times


def torch_devices() -> list[str]:
    try:
        import torch
    except ImportError:
        return []
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def torch_thread_rows(torch_threads) -> list[int]:
    return sorted(set(torch_threads))


def implementations(workload, batch, filters, dtype, specs, threads=1, chunk=None, torch_threads=(),
                    torch_on=("cpu", "cuda")) -> dict:
    """name -> (function building the implementation's epoch closure from (images, targets)); the
    order of the table.  xpcnn: the default command's executor ("default"), one BLAS thread
    ("numpy, 1 thread"), every backend in ``specs`` eager and compiled where it has a compiler, and for
    bench and article NumPy's pieces (``chunk``) and threads (``threads``); PyTorch: its default
    threads and each count of ``torch_threads``, and CUDA (eager and torch.compile) where there is one
    (``torch_on``: the PyTorch devices wanted, of those present)."""
    def xp(spec, **options):
        return lambda images, targets: xpcnn_epoch(spec, workload, images, targets, batch, filters, dtype, **options)

    def tn(device, **options):
        return lambda images, targets: torch_epoch(device, workload, images, targets, batch, filters, dtype, **options)

    built: dict[str, Callable] = {}
    if "numpy" in specs:
        built[DEFAULT] = xp("numpy", executor=DEFAULT)
        built[ONE_THREAD] = xp("numpy", blas_threads=1)
    for spec in specs:
        built[spec] = xp(spec)
    for spec in specs:  # each compiled executor next to its eager twin
        if has_compiled_executor(resolve(*split_spec(spec))):
            built[f"{spec} compiled"] = xp(spec, compiled=True)
    if "numpy" in specs and workload not in PRESET_WORKLOADS:  # each batch cut into shares
        pieces = f", chunks of {chunk}" if chunk else ""
        if chunk:
            built[f"numpy{pieces}"] = xp("numpy", threads=1, chunk=chunk)
        if threads > 1:
            built[f"numpy, {threads} threads{pieces}"] = xp("numpy", threads=threads, chunk=chunk)
    for device in (d for d in torch_devices() if d in torch_on):
        built[f"torch-native:{device}"] = tn(device)
        if device == "cuda":  # PyTorch's own CUDA-graph path: the strongest thing a user could pick instead
            built["torch-native:cuda, torch.compile reduce-overhead"] = tn(device, compile_mode="reduce-overhead")
        if device == "cpu":  # PyTorch held to fewer threads: the per-core comparison
            for count in torch_thread_rows(torch_threads):
                built[f"torch-native:cpu, {count} thread{'s' if count > 1 else ''}"] = tn(device, threads=count)
    return built


def pytorch_twin_row(row: dict, by_spec: dict) -> dict | None:
    """The PyTorch row an xpcnn row is compared with: on CUDA, PyTorch's CUDA row; the default row,
    PyTorch's default row; any other, PyTorch's CPU row with the same number of threads (its
    default row when that has as many)."""
    if row["threads"] is None:
        return by_spec.get("torch-native:cuda")
    default = by_spec.get("torch-native:cpu")
    if row["default"]:
        return default
    for spec, other in by_spec.items():
        if spec.startswith("torch-native:cpu, ") and other["threads"] == row["threads"]:
            return other
    return default if default and default["threads"] == row["threads"] else None


def _status_kib(field: str) -> int | None:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM), None where there is no such file."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_above_start_mb(epoch: Callable) -> float | None:
    """MB (10^6 bytes) by which the process's peak resident memory during ``epoch()`` exceeds its
    resident memory just before it: VmHWM reset to VmRSS by writing 5 to /proc/self/clear_refs
    (Linux), then read after the epoch.  None where that cannot be done."""
    gc.collect()
    start = _status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        return None
    epoch()
    peak = _status_kib("VmHWM")
    if start is None or peak is None:
        return None
    return max(peak - start, 0) * 1024 / 1e6


def memory_row(settings: dict) -> float | None:
    """In a fresh process (``python scripts/benchmark.py --memory-row JSON``): build one
    implementation on the workload's data and return :func:`peak_above_start_mb` of its first epoch."""
    from xpcnn.training.hostmem import keep_freed_memory

    keep_freed_memory()  # as in bench.py's process
    global IM2COL
    IM2COL = settings["im2col"]
    images, targets = workload_data(settings["workload"], settings["images"])
    if settings["workload"] == "article":
        settings = {**settings, "batch": len(images)}
    built = implementations(settings["workload"], settings["batch"], settings["filters"], settings["dtype"],
                            settings["specs"], settings["threads"], settings["chunk"], settings["torch_threads"],
                            settings["torch_on"])
    epoch = built[settings["name"]](images, targets)
    return peak_above_start_mb(epoch)


def measure_memory(name: str, settings: dict) -> float | None:
    """Row ``name``'s peak memory above its start (MB), measured in a child process of its own so that
    no other implementation's freed memory is reused; None if the child fails."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-row",
                           json.dumps({**settings, "name": name})],
                          capture_output=True, text=True, env=env, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        print(f"peak memory of {name}: the child process failed: {done.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    value = json.loads(lines[-1])["peak_mb"]
    return None if value is None else float(value)


def run(workload, batch, filters, dtype, repeats, specs, naive_subset, naive=True, threads=1, chunk=None,
        torch_threads=(), images=None, memory=True, contend=False, torch_on=("cpu", "cuda")) -> dict:
    """Time every implementation of ``workload`` round-robin (:func:`interleaved`) on ``images`` images
    (default: all of the workload's) and return the result with its rows: ``epoch_s`` (median),
    ``threads``, ``default``, ``speed_vs_pytorch`` (:func:`pytorch_twin_row`'s time / this row's),
    ``peak_mb`` (``memory``: :func:`measure_memory`) and with ``contend`` the contended times and
    ``slowdown`` (contended median / quiet median)."""
    pictures, targets = workload_data(workload, images)
    if workload == "article":
        batch = len(pictures)
    built = implementations(workload, batch, filters, dtype, specs, threads, chunk, torch_threads, torch_on)
    if not built:
        raise ValueError(f"workload {workload}: nothing to time here (no backend of --backends and no PyTorch "
                         "device of --torch-devices is available)")
    epochs = {name: make(pictures, targets) for name, make in built.items()}
    sanity = twin_check(workload, pictures, targets) if workload in PRESET_WORKLOADS and torch_devices() else None
    contended: dict[str, list[float]] = {}
    times = interleaved(epochs, repeats, contended if contend else None)
    rows = []
    for name, epoch in epochs.items():
        if name.startswith("torch-native"):
            impl = f"pytorch nn {name.split(':', 1)[1]}"
        else:
            impl = "xpcnn default (train.py)" if name == DEFAULT else f"xpcnn {name}"
        row = {"impl": impl, "spec": name, "threads": epoch.threads, "default": name == DEFAULT,
               "epoch_s": statistics.median(times[name]), "times": times[name]}
        if hasattr(epoch, "executor"):
            row["executor"] = epoch.executor
        if contend:
            row["epoch_s_contended"] = statistics.median(contended[name])
            row["times_contended"] = contended[name]
            row["slowdown"] = row["epoch_s_contended"] / row["epoch_s"]
        rows.append(row)
    del epochs
    if memory:
        settings = {"workload": workload, "batch": batch, "filters": filters, "dtype": dtype, "specs": list(specs),
                    "threads": threads, "chunk": chunk, "torch_threads": list(torch_threads), "images": images,
                    "im2col": IM2COL, "torch_on": list(torch_on)}
        for row in rows:
            row["peak_mb"] = measure_memory(row["spec"], settings)
    if naive and workload in ("bench", "article"):
        seconds = naive_epoch_seconds(workload, pictures, targets, filters, naive_subset)
        rows.append({"impl": f"naive loops (numpy, {naive_subset} imgs)", "spec": "naive", "threads": 1,
                     "default": False, "epoch_s": seconds, "times": [seconds]})
    for row in rows:
        row["images_per_s"] = len(pictures) / row["epoch_s"]
    by_spec = {r["spec"]: r for r in rows}
    for row in rows:
        if not row["spec"].startswith("torch-native") and row["spec"] != "naive":
            twin_row = pytorch_twin_row(row, by_spec)
            row["speed_vs_pytorch"] = twin_row["epoch_s"] / row["epoch_s"] if twin_row else None
            row["pytorch_row"] = twin_row["spec"] if twin_row else None
            row["speed_vs_naive"] = by_spec["naive"]["epoch_s"] / row["epoch_s"] if "naive" in by_spec else None
            compiled = by_spec.get("torch-native:cuda, torch.compile reduce-overhead")
            if row["threads"] is None and compiled:
                row["speed_vs_torch_compile"] = compiled["epoch_s"] / row["epoch_s"]
    result = {"workload": workload, "batch": batch, "filters": filters if workload in ("bench", "article") else None,
              "dtype": dtype, "images": len(pictures), "image_shape": list(pictures.shape[1:]), "repeats": repeats,
              "contend": contend, "rows": rows}
    if sanity:
        result["twin"] = sanity
    return result


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
    # The kernels NumPy's OpenBLAS runs: an OPENBLAS_CORETYPE set for an older family (some machines
    # set "Haswell" on AVX-512 CPUs) halves the products' speed there (docs/performance.md).
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_info

        info["openblas"] = ", ".join(sorted({str(pool.get("architecture")) for pool in threadpool_info()
                                            if pool.get("internal_api") == "openblas"}))
    if "OPENBLAS_CORETYPE" in os.environ:
        info["OPENBLAS_CORETYPE"] = os.environ["OPENBLAS_CORETYPE"]
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


if __name__ == "__main__":  # bench.py's child process for one row's peak memory (measure_memory)
    if len(sys.argv) != 3 or sys.argv[1] != "--memory-row":
        print("usage: python scripts/benchmark.py --memory-row JSON (started by scripts/bench.py)", file=sys.stderr)
        raise SystemExit(2)
    print(json.dumps({"peak_mb": memory_row(json.loads(sys.argv[2]))}))
