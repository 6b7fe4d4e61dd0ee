"""The benchmark's data-parallel rows (``scripts/bench.py --ranks N``): xpcnn's workload trained by
:class:`~xpcnn.distributed.DataParallelStep` on N MPI ranks, against one rank and against
PyTorch, all timed round-robin inside one job.

``bench.py`` launches ``mpiexec -n N python scripts/benchmark_ranks.py ...`` once per rank count
(:func:`run_ranks`).  Each round of the job times, one after the other:

* the N-rank epoch: every rank trains its share of each batch; a barrier, one untimed epoch
  (warm-up), a barrier, the timed epoch, a barrier; an epoch lasts until its slowest rank;
* the one-rank epoch: rank 0 alone, the same executor on a communicator of its own (so one core:
  a rank runs BLAS on one thread), while the other ranks sleep in a non-blocking barrier (a rank
  that waited in a blocking MPI call would spin and take a core);
* PyTorch's own network on the CPU (unless ``--no-anchor``): rank 0 alone on ``--torch-threads``
  threads (what PyTorch takes by default outside mpiexec; under it, it takes one), the other ranks
  asleep as above;
* the uncoupled epoch: every rank at once trains its own share of each batch on a communicator of
  its own, with no exchange and no waiting for the others (its own parameters drift from the
  others': the time is what counts).  It is the ceiling that coupling the ranks could reach on this
  machine: N uncoupled ranks / one rank is the speed-up the cores allow together (caches, memory,
  a virtual machine's host), and N coupled / N uncoupled what the exchange and the per-step wait
  for the slowest rank leave of it.

Interleaving them matters on a shared machine whose speed drifts: a slow spell hits each alike,
where timing one job after another does not.  Then one more N-rank epoch measures the gradient
exchange per step (pack, Allgather, ordered sum, unpack), with a barrier before each so that waiting
for a slower rank is not counted.  Rank 0 writes the medians, the exchange's time and bytes per
step, as JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
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
              chunk: int | None, backend: str = "numpy", timeout: float = 1800, anchor: bool = True) -> dict:
    """Time the workload on ``ranks`` MPI ranks, on one rank and (``anchor``) in PyTorch, round-robin
    in one job (a subprocess: ``mpiexec -n ranks``); returns rank 0's record.  Raises RuntimeError
    with the job's output when it fails.  PyTorch runs there on as many threads as it takes by
    default in this process (under mpiexec it would take one)."""
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise RuntimeError("mpiexec not found: pip install 'xpcnn[mpi]'")
    handle, out = tempfile.mkstemp(prefix="xpcnn-bench-ranks-", suffix=".json")
    os.close(handle)
    env = dict(os.environ, MPIEXEC_TIMEOUT=str(int(timeout)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                      env.get("PYTHONPATH")]))
    command = [mpiexec, "-n", str(ranks), sys.executable, os.path.abspath(__file__), "--workload", workload,
               "--batch", str(batch), "--filters", str(filters), "--dtype", dtype, "--repeats", str(repeats),
               "--backend", backend, "--out", out] + (["--chunk", str(chunk)] if chunk else []) \
        + (["--torch-threads", str(default_torch_threads())] if anchor else ["--no-anchor"])
    try:
        child = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout + 30,
                               start_new_session=True)
        if child.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} exited with {child.returncode}:\n{child.stdout}\n{child.stderr}")
        with open(out) as result:
            return json.load(result)
    finally:
        os.unlink(out)


def default_torch_threads() -> int:
    """PyTorch's default intra-op thread count here (the machine's physical cores), or 1."""
    try:
        import torch
    except ImportError:
        return 1
    return torch.get_num_threads()


def add_rank_rows(result: dict, ranks: list[int], chunk: int | None, backend: str = "numpy") -> list[dict]:
    """Time ``result``'s workload (a :func:`benchmark.run` result) on each of ``ranks`` ranks,
    one job each, and append to ``result["rows"]`` a row for one rank (from the first job) and one
    for each rank count: epoch time, images/s, the ratio to PyTorch on the CPU and the speed-up
    over one rank (both timed round-robin in the same job), the scaling efficiency (speed-up /
    ranks), the uncoupled ranks' speed-up over one rank (the ceiling the cores allow) and the
    gradient exchange per step (microseconds and bytes)."""
    naive = {row["spec"]: row for row in result["rows"]}.get("naive")
    pieces = f", chunks of {chunk}" if chunk else ""
    added = []

    def row(n, record, epoch_s, times):
        torch_s = record.get("torch_cpu_s")
        return {"impl": f"xpcnn {backend}, {n} MPI rank{'s' if n > 1 else ''}{pieces}",
                "spec": f"{backend}, {n} ranks", "ranks": n, "threads": n, "default": False,
                "epoch_s": epoch_s, "times": times,
                "images_per_s": record["images"] / epoch_s,
                "speed_vs_pytorch": torch_s / epoch_s if torch_s else None, "torch_cpu_s": torch_s,
                "speed_vs_naive": naive["epoch_s"] / epoch_s if naive else None,
                "one_rank_s": record["one_rank_s"], "speedup_vs_one_rank": record["one_rank_s"] / epoch_s,
                "scaling_efficiency": record["one_rank_s"] / epoch_s / n,
                "uncoupled_s": record["uncoupled_s"] if n > 1 else None,
                "uncoupled_speedup_vs_one_rank": record["one_rank_s"] / record["uncoupled_s"] if n > 1 else None,
                "comm_us_per_step": record["comm_us_per_step"] if n > 1 else 0.0,
                "comm_bytes_per_step": record["comm_bytes_per_step"] if n > 1 else 0,
                "steps_per_epoch": record["steps_per_epoch"]}

    for n in sorted(set(ranks)):
        record = run_ranks(n, result["workload"], result["batch"], result["filters"], result["dtype"],
                           result["repeats"], chunk, backend)
        if not added:
            added.append(row(1, record, record["one_rank_s"], record["one_rank_times"]))
        if n > 1:
            added.append(row(n, record, record["epoch_s"], record["times"]))
    result["rows"].extend(added)
    return added


def format_rank_rows(result: dict) -> list[str]:
    """The lines bench.py prints under its table for the rank rows."""
    lines = []
    for row in result["rows"]:
        if row.get("ranks", 1) > 1:
            torch_s = f", PyTorch CPU {row['torch_cpu_s']:.4f} s" if row.get("torch_cpu_s") else ""
            lines.append(f"  {row['impl']:<40} {row['speedup_vs_one_rank']:.2f}x one rank (scaling efficiency "
                         f"{100 * row['scaling_efficiency']:.0f}%), gradient exchange {row['comm_us_per_step']:.0f} us "
                         f"and {row['comm_bytes_per_step'] / 1e3:.0f} kB per step "
                         f"({100 * row['comm_us_per_step'] * 1e-6 * row['steps_per_epoch'] / row['epoch_s']:.1f}% "
                         f"of the epoch; one rank {row['one_rank_s']:.4f} s{torch_s})")
            lines.append(f"  {'':<40} uncoupled (each rank its share alone, no exchange) "
                         f"{row['uncoupled_s']:.4f} s, {row['uncoupled_speedup_vs_one_rank']:.2f}x one rank: "
                         f"coupling keeps {100 * row['uncoupled_s'] / row['epoch_s']:.0f}% of it")
    if lines:
        lines.append("  (one rank, N ranks, N uncoupled ranks and PyTorch CPU timed round-robin inside each mpiexec"
                     " job; the rank rows' xpcnn/pytorch is against that PyTorch; a rank runs BLAS on one thread)")
    return lines


def wait_asleep(comm) -> None:
    """Wait for the other ranks at a barrier without spinning (a blocking MPI call busy-polls and
    would take a core from the rank that is being timed).  Every rank must call it, alike."""
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(0.001)


def _rank_main(args, job) -> int:
    """One rank of the timing job (``job``: :class:`xpcnn.distributed.Job`)."""
    import numpy as np
    from benchmark import batches_of, torch_epoch, workload_data, xpcnn_network

    from xpcnn.backends import resolve, split_spec, synchronize
    from xpcnn.distributed import DataParallelStep, mpi, rank_device
    from xpcnn.nn.losses import MSELoss, SoftmaxCrossEntropyLoss
    from xpcnn.optim import SGD
    from xpcnn.training.executors import share_bounds
    from xpcnn.training.hostmem import keep_freed_memory

    keep_freed_memory()
    comm = job.comm
    name, device = split_spec(args.backend)
    backend = resolve(name, rank_device(name, device, job.local_rank))
    images, targets = workload_data(args.workload, None)
    batch = len(images) if args.workload == "article" else args.batch
    batches = batches_of(len(images), batch)

    def trainer_on(communicator, steps):
        """An epoch closure that trains the workload on ``communicator``'s ranks, one step for each
        of ``steps`` (image indices), and its executor."""
        executor = DataParallelStep(communicator, chunk=args.chunk)
        model = xpcnn_network(args.workload, args.filters).to(backend, dtype=args.dtype)
        loss_fn = MSELoss() if args.workload == "article" else SoftmaxCrossEntropyLoss()
        executor.bind(model, loss_fn, SGD(0.1 if args.workload == "article" else 0.05), backend, args.dtype)

        def epoch():
            losses = []  # (an uncoupled rank may have no share at all when batches are tiny)
            with executor.running():
                for index in steps:
                    losses = [executor.step(executor.to_device(images[index], targets[index]))]
            synchronize(backend, *losses, *model.params.values())

        return epoch, executor

    everyone, executor = trainer_on(comm, batches)
    solo_comm = comm.Split(0 if comm.rank == 0 else mpi().UNDEFINED, comm.rank)
    alone, alone_executor = trainer_on(solo_comm, batches) if comm.rank == 0 else (None, None)
    # Uncoupled: this rank's share of every batch (the share DataParallelStep gives it), on its own.
    own_comm = comm.Split(comm.rank, 0)
    shares = []
    for index in batches:
        bounds = share_bounds(len(index), comm.size)
        if comm.rank < len(bounds):  # (a batch of fewer images than ranks leaves some out)
            shares.append(index[bounds[comm.rank][0]:bounds[comm.rank][1]])
    uncoupled, uncoupled_executor = trainer_on(own_comm, shares)
    anchor = None
    if args.anchor and comm.rank == 0:
        anchor = torch_epoch("cpu", args.workload, images, targets, batch, args.filters, args.dtype,
                             threads=args.torch_threads)

    def timed_together(epoch):
        """Every rank runs ``epoch`` at once (warm-up first); it lasts until the slowest is done."""
        comm.Barrier()
        epoch()  # warm-up, as bench.py's interleaved() does for every implementation
        comm.Barrier()
        started = time.perf_counter()
        epoch()
        comm.Barrier()
        return time.perf_counter() - started

    def timed_alone(epoch):
        """Rank 0 times ``epoch`` (warm-up first) while the other ranks sleep."""
        elapsed = None
        wait_asleep(comm)
        if epoch is not None:
            epoch()
            started = time.perf_counter()
            epoch()
            elapsed = time.perf_counter() - started
        wait_asleep(comm)
        return elapsed

    times, one_rank, torch_times, comm_us, apart = [], [], [], [], []
    for _ in range(args.repeats):
        times.append(timed_together(everyone))
        apart.append(timed_together(uncoupled))
        one_rank.append(timed_alone(alone))
        if args.anchor:
            torch_times.append(timed_alone(anchor))
        # The cost of the exchange alone: an extra epoch with a barrier before every reduction, so
        # that waiting for a slower rank is not counted (not timed: the barriers cost a little).
        executor.comm_seconds, executor.comm_steps, executor.timing_barrier = 0.0, 0, True
        everyone()
        executor.timing_barrier = False
        comm_us.append(1e6 * executor.comm_seconds / max(1, executor.comm_steps))
    slowest = np.max(np.array(comm.allgather(times)), axis=0).tolist()  # an epoch lasts until its slowest rank
    comm_us = np.max(np.array(comm.allgather(comm_us)), axis=0).tolist()
    apart = np.max(np.array(comm.allgather(apart)), axis=0).tolist()
    if comm.rank == 0:
        record = {"ranks": comm.size, "backend": backend.label, "images": len(images), "batch": batch,
                  "chunk": args.chunk, "epoch_s": statistics.median(slowest), "times": slowest,
                  "one_rank_s": statistics.median(one_rank), "one_rank_times": one_rank,
                  "uncoupled_s": statistics.median(apart), "uncoupled_times": apart,
                  "torch_cpu_s": statistics.median(torch_times) if torch_times else None, "torch_times": torch_times,
                  "comm_us_per_step": statistics.median(comm_us), "comm_bytes_per_step": executor.bytes_per_step,
                  "steps_per_epoch": len(batches), "parameters": executor.count - 1}
        with open(args.out, "w") as handle:
            json.dump(record, handle)
        alone_executor.close()
        solo_comm.Free()
    uncoupled_executor.close()
    own_comm.Free()
    executor.close()
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/benchmark_ranks.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=("bench", "article"), default="bench")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--filters", type=int, default=8)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk", type=int)
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--no-anchor", dest="anchor", action="store_false",
                        help="do not time PyTorch's network inside the job")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="PyTorch's intra-op threads (default: what it takes, one under mpiexec)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.anchor and importlib.util.find_spec("torch") is None:
        args.anchor = False
    from xpcnn.distributed import run_job

    return run_job(lambda job: _rank_main(args, job), "benchmark_ranks")


if __name__ == "__main__":
    raise SystemExit(main())
