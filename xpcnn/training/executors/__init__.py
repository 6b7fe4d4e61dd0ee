"""Step executors: how one training step runs (the contract: :mod:`~xpcnn.training.executors.base`).

==============  ===============================================================================
base.py         the contract, :class:`StepExecutor`, and :func:`forward_backward`, the one forward
                and backward pass every executor runs
whole.py        :class:`WholeBatchStep`, the plain step
split.py        :class:`SplitStep`: each batch cut into shares (``--chunk``) over threads (``--threads``),
                BatchNorm synchronised over the shares
default.py      :func:`default_executor`: the executor of a run given none (the CLI's and the Trainer's)
compiled.py     what compiled executors share; :func:`compiled_executor` (``--compile``)
jax_jit.py      :class:`JaxJitStep`: ``jax.jit`` of the whole step
cuda_graph.py   :class:`TorchGraphStep`: the whole step as one CUDA graph on ``torch:cuda``
==============  ===============================================================================

:class:`~xpcnn.distributed.DataParallelStep` (MPI ranks) is one more, in :mod:`xpcnn.distributed`.
Adding an executor is one module with a :class:`StepExecutor` subclass (and one line below).
"""

from xpcnn.training.executors.base import (
    StepExecutor,
    forward_backward,
    ordered_sum,
    refuse_batch_statistics,
    refuse_empty_batch,
    share_bounds,
    unpack,
)
from xpcnn.training.executors.compiled import (
    CompiledStep,
    compiled_executor,
    compiles_by_default,
    has_compiled_executor,
)
from xpcnn.training.executors.cuda_graph import TorchGraphStep
from xpcnn.training.executors.default import DEFAULT_CHUNK, MIN_SHARES, default_executor, usable_cores
from xpcnn.training.executors.jax_jit import JaxJitStep
from xpcnn.training.executors.split import ShareExchange, ShareReducer, SplitStep, make_executor, statistics_layers
from xpcnn.training.executors.whole import WholeBatchStep

__all__ = ["DEFAULT_CHUNK", "MIN_SHARES", "CompiledStep", "JaxJitStep", "ShareExchange", "ShareReducer", "SplitStep",
           "StepExecutor",
           "TorchGraphStep", "WholeBatchStep", "compiled_executor", "compiles_by_default", "default_executor",
           "forward_backward", "has_compiled_executor", "make_executor", "ordered_sum", "refuse_batch_statistics",
           "refuse_empty_batch", "share_bounds", "statistics_layers", "unpack", "usable_cores"]
