#!/usr/bin/env python
"""What two threads cost each other: one share of a training step, alone and two at once.

Times forward + backward of the benchmark network (``scripts/bench.py``, workload "bench") on
one share of --share images with NumPy, BLAS held to one thread, three ways, each for
--seconds of steps:

* alone: one thread, nothing beside it;
* two threads at once: two threads in this process, each with its own copy of the network,
  as ``xpcnn.parallel.SplitStep`` runs them;
* two processes at once: the same two loops in two separate Python processes.

Two processes share the cores' memory system but not Python's global interpreter lock (GIL);
two threads share both.  So "processes / alone" is what the memory system costs, and
"threads / processes" what the GIL adds on top (NumPy releases it inside large array
operations only; every other step of the Python code waits for it).

  python scripts/share_contention.py
  python scripts/share_contention.py --share 64 --seconds 4
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as in bench.py: idle BLAS threads sleep

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench import workload_data, xpcnn_network  # noqa: E402
from xpcnn import data  # noqa: E402
from xpcnn.backend import resolve  # noqa: E402
from xpcnn.hostmem import keep_freed_memory  # noqa: E402
from xpcnn.losses import SoftmaxCrossEntropyLoss  # noqa: E402


def share_loop(share: int, seconds: float, start_at: float | None = None) -> list[float]:
    """Seconds per forward + backward of one ``share``-image piece, over ``seconds`` of steps
    (after 10 untimed ones); starts at wall-clock time ``start_at`` when given."""
    backend = resolve("numpy")
    model = xpcnn_network("bench", 8).to(backend, dtype="float32")
    loss_fn = SoftmaxCrossEntropyLoss()
    images, labels = workload_data("bench", None)
    pieces = [slice(lo, lo + share) for lo in range(0, len(images) - share + 1, share)]

    def step(k):
        piece = pieces[k % len(pieces)]
        x = data.to_batch(images[piece], backend, "float32")
        y = data.targets_to_batch(labels[piece], backend, "float32")
        loss_fn(model(x), y)
        model.backward(loss_fn.backward(), input_grad=False)

    for k in range(10):
        step(k)
    if start_at is not None:
        time.sleep(max(0.0, start_at - time.time()))
    times, k, stop = [], 0, time.perf_counter() + seconds
    while time.perf_counter() < stop:
        started = time.perf_counter()
        step(k)
        times.append(time.perf_counter() - started)
        k += 1
    return times


def two_threads(share: int, seconds: float) -> list[float]:
    results: list[list[float]] = [[], []]
    start_at = time.time() + 2.0  # both loops built and warmed up by then

    def run(index):
        results[index] = share_loop(share, seconds, start_at)

    workers = [threading.Thread(target=run, args=(index,)) for index in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return results[0] + results[1]


def two_processes(share: int, seconds: float) -> list[float]:
    start_at = time.time() + 5.0  # both interpreters started and warmed up by then
    command = [sys.executable, os.path.abspath(__file__), "--worker", str(start_at),
               "--share", str(share), "--seconds", str(seconds)]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    times = []
    for worker in workers:
        out, _ = worker.communicate()
        if worker.returncode != 0:
            raise RuntimeError(f"a worker process failed with status {worker.returncode}")
        times += [float(value) for value in out.split()]
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--share", type=int, default=64, help="images per share (default 64, as --chunk 64)")
    parser.add_argument("--seconds", type=float, default=4.0, help="how long each way runs (default 4)")
    parser.add_argument("--worker", type=float, default=None, help=argparse.SUPPRESS)  # internal: one process's loop
    args = parser.parse_args(argv)
    if not 1 <= args.share <= 4000:
        parser.error(f"--share must be between 1 and 4000 (of the 4,500 embedded training digits), got {args.share}")
    if not args.seconds > 0:
        parser.error(f"--seconds must be > 0, got {args.seconds}")
    keep_freed_memory()
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        if args.worker is not None:
            print(" ".join(f"{t:.9f}" for t in share_loop(args.share, args.seconds, args.worker)))
            return 0
        rows = [("alone", share_loop(args.share, args.seconds)),
                ("two threads at once", two_threads(args.share, args.seconds)),
                ("two processes at once", two_processes(args.share, args.seconds))]
    alone = statistics.median(rows[0][1])
    print(f"one {args.share}-image share (forward + backward, bench network, float32, NumPy, BLAS 1 thread), "
          f"median over {args.seconds:g} s of steps; {os.cpu_count()} cores")
    for name, times in rows:
        median = statistics.median(times)
        print(f"  {name:<24} {median * 1e3:8.3f} ms  {median / alone:5.2f}x alone  ({len(times)} steps)")
    threads, processes = statistics.median(rows[1][1]), statistics.median(rows[2][1])
    print(f"  memory system (processes / alone) {processes / alone:.2f}x; GIL on top (threads / processes) "
          f"{threads / processes:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
