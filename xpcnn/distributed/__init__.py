"""Data-parallel training over MPI ranks (mpi4py): one process per core, GPU or machine.

Launch with ``mpiexec -n N python scripts/train.py --distributed ...`` (docs/distributed.md).
mpi4py is imported only by the functions here, when asked for: without it the rest of xpcnn works,
and :func:`mpi` raises :class:`MPIUnavailable` naming the extra to install (``xpcnn[mpi]``).

:class:`DataParallelStep` is a step executor (the contract is in
:mod:`~xpcnn.training.executors`).  Every rank runs the same Trainer on the same data with the same
seed, so every rank draws the same shuffle and augmentation: the global batch is the single-process
batch.  Rank k keeps share k of it (``share_bounds(n, size)``, the cut ``SplitStep(threads=size)``
makes) and runs forward and backward on it with the loss and dE/dO scaled by n_k / n, exactly as
:meth:`SplitStep.gradients <xpcnn.training.executors.split.SplitStep.gradients>` does per share.  Each rank
then packs its gradients and weighted loss into one flat host vector in the model's dtype, the
vectors meet in a (size, count) host buffer, and every rank adds the rows in rank order,
(((g_0 + g_1) + g_2) + ...), as ``ordered_sum`` adds the threads' results.  The buffer is an MPI-3
shared-memory window when every rank runs on one machine (each rank writes its own row; after a
barrier every rank reads every row, no copy by MPI), else the vectors are ``Allgather``\\ ed into
it.  So:

* every rank holds bitwise the same sum, and so the same parameters after every step;
* an N-rank run is **bitwise equal** to the single-process ``SplitStep(threads=N)`` run (each
  batch cut into N shares), whatever the MPI library, and equal to the plain run up to float
  rounding;
* BatchNorm is synchronised: its layers exchange their share's statistics over the ranks
  (:class:`~xpcnn.distributed.step.RankStatistics`, host arrays) and combine them in rank order, as
  the shares of a ``SplitStep`` do, so every rank normalises with the whole batch's statistics;
* the loss each step returns is the global batch loss, the same on every rank: a divergence is
  seen at the same step everywhere.

``reduction="allreduce"`` sums with ``MPI_Allreduce`` instead: repeatable for a fixed rank count and
MPI library, **not** bitwise-equal to the threaded run (the MPI library picks the order of the sum).
``reduction="nccl"`` keeps the gradients on the GPU (cupy and torch:cuda ranks): NCCL through
``cupy.cuda.nccl``, bootstrapped over MPI, all-gathers them into a device buffer that is summed in
rank order on the device -- the same semantics as the host path.  It was written without a GPU to
test it on (see docs/distributed.md).  The host path never hands a device pointer to MPI: the
``mpich`` wheel is not CUDA-aware.

Evaluation is sharded: rank k evaluates a contiguous run of whole evaluation batches
(:meth:`DataParallelStep.evaluation_batches`), and :meth:`DataParallelStep.gather_evaluation` gives
every rank all batches' results in batch order, so the metrics are exactly the single process's.

=============  ====================================================================================
mpi.py         loading mpi4py (:func:`mpi`, :class:`MPIUnavailable`), :func:`local_rank`,
               :func:`rank_device`
reducers.py    the gradient exchange behind one interface: shared-memory gather, Allgather,
               Allreduce, NCCL
step.py        :class:`DataParallelStep`, :func:`fingerprint`, :class:`RankMismatch`
job.py         :class:`Job` and :func:`run_job`: the ranks' start-up, shared files, exit and abort
=============  ====================================================================================
"""

from xpcnn.distributed.job import Job, run_job
from xpcnn.distributed.mpi import EXTRA, MPIUnavailable, local_rank, mpi, rank_device
from xpcnn.distributed.reducers import REDUCTIONS, Reducer, make_reducer
from xpcnn.distributed.step import DataParallelStep, RankMismatch, fingerprint

__all__ = ["EXTRA", "REDUCTIONS", "DataParallelStep", "Job", "MPIUnavailable", "RankMismatch", "Reducer", "fingerprint",
           "local_rank", "make_reducer", "mpi", "rank_device", "run_job"]
