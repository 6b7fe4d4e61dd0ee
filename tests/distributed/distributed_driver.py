"""Run under mpiexec by tests/distributed/test_distributed.py: the library's data-parallel step driven directly
(not through train.py), for the failures a command line cannot provoke.

    python distributed_driver.py raise DATA     rank 1 raises at the end of epoch 1 (the job must abort)
    python distributed_driver.py params DATA    rank 1 starts from other parameters (a RankMismatch)
    python distributed_driver.py blas DATA      prints each rank's BLAS threads outside and inside a step
    python distributed_driver.py empty DATA     prints what a step given an empty batch raises
    python distributed_driver.py shared DATA OUT     trains, gradients meeting in shared memory; rank 0
    python distributed_driver.py allgather DATA OUT  saves the parameters to OUT (.npz)
"""

import dataclasses
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from xpcnn import data  # noqa: E402
from xpcnn.backends import resolve  # noqa: E402
from xpcnn.distributed import DataParallelStep, RankMismatch, run_job  # noqa: E402
from xpcnn.training import Config, Lambda, Trainer, build_model  # noqa: E402


def main(job, mode: str, path: str, out: str | None = None) -> int:
    config = Config(epochs=3, batch_size=32, dtype="float64")
    dataset = data.load(path)
    # "params": the same configuration, but rank 1's network is initialised from another seed.
    model = build_model(dataclasses.replace(config, seed=job.rank if mode == "params" else 0))

    def fail(trainer, record):
        if job.rank == 1:
            raise RuntimeError("rank 1 failed on purpose after epoch 1")

    exchange = {"shared": {"shared_memory": True}, "allgather": {"shared_memory": False}}.get(mode, {})
    with Trainer(config, resolve("numpy"), model, executor=DataParallelStep(job.comm, **exchange),
                 extensions=[Lambda(on_epoch_end=fail)] if mode == "raise" else []) as trainer:
        if mode == "blas":
            from threadpoolctl import threadpool_info

            def blas_threads():
                return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]

            outside = blas_threads()
            with trainer.executor.running():
                print(f"rank {job.rank}: BLAS threads {outside} outside a step, {blas_threads()} inside", flush=True)
            return 0
        if mode == "empty":
            try:
                trainer.executor.to_device(dataset.train.images[:0], dataset.train.labels[:0])
            except data.DataError as exc:
                print(f"rank {job.rank}: {exc}", flush=True)
            return 0
        try:
            trainer.executor.check_same_run(trainer)
        except RankMismatch as exc:
            if job.is_main:
                print(f"mismatch: {exc}", flush=True)
            return 2
        trainer.fit(dataset.train)
        if out and job.is_main:
            print(f"executor: {trainer.executor.describe()}", flush=True)
            np.savez(out, **trainer.model.state_dict())
    return 0


if __name__ == "__main__":
    raise SystemExit(run_job(lambda job: main(job, *sys.argv[1:4]), "distributed_driver.py"))
