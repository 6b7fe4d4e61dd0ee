#!/usr/bin/env python
"""Where one training step of the benchmark network spends its time, phase by phase.

Runs the network of ``scripts/bench.py`` (workload "bench") on one backend and times each
phase of a step on its own (the batch's transfer, every layer's forward and backward, the loss,
the update), waiting for the device after each phase, as the median of --repeats steps; then the
whole step without those waits.  The phases add up to more than the whole step on a GPU: each
wait empties the device's queue, which the whole step keeps full.

  python scripts/profile_step.py --backend numpy --batch-size 128
  python scripts/profile_step.py --backend cupy:cuda --batch-size 512 --repeats 200
"""

from __future__ import annotations

import argparse
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
from xpcnn.backends import BackendError, resolve, split_spec, synchronize  # noqa: E402
from xpcnn.nn.conv import Conv2D  # noqa: E402
from xpcnn.nn.losses import SoftmaxCrossEntropyLoss  # noqa: E402
from xpcnn.optim import SGD  # noqa: E402
from xpcnn.training.hostmem import keep_freed_memory  # noqa: E402


def profile(spec: str, batch: int, filters: int, dtype: str, repeats: int, functions: int = 0, im2col: str = "auto"):
    backend = resolve(*split_spec(spec))
    model = xpcnn_network("bench", filters).to(backend, dtype=dtype)
    model.layers[0].im2col = im2col
    loss_fn, optimizer = SoftmaxCrossEntropyLoss(), SGD(0.05)
    images, labels = workload_data("bench", None)
    times: dict[str, list[float]] = {}

    def timed(name, function, *args):
        started = time.perf_counter()
        result = function(*args)
        synchronize(backend, *(r for r in (result if isinstance(result, tuple) else (result,)) if r is not None),
                    *model.params.values())
        times.setdefault(name, []).append(time.perf_counter() - started)
        return result

    def phased_step(index):
        x, y = timed("batch to device", lambda: (data.to_batch(images[index], backend, dtype),
                                                 data.targets_to_batch(labels[index], backend, dtype)))
        for layer in model.layers:
            x = timed(f"{layer.name} forward", layer, x)
        timed("loss forward", loss_fn, x, y)
        grad = timed("loss backward", loss_fn.backward)
        for position, layer in reversed(list(enumerate(model.layers))):
            if position == 0:
                timed(f"{layer.name} backward", functools.partial(layer.backward, input_grad=False), grad)
            else:
                grad = timed(f"{layer.name} backward", layer.backward, grad)
        timed("update", optimizer.step, model)

    def whole_step(index):
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
        started = time.perf_counter()
        synchronize(backend, whole_step(index), *model.params.values())
        whole.append(time.perf_counter() - started)
    rows = [(name, statistics.median(values)) for name, values in times.items()]
    if functions:  # where the host's time goes (on a GPU the host is the limit at these sizes)
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(lambda: [whole_step(index) for index in indices[5:]])
        synchronize(backend, *model.params.values())
        pstats.Stats(profiler).sort_stats("tottime").print_stats(functions)
    return rows + [("sum of the phases", sum(t for _, t in rows)), ("whole step", statistics.median(whole[5:]))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--backend", default="numpy", help="backend spec: numpy, cupy:cuda, torch:cuda, ...")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--filters", type=int, default=8)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--im2col", choices=Conv2D.IM2COL, default="auto",
                        help="how the convolution builds its patches (Conv2D's im2col; default auto)")
    parser.add_argument("--functions", type=int, default=0, metavar="N",
                        help="also profile the host (cProfile) over the whole steps and list its N costliest functions")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.filters < 1 or args.repeats < 1 or args.functions < 0:
        parser.error("--batch-size, --filters and --repeats must be >= 1, --functions >= 0")
    if args.batch_size > 4000:
        parser.error("--batch-size must be at most 4000 (of the 4,500 embedded training digits)")
    keep_freed_memory()
    try:
        rows = profile(args.backend, args.batch_size, args.filters, args.dtype, args.repeats, args.functions,
                       args.im2col)
    except BackendError as exc:
        parser.error(str(exc))
    print(f"{args.backend}, batch {args.batch_size}, {args.filters} filters, {args.dtype}, im2col {args.im2col}, "
          f"median of {args.repeats} steps")
    for name, seconds in rows:
        print(f"  {name:<22} {seconds * 1e3:9.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
