#!/usr/bin/env python
"""Where one training step of a network spends its time, phase by phase.

Runs the network of ``scripts/bench.py`` (workload "bench"), or a preset's (``--preset lenet5``,
``--preset vgg``, on random images of the preset's input shape), on one backend and times each
phase of a step on its own (the batch's transfer, every layer's forward and backward, the loss,
the update), waiting for the device after each phase, as the median of --repeats steps; then the
whole step without those waits.  The phases add up to more than the whole step on a GPU: each
wait empties the device's queue, which the whole step keeps full.  ``--torch`` also times
PyTorch's twin of the network (``scripts/torch_twin.py``: the same layers and weights) layer by
layer and its whole step, with the same threads; ``--threads`` limits BLAS's and PyTorch's threads.

  python scripts/profile_step.py --backend numpy --batch-size 128
  python scripts/profile_step.py --preset vgg --threads 1 --torch --repeats 10
  python scripts/profile_step.py --backend cupy:cuda --batch-size 512 --repeats 200
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import sys
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # as in bench.py

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmark import workload_data, xpcnn_network  # noqa: E402

from xpcnn import data  # noqa: E402
from xpcnn.backends import BackendError, limit_blas_threads, resolve, split_spec, synchronize  # noqa: E402
from xpcnn.nn.conv import Conv2D  # noqa: E402
from xpcnn.nn.losses import SoftmaxCrossEntropyLoss  # noqa: E402
from xpcnn.nn.presets import preset_network  # noqa: E402
from xpcnn.optim import SGD  # noqa: E402
from xpcnn.training.hostmem import keep_freed_memory  # noqa: E402
from xpcnn.training.noise import draw_noise, step_seed  # noqa: E402

PRESET_SHAPES = {"lenet5": (1, 28, 28), "vgg": (3, 32, 32)}
CLOCK = [time.perf_counter]  # --clock cpu: time.process_time, the process's CPU time


def network_and_images(preset: str, filters: int):
    """The network (on the host) and its training images and labels: the benchmark's on the
    embedded digits, or a preset's on 4,500 random images of its input shape."""
    if preset == "bench":
        return (xpcnn_network("bench", filters), *workload_data("bench", None))
    shape = PRESET_SHAPES[preset]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(4500, *shape), dtype=np.uint8)
    return preset_network(preset, 10, "he", 0, shape), images, rng.integers(0, 10, size=4500).astype(np.int64)


def profile(spec: str, batch: int, filters: int, dtype: str, repeats: int, functions: int = 0, im2col: str = "auto",
            preset: str = "bench"):
    backend = resolve(*split_spec(spec))
    host_model, images, labels = network_and_images(preset, filters)
    model = host_model.to(backend, dtype=dtype)
    for layer in model.layers:
        if isinstance(layer, Conv2D):
            layer.im2col = im2col
    loss_fn, optimizer = SoftmaxCrossEntropyLoss(), SGD(0.05)
    times: dict[str, list[float]] = {}

    def timed(name, function, *args):
        started = CLOCK[0]()
        result = function(*args)
        synchronize(backend, *(r for r in (result if isinstance(result, tuple) else (result,)) if r is not None),
                    *model.params.values())
        times.setdefault(name, []).append(CLOCK[0]() - started)
        return result

    shapes = model.noise_shapes(batch, tuple(images.shape[1:]))

    def set_noise() -> None:  # dropout's masks (the vgg preset), drawn outside the timing
        if shapes:
            model.set_noise(draw_noise(shapes, step_seed(0, 0, 0), dtype))

    def phased_step(index):
        set_noise()
        x, y = timed("batch to device", lambda: (data.to_batch(images[index], backend, dtype),
                                                 data.targets_to_batch(labels[index], backend, dtype)))
        for position, layer in enumerate(model.layers):
            x = timed(f"{position} {layer.name} forward", layer, x)
        timed("loss forward", loss_fn, x, y)
        grad = timed("loss backward", loss_fn.backward)
        for position, layer in reversed(list(enumerate(model.layers))):
            if position == 0:
                timed(f"{position} {layer.name} backward", functools.partial(layer.backward, input_grad=False), grad)
            else:
                grad = timed(f"{position} {layer.name} backward", layer.backward, grad)
        timed("update", optimizer.step, model)

    def whole_step(index):
        set_noise()
        x, y = data.to_batch(images[index], backend, dtype), data.targets_to_batch(labels[index], backend, dtype)
        loss = loss_fn(model(x), y)
        model.backward(loss_fn.backward(), input_grad=False)
        optimizer.step(model)
        return loss

    order = np.random.default_rng(0).permutation(len(images))
    indices = [order[(i * batch) % (len(images) - batch):][:batch] for i in range(repeats + 5)]
    for index in indices[:5]:  # warm-up: kernels compiled, allocator filled
        phased_step(index)
    times.clear()
    for index in indices[5:]:
        phased_step(index)
    whole = []
    for index in indices:
        started = CLOCK[0]()
        synchronize(backend, whole_step(index), *model.params.values())
        whole.append(CLOCK[0]() - started)
    rows = [(name, statistics.median(values)) for name, values in times.items()]
    if functions:  # where the host's time goes (on a GPU the host is the limit at these sizes)
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(lambda: [whole_step(index) for index in indices[5:]])
        synchronize(backend, *model.params.values())
        pstats.Stats(profiler).sort_stats("tottime").print_stats(functions)
    return rows + [("sum of the phases", sum(t for _, t in rows)), ("whole step", statistics.median(whole[5:]))]


def profile_torch(preset: str, batch: int, filters: int, repeats: int, threads: int = 0) -> list[tuple[str, float]]:
    """PyTorch's twin of the network on the CPU (float32): each layer's forward and backward (the
    backward of layer k timed as the autograd pass from its output to its input), then the whole
    step (forward, loss, backward, SGD update)."""
    import torch
    from torch_twin import twin

    if threads:
        torch.set_num_threads(threads)
    host_model, images, labels = network_and_images(preset, filters)
    net = twin(host_model).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    loss_fn = torch.nn.CrossEntropyLoss()
    order = np.random.default_rng(0).permutation(len(images))
    indices = [order[(i * batch) % (len(images) - batch):][:batch] for i in range(repeats + 5)]
    times: dict[str, list[float]] = {}

    def phased_step(index, keep: bool):
        x = torch.from_numpy(images[index].astype(np.float32) / 255.0)
        outputs, inputs = [], []
        for position, layer in enumerate(net):
            x = x.detach().requires_grad_(position > 0)
            inputs.append(x)
            started = CLOCK[0]()
            x = layer(x)
            if keep:
                times.setdefault(f"{position} {type(layer).__name__} forward", []).append(CLOCK[0]() - started)
            outputs.append(x)
        loss = loss_fn(x, torch.from_numpy(labels[index]))
        grad = torch.autograd.grad(loss, x)[0]
        for position in reversed(range(len(net))):
            started = CLOCK[0]()
            wanted = [inputs[position]] if position > 0 else []
            wanted += list(net[position].parameters())
            if wanted:
                grads = torch.autograd.grad(outputs[position], wanted, grad)
                grad = grads[0] if position > 0 else None
            if keep:
                times.setdefault(f"{position} {type(net[position]).__name__} backward", []).append(
                    CLOCK[0]() - started)

    def whole_step(index):
        x = torch.from_numpy(images[index].astype(np.float32) / 255.0)
        optimizer.zero_grad()
        loss = loss_fn(net(x), torch.from_numpy(labels[index]))
        loss.backward()
        optimizer.step()

    for position, index in enumerate(indices):
        phased_step(index, position >= 5)
    whole = []
    for index in indices:
        started = CLOCK[0]()
        whole_step(index)
        whole.append(CLOCK[0]() - started)
    rows = [(name, statistics.median(values)) for name, values in times.items()]
    return rows + [("sum of the phases", sum(t for _, t in rows)), ("whole step", statistics.median(whole[5:]))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--backend", default="numpy", help="backend spec: numpy, cupy:cuda, torch:cuda, ...")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--preset", choices=("bench", *PRESET_SHAPES), default="bench",
                        help="the network: the benchmark's (default) or a preset's, on random images of its shape")
    parser.add_argument("--filters", type=int, default=8, help="the benchmark network's filters")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--im2col", choices=Conv2D.IM2COL, default="auto",
                        help="how the convolution builds its patches (Conv2D's im2col; default auto)")
    parser.add_argument("--threads", type=int, default=0,
                        help="BLAS and PyTorch threads during the timing (default 0: the libraries' own)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time (default), or the process's CPU time: with --threads 1 on a CPU, what the "
                             "step costs without the waits for a core that other processes cause on a shared machine")
    parser.add_argument("--torch", action="store_true",
                        help="also time PyTorch's twin of the network (CPU, float32), layer by layer")
    parser.add_argument("--functions", type=int, default=0, metavar="N",
                        help="also profile the host (cProfile) over the whole steps and list its N costliest functions")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.filters < 1 or args.repeats < 1 or args.functions < 0 or args.threads < 0:
        parser.error("--batch-size, --filters and --repeats must be >= 1, --functions and --threads >= 0")
    if args.batch_size > 4000:
        parser.error("--batch-size must be at most 4000 (of the 4,500 embedded training digits)")
    CLOCK[0] = time.process_time if args.clock == "cpu" else time.perf_counter
    keep_freed_memory()
    try:
        backend = resolve(*split_spec(args.backend))
    except BackendError as exc:
        parser.error(str(exc))
    limit = limit_blas_threads(backend, args.threads) if args.threads else contextlib.nullcontext()
    with limit:
        rows = profile(args.backend, args.batch_size, args.filters, args.dtype, args.repeats, args.functions,
                       args.im2col, args.preset)
        twin_rows = profile_torch(args.preset, args.batch_size, args.filters, args.repeats,
                                                        args.threads) if args.torch else []
    network = f"{args.filters} filters" if args.preset == "bench" else args.preset
    threads = (f", {args.threads} threads" if args.threads else "") + (", CPU time" if args.clock == "cpu" else "")
    print(f"{args.backend}, {network}, batch {args.batch_size}, {args.dtype}, im2col {args.im2col}{threads}, "
          f"median of {args.repeats} steps")
    for name, seconds in rows:
        print(f"  {name:<24} {seconds * 1e3:9.3f} ms")
    if twin_rows:
        print(f"PyTorch twin (torch:cpu, float32{threads}), median of {args.repeats} steps")
        for name, seconds in twin_rows:
            print(f"  {name:<24} {seconds * 1e3:9.3f} ms")
        print(f"  whole step, xpcnn / PyTorch: {rows[-1][1] / twin_rows[-1][1]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
