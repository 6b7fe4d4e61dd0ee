"""The one place that knows about array libraries.

Everything else in xpcnn gets its namespace from :func:`namespace` (a thin,
checked wrapper around ``array_api_compat.array_namespace``) and creates new
arrays with ``device=`` and ``dtype=`` taken from its inputs.  This package
turns a backend *name* and an optional *device* string into a namespace and a
device object, and moves arrays to and from host NumPy.

Backends:

==================  =====================================  ==================
name                devices                                 install
==================  =====================================  ==================
numpy               cpu                                     (base install)
cupy                cuda, cuda:N                            xpcnn[cuda12] / [cuda13]
torch               cpu, cuda, cuda:N                       xpcnn[torch]
jax                 cpu, cuda, cuda:N (gpu)                 xpcnn[jax]
array_api_strict    CPU_DEVICE, device1, device2            xpcnn[test]
==================  =====================================  ==================

Each library's quirks (its import and configuration, its devices, its arrays' way to and from the
host, synchronising, thread limits, its compiled executor) live in one :class:`Adapter` subclass,
one module per library; :mod:`xpcnn.backends.base` holds what they share.  Adding a backend is one
new module with an adapter and one :func:`register` line below.
"""

from xpcnn.backends.array_api_strict import ArrayApiStrictAdapter
from xpcnn.backends.base import (
    ADAPTERS,
    DTYPES,
    Adapter,
    Array,
    Backend,
    BackendError,
    Namespace,
    adapter_for,
    available,
    backend_of,
    default_backend_name,
    device_name,
    dtype_name,
    from_numpy,
    limit_blas_threads,
    namespace,
    on_gpu,
    register,
    resolve,
    split_spec,
    synchronize,
    to_numpy,
    to_numpy_dtype,
    transfer,
    wants_gpu,
)
from xpcnn.backends.cupy import CupyAdapter
from xpcnn.backends.jax import JaxAdapter
from xpcnn.backends.numpy import NumpyAdapter
from xpcnn.backends.torch import TorchAdapter

register(NumpyAdapter())
register(CupyAdapter())
register(TorchAdapter())
register(JaxAdapter())
register(ArrayApiStrictAdapter())

BACKENDS = tuple(ADAPTERS)  # the built-in backends, in the order above

__all__ = ["ADAPTERS", "BACKENDS", "DTYPES", "Adapter", "Array", "ArrayApiStrictAdapter", "Backend", "BackendError",
           "CupyAdapter", "JaxAdapter", "Namespace", "NumpyAdapter", "TorchAdapter", "adapter_for", "available",
           "backend_of", "default_backend_name", "device_name", "dtype_name", "from_numpy", "limit_blas_threads",
           "namespace", "on_gpu", "register", "resolve", "split_spec", "synchronize", "to_numpy", "to_numpy_dtype",
           "transfer", "wants_gpu"]
