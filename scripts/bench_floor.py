#!/usr/bin/env python
"""What would NumPy-only tricks buy on workload "bench"?  A hand-tuned baseline for issue 5.

The same network and training as ``bench.py``'s workload "bench" (conv 1->F 5x5 with bias,
sigmoid, flatten, dense F*576 -> 10, softmax cross-entropy with its loss value, SGD lr 0.05),
written as one hand-tuned NumPy function: buffers allocated once, ``out=`` arguments, in-place
updates.  xpcnn cannot do any of that (the array API has no ``out=``; JAX arrays are
immutable), so this is roughly how far a one-thread, whole-batch step can go in NumPy, not
what xpcnn should be (measured against xpcnn in docs/performance.md).

It first checks that it computes what xpcnn computes (one epoch from the same weights and
batches, largest parameter difference printed), then times, round-robin in one process:
the floor, xpcnn on NumPy, and PyTorch's nn on the CPU.

  python scripts/bench_floor.py --batch-size 128 --repeats 15
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as bench.py does, before NumPy loads (docs/performance.md)

import benchmark as bench  # noqa: E402
import numpy as np  # noqa: E402

from xpcnn import data, resolve  # noqa: E402
from xpcnn.nn.losses import SoftmaxCrossEntropyLoss  # noqa: E402
from xpcnn.optim import SGD  # noqa: E402
from xpcnn.training.hostmem import keep_freed_memory  # noqa: E402

LR = 0.05


def floor_epoch(weights: dict, images, labels, batches, filters: int):
    """A closure training one epoch in hand-tuned NumPy; ``weights`` is updated in place."""
    batch = max(len(b) for b in batches)
    cols = np.empty((batch, 26, 576), np.float32)
    cols[:, 25, :] = 1                              # the row of ones that multiplies the bias
    z = np.empty((batch, filters, 576), np.float32)
    grad = np.empty_like(z)
    x = np.empty((batch, 1, 28, 28), np.float32)
    w, b = weights["0.weight"].reshape(filters, 25), weights["0.bias"]
    filters_and_bias = np.empty((filters, 26), np.float32)
    wd, bd = weights["3.weight"], weights["3.bias"]

    def step(index):
        n = len(index)
        np.divide(images[index], np.float32(255), out=x[:n])
        patches = cols[:n, :25].reshape(n, 5, 5, 24, 24)
        for i in range(5):
            for j in range(5):
                patches[:, i, j] = x[:n, 0, i:i + 24, j:j + 24]
        filters_and_bias[:, :25], filters_and_bias[:, 25] = w, b
        a = z[:n]
        np.matmul(filters_and_bias, cols[:n], out=a)    # Z1 = [f | b] . [cols ; 1]
        a *= 0.5
        np.tanh(a, out=a)
        a *= 0.5
        a += 0.5                                    # A = sigmoid(Z1), in place
        flat = a.reshape(n, -1)
        logits = flat @ wd
        logits += bd
        logits -= logits.max(axis=1, keepdims=True)
        softmax = np.exp(logits)
        total = softmax.sum(axis=1, keepdims=True)
        loss = np.log(total[:, 0]).sum() - logits[np.arange(n), labels[index]].sum()
        softmax /= total
        softmax[np.arange(n), labels[index]] -= 1
        softmax /= n                                # dE/dZ2
        grad_wd, grad_bd = flat.T @ softmax, softmax.sum(axis=0)
        g = grad[:n]
        np.matmul(softmax, wd.T, out=g.reshape(n, -1))
        derivative = np.subtract(1, a)
        derivative *= a
        g *= derivative                             # dE/dZ1
        grad_both = np.matmul(g, cols[:n].transpose(0, 2, 1)).sum(axis=0)
        grad_w, grad_b = grad_both[:, :25], grad_both[:, 25]
        for parameter, gradient in ((wd, grad_wd), (bd, grad_bd), (w, grad_w), (b, grad_b)):
            np.subtract(parameter, LR * gradient, out=parameter)   # SGD, in place
        return loss / n

    def epoch():
        for index in batches:
            step(index)

    return epoch


def xpcnn_weights_after_one_epoch(start: dict, images, labels, batches, filters: int) -> dict:
    backend = resolve("numpy")
    model = bench.xpcnn_network("bench", filters).to(backend, dtype="float32")
    model.load_state_dict(start)
    loss_fn, optimizer = SoftmaxCrossEntropyLoss(), SGD(LR)
    for index in batches:
        loss_fn(model(data.to_batch(images[index], backend, "float32")), labels[index])
        model.backward(loss_fn.backward(), input_grad=False)
        optimizer.step(model)
    return model.state_dict()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--filters", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.filters < 1 or args.repeats < 1:
        parser.error("--batch-size, --filters and --repeats must be >= 1")
    keep_freed_memory()  # the same allocator settings as bench.py
    images, labels = bench.workload_data("bench", None)
    batches = bench.batches_of(len(images), args.batch_size)
    start = bench.xpcnn_network("bench", args.filters).to(resolve("numpy"), dtype="float32").state_dict()

    weights = {name: value.copy() for name, value in start.items()}
    floor_epoch(weights, images, labels, batches, args.filters)()
    reference = xpcnn_weights_after_one_epoch(start, images, labels, batches, args.filters)
    difference = max(float(np.max(np.abs(weights[name] - reference[name]))) for name in reference)
    moved = max(float(np.max(np.abs(reference[name] - start[name]))) for name in reference)
    print(f"one epoch from the same weights: parameters moved by up to {moved:.2e}; largest |hand-tuned - xpcnn| "
          f"difference {difference:.2e}")

    epochs = {"numpy hand-tuned (out=)": floor_epoch(dict(start), images, labels, batches, args.filters),
              "xpcnn numpy": bench.xpcnn_epoch("numpy", "bench", images, labels, args.batch_size, args.filters,
                                               "float32")}
    if "cpu" in bench.torch_devices():
        epochs["pytorch nn cpu"] = bench.torch_epoch("cpu", "bench", images, labels, args.batch_size, args.filters,
                                                     "float32")
    times = {name: statistics.median(t) for name, t in bench.interleaved(epochs, args.repeats).items()}
    reference_s = times.get("pytorch nn cpu")
    print(f"workload bench: {len(images)} images/epoch, batch {args.batch_size}, filters {args.filters}, "
          f"float32, median of {args.repeats}")
    for name, seconds in times.items():
        ratio = f"{reference_s / seconds:.2f}x pytorch" if reference_s else ""
        print(f"  {name:<28} {seconds:8.4f} s  {len(images) / seconds:8.0f} images/s  {ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
