"""The executor a run uses unless it is given one: the one policy behind ``train.py``'s default
command and ``Trainer(...)`` without ``executor=`` (and ``bench.py``'s row for the default command).

=========================  =====================================================================
the backend                the default step
=========================  =====================================================================
compiles by default (JAX)  compiled (``jax.jit``): whole batches; ``threads``/``chunk`` refused
a GPU (CuPy, ``cuda``)     the whole batch (``chunk``: pieces of it); ``threads`` refused
a CPU (NumPy, PyTorch,     :class:`~xpcnn.training.executors.SplitStep`: pieces of
array-api-strict)          ``chunk`` = :data:`DEFAULT_CHUNK` images and at least
                           :data:`MIN_SHARES` of them, on every core this process may use
                           (``threads``: at most that many), one BLAS thread each
=========================  =====================================================================

On a CPU the split is fixed by the batch (``chunk``), never by the machine: threads only schedule
the pieces and the sums run in piece order, so a run's numbers are the same bits on 1, 2 or 64
cores.  One BLAS thread per share thread also keeps a step from waiting on a BLAS worker whose core
another process holds (docs/performance.md).  PyTorch on the CPU takes the same split: measured on
a loaded 2-core VM (vgg, batch 64), its whole-batch step took 2.1 s, the split 0.8 s.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from xpcnn.backends import Backend, device_name, wants_gpu
from xpcnn.training.executors.compiled import compiled_executor, compiles_by_default, has_compiled_executor
from xpcnn.training.executors.split import SplitStep
from xpcnn.training.executors.whole import WholeBatchStep

if TYPE_CHECKING:
    from xpcnn.nn.base import Layer
    from xpcnn.training.executors.base import StepExecutor

# Images per piece of a batch on a CPU, and the fewest pieces a batch is cut into.  Measured on the
# 2-core VM at batch 128 (docs/performance.md, "The default split"): pieces of 64 beat pieces of 32
# on lenet5 (9.5 vs 13.3 ms a step), vgg (211 vs 237 ms) and the benchmark network (3.0 vs 4.3 ms):
# every piece costs the whole network's per-operation overhead once more, and four pieces on two
# cores do not run faster than two.  At least two pieces keep two cores busy at batch 64 too.
DEFAULT_CHUNK = 64
MIN_SHARES = 2


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. under ``taskset`` or a container's
    limit), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _count(value: object, name: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"default_executor: {name} must be an integer >= 1 or None, got {value!r}")
    return value


def default_executor(backend: Backend, model: Layer | None = None, threads: int | None = None,
                     chunk: int | None = None, compile: bool | None = None) -> StepExecutor:
    """The step executor of the table above for ``backend``.  ``threads``: at most that many threads
    (None: every usable core); ``chunk``: pieces of at most that many images (None:
    :data:`DEFAULT_CHUNK` on a CPU and at least :data:`MIN_SHARES` pieces, whole batches
    elsewhere); ``compile``: True compiles (a :class:`~xpcnn.backends.BackendError` where the
    backend cannot), False never, None where the backend compiles by default.  A combination that
    cannot apply (``threads`` or ``chunk`` with a compiled step, ``threads`` on a GPU) is a
    ValueError naming it, never silently dropped.  ``model``: the network the executor will run
    (the policy does not depend on it today)."""
    threads, chunk = _count(threads, "threads"), _count(chunk, "chunk")
    if compile or (compile is None and compiles_by_default(backend) and has_compiled_executor(backend)):
        if threads is not None or chunk is not None:
            raise ValueError(f"{backend.label} runs each step compiled, on whole batches: threads and chunk cannot "
                             "apply (drop them, or do not compile: --no-compile)")
        return compiled_executor(backend)
    if wants_gpu(backend.name, device_name(backend.device)):
        if threads is not None and threads != 1:
            raise ValueError(f"threads split a batch over CPU cores; {backend.label} is a GPU (drop threads)")
        return SplitStep(1, chunk) if chunk is not None else WholeBatchStep()
    threads = threads if threads is not None else usable_cores()
    if chunk is not None:  # the caller's cut, as given
        return SplitStep(threads, chunk)
    return SplitStep(threads, DEFAULT_CHUNK, MIN_SHARES)
