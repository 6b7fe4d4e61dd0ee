"""What every backend shares: the :class:`Backend` a run computes on, the :class:`Adapter` base class
that holds one array library's quirks, the registry of adapters, and the library-neutral functions
the rest of xpcnn calls (:func:`resolve`, :func:`namespace`, :func:`to_numpy`, :func:`transfer`, ...).

Each function below asks the adapter of the array or backend at hand; none of them names a library.
The adapters themselves live one per module (``numpy.py``, ``cupy.py``, ``torch.py``, ``jax.py``,
``array_api_strict.py``) and are registered in ``xpcnn/backends/__init__.py``.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import array_api_compat
import numpy as np

if TYPE_CHECKING:
    from xpcnn.training.executors.base import StepExecutor

Array = Any
"""An array of any array-API library (NumPy, CuPy, PyTorch, JAX, array-api-strict)."""

Namespace = Any
"""An array-API namespace (``array_api_compat``'s wrapper of one of those libraries, or the library itself)."""

DTYPES = ("float32", "float64")


class BackendError(RuntimeError):
    """A backend or device that cannot be used here; the message says why."""


class Adapter:
    """Everything xpcnn knows about one array library, in one place (the model: Keras's
    ``keras/src/backend/<library>/``).  A subclass sets the class attributes and overrides what its
    library does differently; :func:`register` makes it a backend.  Only an adapter imports its
    library, and only when a backend of it is resolved (:meth:`load`) or one of its arrays is met."""

    name = ""  # the backend's name (``--backend``)
    module = ""  # the module whose import makes the library usable
    install = ""  # what installs it, for the error when that import fails
    device_modules: tuple[str, ...] = ()  # top-level modules of the types of its device objects
    runs_on_cpu = True  # False: GPUs only (CuPy), so --threads is refused and a rank's device is a GPU
    compiles_by_default = False  # whether training compiles its steps unless told not to (--no-compile)

    # -- import and devices -----------------------------------------------------------------------
    def load(self) -> Any:
        """The library's module, imported and configured; :class:`BackendError` naming the extra
        that installs it when the import fails."""
        try:
            module = importlib.import_module(self.module)
        except Exception as exc:  # ImportError, or a broken install (e.g. CUDA libs)
            raise BackendError(
                f"backend {self.name!r} is not available ({type(exc).__name__}: {exc}); install {self.install}"
            ) from None
        self.configure(module)
        return module

    def configure(self, module: Any) -> None:
        """Library-wide settings xpcnn relies on, applied at every :meth:`load` (default: none)."""

    def resolve(self, module: Any, device: str | None) -> tuple[Namespace, Any]:
        """(array namespace, device object) for a device string (None: the library's default
        device); :class:`BackendError` in one sentence when there is no such device here."""
        raise NotImplementedError

    def device_name(self, device: Any) -> str:
        """A short printable name of one of its device objects ('cpu', 'cuda:0', 'device1')."""
        return str(device)

    def gpu_count(self) -> int:
        """How many CUDA GPUs the library sees here (0 without any, or without the library)."""
        return 0

    def nccl_device(self, device: Any) -> int | None:
        """The CUDA device index of ``device`` when its arrays can go to the NCCL reduction (they
        cross to CuPy by DLPack), else None."""
        return None

    # -- arrays -----------------------------------------------------------------------------------
    def owns(self, x: Any) -> bool:
        """Whether ``x`` is one of this library's arrays."""
        raise NotImplementedError

    def to_numpy(self, x: Array) -> np.ndarray:
        """One of its arrays -> a host NumPy array (a copy where the data is on a device)."""
        return np.asarray(x)

    def from_numpy(self, host_array: np.ndarray, backend: Backend) -> Array:
        """A host NumPy array (already in the wanted dtype) -> an array on ``backend.device``."""
        return backend.xp.asarray(host_array, device=backend.device)

    # -- execution --------------------------------------------------------------------------------
    def synchronize(self, backend: Backend, arrays: tuple) -> None:
        """Wait until the device has finished the work queued so far, or the work that produces
        ``arrays`` (default: nothing to wait for)."""

    def limit_threads(self, threads: int) -> contextlib.AbstractContextManager:
        """While the block runs, the library's own intra-op threads limited to ``threads``
        (default: it has none to limit; BLAS's are :func:`limit_blas_threads`'s)."""
        return contextlib.nullcontext()

    def compiled_executor(self, backend: Backend) -> StepExecutor | None:
        """A step executor that runs each training step compiled by the library's own compiler
        (:mod:`xpcnn.training.executors.compiled`), or None where it has none."""
        return None


ADAPTERS: dict[str, Adapter] = {}


def register(adapter: Adapter) -> Adapter:
    """Make ``adapter`` the backend named ``adapter.name`` (one line per backend, in
    ``xpcnn/backends/__init__.py``; :func:`backend_of` asks adapters in registration order)."""
    ADAPTERS[adapter.name] = adapter
    return adapter


def adapter_for(name: str) -> Adapter:
    """The registered adapter of a backend name; :class:`BackendError` for an unknown one."""
    try:
        return ADAPTERS[name]
    except KeyError:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(ADAPTERS)}") from None


@dataclass(frozen=True)
class Backend:
    """A resolved backend: its name, its array namespace and a device object."""

    name: str
    xp: Namespace
    device: Any

    @property
    def adapter(self) -> Adapter:
        """The library's :class:`Adapter`: its quirks, asked by the functions of this module."""
        return ADAPTERS[self.name]

    @property
    def label(self) -> str:
        return f"{self.name}:{device_name(self.device)}"

    def dtype(self, name: str) -> Any:
        """The namespace's dtype object for ``'float32'`` / ``'float64'``."""
        if name not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
        return getattr(self.xp, name)

    def asarray(self, host_array: Any, dtype: str | None = None) -> Array:
        """Host NumPy array -> this backend's device, optionally cast first on the host."""
        return from_numpy(host_array, self, dtype)


def split_spec(spec: str) -> tuple[str, str | None]:
    """A backend spec -> (name, device): ``'torch:cuda:1'`` -> ``('torch', 'cuda:1')``;
    ``'numpy'`` -> ``('numpy', None)``."""
    name, _, device = spec.partition(":")
    return name, (device or None)


def default_backend_name(device: str | None) -> str:
    """The backend a device string implies when none is named: CuPy for ``cuda``/``cuda:N``,
    NumPy otherwise."""
    return "cupy" if (device or "").startswith("cuda") else "numpy"


def wants_gpu(name: str, device: str | None) -> bool:
    """Whether a backend name and device string (before resolving) ask for a GPU: a ``cuda``
    device, or a library that runs on nothing else."""
    return (device or "").startswith("cuda") or not adapter_for(name).runs_on_cpu


def resolve(name: str, device: str | None = None) -> Backend:
    """Turn a backend name and an optional device string into a :class:`Backend`.

    Raises :class:`BackendError` with one sentence naming what is missing and
    which extra installs it.
    """
    adapter = adapter_for(name)
    xp, device_object = adapter.resolve(adapter.load(), device)
    return Backend(adapter.name, xp, device_object)


def available(specs: Iterable[str] | None = None) -> list[str]:
    """The backend names or specs (``'torch:cuda'``) among ``specs`` (default: every registered
    backend) that resolve here."""
    result = []
    for spec in (tuple(ADAPTERS) if specs is None else specs):
        try:
            resolve(*split_spec(spec))
        except BackendError:
            continue
        result.append(spec)
    return result


def _owner(x: Any) -> Adapter | None:
    return next((adapter for adapter in ADAPTERS.values() if adapter.owns(x)), None)


def backend_of(x: Array) -> Backend:
    """The :class:`Backend` an existing array lives on."""
    xp = array_api_compat.array_namespace(x)
    owner = _owner(x)
    if owner is None:
        raise BackendError(f"no xpcnn backend holds arrays of type {type(x).__module__}.{type(x).__name__}")
    return Backend(owner.name, xp, array_api_compat.device(x))


def device_name(device: Any) -> str:
    """A short printable name of a device object ('cpu', 'cuda:0', 'device1'), read from the
    device's own attributes (each library names its devices differently: its adapter knows how)."""
    if isinstance(device, str):  # numpy's "cpu"
        return device
    module = type(device).__module__.split(".")[0]
    for adapter in ADAPTERS.values():
        if module in adapter.device_modules:
            return adapter.device_name(device)
    return str(device)


def namespace(*arrays: Array | None, where: str = "xpcnn") -> Namespace:
    """``array_namespace(*arrays)``, with one clear error if they come from two
    libraries or two devices.  ``where`` names the caller in that message."""
    present = [a for a in arrays if a is not None]
    try:
        xp = array_api_compat.array_namespace(*present)
    except TypeError:
        kinds = sorted({f"{type(a).__module__}.{type(a).__name__}" for a in present})
        raise TypeError(f"{where}: arrays from different libraries mixed in one call: {' and '.join(kinds)}") from None
    devices = [array_api_compat.device(a) for a in present]
    if any(d != devices[0] for d in devices[1:]):  # (called in every layer: keep the common case short)
        devices = [d for i, d in enumerate(devices) if all(d != seen for seen in devices[:i])]
        raise ValueError(
            f"{where}: arrays on different devices mixed in one call: "
            + " and ".join(device_name(d) for d in devices)
        )
    return xp


def on_gpu(x: Array) -> bool:
    """Whether an array lives on a CUDA device (CuPy, PyTorch or JAX on a GPU)."""
    return device_name(array_api_compat.device(x)).startswith("cuda")


def to_numpy(x: Array) -> np.ndarray:
    """Any supported array -> a host NumPy array (a copy where the data is on a device)."""
    if isinstance(x, np.ndarray):
        return x
    owner = _owner(x)
    return owner.to_numpy(x) if owner is not None else np.asarray(x)


def from_numpy(host_array: Any, backend: Backend, dtype: str | None = None) -> Array:
    """Host array -> ``backend``'s device.  A dtype cast happens on the host first, so
    every backend receives bit-identical values."""
    host_array = np.asarray(host_array)
    if dtype is not None:
        host_array = host_array.astype(dtype, copy=False)
    return backend.adapter.from_numpy(host_array, backend)


def transfer(x: Array, backend: Backend, dtype: str | None = None) -> Array:
    """Move an array to another backend/device.  Uses DLPack when both sides are
    CUDA arrays (no host round trip), otherwise goes through host NumPy."""
    source = backend_of(x)
    same_place = source.name == backend.name and source.device == backend.device
    if same_place:
        return x if dtype is None else backend.xp.astype(x, backend.dtype(dtype))
    if "cuda" in device_name(source.device) and "cuda" in device_name(backend.device):
        try:
            moved = backend.xp.from_dlpack(x)
            if dtype is not None:
                moved = backend.xp.astype(moved, backend.dtype(dtype))
            return moved
        except Exception:  # different GPUs, or a library without DLPack import
            pass
    return from_numpy(to_numpy(x), backend, dtype)


def synchronize(backend: Backend, *arrays: Array) -> None:
    """Wait until the device has finished the work queued so far (CuPy, PyTorch on CUDA) or that
    produces ``arrays`` (JAX, which dispatches asynchronously on every device).  For timing only:
    training itself never waits (see :mod:`xpcnn.training`)."""
    backend.adapter.synchronize(backend, arrays)


@contextlib.contextmanager
def limit_blas_threads(backend: Backend, threads: int = 1) -> Iterator[None]:
    """While the block runs: ``threads`` BLAS threads per calling thread (NumPy's OpenBLAS and
    similar, via threadpoolctl) and ``threads`` of the library's own intra-op threads (PyTorch's
    ``torch.set_num_threads``: :meth:`Adapter.limit_threads`).  For executors that run several
    steps' shares on threads of their own, so that their threads and BLAS's do not fight over the
    cores."""
    from threadpoolctl import threadpool_limits

    with backend.adapter.limit_threads(threads), threadpool_limits(limits=threads, user_api="blas"):
        yield


def dtype_name(x: Array) -> str:
    """'float32', 'float64', 'int64', ... for an array of any backend."""
    return to_numpy_dtype(x).name


def to_numpy_dtype(x: Array) -> np.dtype:
    """The NumPy dtype of an array of any backend (``torch.float32``, ``array_api_strict.float64``
    and plain ``float32`` all name theirs last)."""
    return np.dtype(str(x.dtype).rpartition(".")[2])
