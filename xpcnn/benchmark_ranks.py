"""The benchmark's data-parallel rows (``scripts/bench.py --ranks N``): xpcnn's workload trained by
:class:`~xpcnn.training.distributed.DataParallelStep` on N MPI ranks.

``bench.py`` launches ``mpiexec -n N python -m xpcnn.benchmark_ranks ...`` once per rank count
(:func:`run_ranks`); every rank builds the workload's network, and the ranks time epochs together:
a barrier, one untimed epoch (warm-up), a barrier, the timed epoch, a barrier; an epoch's time is
the slowest rank's.  Then one more epoch measures the gradient exchange per step (pack, Allgather,
ordered sum, unpack), with a barrier before each so that waiting for a slower rank is not counted.
Rank 0 writes the median of ``--repeats`` epochs, the exchange's time and bytes per step, as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time


def find_mpiexec() -> str | None:
    """The ``mpich`` wheel installs ``mpiexec`` beside the interpreter (a venv's bin/, which is not
    on PATH unless the venv is activated), else whatever PATH has."""
    import shutil

    for candidate in (os.path.join(sysconfig.get_path("scripts"), "mpiexec"),
                      os.path.join(os.path.dirname(sys.executable), "mpiexec")):
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("mpiexec")


def run_ranks(ranks: int, workload: str, batch: int, filters: int, dtype: str, repeats: int,
              chunk: int | None, backend: str = "numpy", timeout: float = 1800) -> dict:
    """Time the workload on ``ranks`` MPI ranks (a subprocess: ``mpiexec -n ranks``); returns rank
    0's record.  Raises RuntimeError with the job's output when it fails."""
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise RuntimeError("mpiexec not found: pip install 'xpcnn[mpi]'")
    handle, out = tempfile.mkstemp(prefix="xpcnn-bench-ranks-", suffix=".json")
    os.close(handle)
    env = dict(os.environ, MPIEXEC_TIMEOUT=str(int(timeout)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                      env.get("PYTHONPATH")]))
    command = [mpiexec, "-n", str(ranks), sys.executable, "-m", "xpcnn.benchmark_ranks", "--workload", workload,
               "--batch", str(batch), "--filters", str(filters), "--dtype", dtype, "--repeats", str(repeats),
               "--backend", backend, "--out", out] + (["--chunk", str(chunk)] if chunk else [])
    try:
        child = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout + 30,
                               start_new_session=True)
        if child.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} exited with {child.returncode}:\n{child.stdout}\n{child.stderr}")
        with open(out) as result:
            return json.load(result)
    finally:
        os.unlink(out)


def add_rank_rows(result: dict, ranks: list[int], chunk: int | None, backend: str = "numpy") -> list[dict]:
    """Time ``result``'s workload (a :func:`xpcnn.benchmark.run` result) on one rank and on each of
    ``ranks`` ranks, and append a row for each to ``result["rows"]``: epoch time, images/s, the
    ratio to PyTorch on the CPU timed in the same bench.py run, the scaling efficiency against one
    rank (speed-up / ranks) and the gradient exchange per step (microseconds and bytes)."""
    counts = sorted({1, *ranks})
    records = {n: run_ranks(n, result["workload"], result["batch"], result["filters"], result["dtype"],
                            result["repeats"], chunk, backend) for n in counts}
    by_spec = {row["spec"]: row for row in result["rows"]}
    torch_cpu, naive = by_spec.get("torch-native:cpu"), by_spec.get("naive")
    one = records[1]["epoch_s"]
    added = []
    for n, record in records.items():
        row = {"impl": f"xpcnn {backend}, {n} MPI rank{'s' if n > 1 else ''}"
                       + (f", chunks of {chunk}" if chunk else ""),
               "spec": f"{backend}, {n} ranks", "ranks": n, "epoch_s": record["epoch_s"], "times": record["times"],
               "images_per_s": record["images"] / record["epoch_s"],
               "speed_vs_pytorch": torch_cpu["epoch_s"] / record["epoch_s"] if torch_cpu else None,
               "speed_vs_naive": naive["epoch_s"] / record["epoch_s"] if naive else None,
               "speedup_vs_one_rank": one / record["epoch_s"], "scaling_efficiency": one / record["epoch_s"] / n,
               "comm_us_per_step": record["comm_us_per_step"], "comm_bytes_per_step": record["comm_bytes_per_step"],
               "steps_per_epoch": record["steps_per_epoch"]}
        result["rows"].append(row)
        added.append(row)
    return added


def format_rank_rows(result: dict) -> list[str]:
    """The lines bench.py prints under its table for the rank rows."""
    lines = []
    for row in result["rows"]:
        if "ranks" in row:
            lines.append(f"  {row['impl']:<40} {row['speedup_vs_one_rank']:.2f}x one rank (scaling efficiency "
                         f"{100 * row['scaling_efficiency']:.0f}%), gradient exchange {row['comm_us_per_step']:.0f} us "
                         f"and {row['comm_bytes_per_step'] / 1e3:.0f} kB per step "
                         f"({100 * row['comm_us_per_step'] * 1e-6 * row['steps_per_epoch'] / row['epoch_s']:.1f}% "
                         f"of the epoch)")
    return lines


def _rank_main(args, job) -> int:
    """One rank of the timing job (``job``: :class:`xpcnn.training.distributed.Job`)."""
    import numpy as np

    from .backend import parse_spec, resolve, synchronize
    from .benchmark import batches_of, workload_data, xpcnn_network
    from .losses import MSELoss, SoftmaxCrossEntropyLoss
    from .optim import SGD
    from .training.distributed import DataParallelStep, rank_device
    from .training.hostmem import keep_freed_memory

    keep_freed_memory()
    comm = job.comm
    executor = DataParallelStep(comm, chunk=args.chunk, local_size=job.local_size)
    name, device = parse_spec(args.backend)
    backend = resolve(name, rank_device(name, device, job.local_rank))
    images, targets = workload_data(args.workload, None)
    batch = len(images) if args.workload == "article" else args.batch
    model = xpcnn_network(args.workload, args.filters).to(backend, dtype=args.dtype)
    loss_fn = MSELoss() if args.workload == "article" else SoftmaxCrossEntropyLoss()
    executor.bind(model, loss_fn, SGD(0.1 if args.workload == "article" else 0.05), backend, args.dtype)
    batches = batches_of(len(images), batch)

    def epoch():
        with executor.running():
            for index in batches:
                loss = executor.step(executor.to_device(images[index], targets[index]))
        synchronize(backend, loss, *model.params.values())

    times, comm_us = [], []
    for _ in range(args.repeats):
        comm.Barrier()
        epoch()  # warm-up, as bench.py's interleaved() does for every implementation
        comm.Barrier()
        started = time.perf_counter()
        epoch()
        comm.Barrier()
        times.append(time.perf_counter() - started)
        # The cost of the exchange alone: an extra epoch with a barrier before every reduction, so
        # that waiting for a slower rank is not counted (not timed: the barriers cost a little).
        executor.comm_seconds, executor.comm_steps, executor.timing_barrier = 0.0, 0, True
        epoch()
        executor.timing_barrier = False
        comm_us.append(1e6 * executor.comm_seconds / max(1, executor.comm_steps))
    slowest = np.max(np.array(comm.allgather(times)), axis=0).tolist()  # an epoch lasts until its slowest rank
    comm_us = np.max(np.array(comm.allgather(comm_us)), axis=0).tolist()
    if comm.rank == 0:
        record = {"ranks": comm.size, "backend": backend.label, "images": len(images), "batch": batch,
                  "chunk": args.chunk, "epoch_s": statistics.median(slowest), "times": slowest,
                  "comm_us_per_step": statistics.median(comm_us), "comm_bytes_per_step": executor.bytes_per_step,
                  "steps_per_epoch": len(batches), "parameters": executor.count - 1}
        with open(args.out, "w") as handle:
            json.dump(record, handle)
    executor.close()
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xpcnn.benchmark_ranks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=("bench", "article"), default="bench")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--filters", type=int, default=8)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk", type=int)
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    from .training.distributed import run_job

    return run_job(lambda job: _rank_main(args, job), "xpcnn.benchmark_ranks")


if __name__ == "__main__":
    raise SystemExit(main())
