"""The one place that knows about array libraries.

Everything else in xpcnn gets its namespace from :func:`namespace` (a thin,
checked wrapper around ``array_api_compat.array_namespace``) and creates new
arrays with ``device=`` and ``dtype=`` taken from its inputs.  This module
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
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import array_api_compat

BACKENDS = ("numpy", "cupy", "torch", "jax", "array_api_strict")

_EXTRA = {
    "numpy": "numpy (a base dependency)",
    "cupy": "the 'cuda12' or 'cuda13' extra: pip install 'xpcnn[cuda12]'",
    "torch": "the 'torch' extra: pip install 'xpcnn[torch]'",
    "jax": "the 'jax' extra: pip install 'xpcnn[jax]'",
    "array_api_strict": "the 'test' extra: pip install 'xpcnn[test]'",
}

DTYPES = ("float32", "float64")


class BackendError(RuntimeError):
    """A backend or device that cannot be used here; the message says why."""


@dataclass(frozen=True)
class Backend:
    """A resolved backend: its name, its array namespace and a device object."""

    name: str
    xp: Any
    device: Any

    @property
    def label(self) -> str:
        return f"{self.name}:{device_name(self.device)}"

    def dtype(self, name: str):
        """The namespace's dtype object for ``'float32'`` / ``'float64'``."""
        if name not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
        return getattr(self.xp, name)

    def asarray(self, host_array, dtype: str | None = None):
        """Host NumPy array -> this backend's device, optionally cast first on the host."""
        return from_numpy(host_array, self, dtype)


def device_name(device) -> str:
    """A short printable name of a device object ('cpu', 'cuda:0', 'device1'), read from the
    device's own attributes (each library names its devices differently)."""
    if isinstance(device, str):  # numpy's "cpu"
        return device
    module = type(device).__module__.split(".")[0]
    if module == "array_api_strict":
        return device._device
    if module == "torch":
        return device.type if device.index is None else f"{device.type}:{device.index}"
    if module in ("jax", "jaxlib"):
        return "cpu" if device.platform == "cpu" else f"cuda:{device.id}"
    if module in ("cupy", "cupy_backends"):
        return f"cuda:{device.id}"
    return str(device)


def default_backend_name(device: str | None) -> str:
    """The backend a device string implies when none is named: CuPy for ``cuda``/``cuda:N``,
    NumPy otherwise."""
    return "cupy" if (device or "").startswith("cuda") else "numpy"


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``'torch:cuda:1'`` -> ``('torch', 'cuda:1')``; ``'numpy'`` -> ``('numpy', None)``."""
    name, _, device = spec.partition(":")
    return name, (device or None)


def _import(name: str):
    module_name = {"jax": "jax.numpy"}.get(name, name)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or a broken install (e.g. CUDA libs)
        raise BackendError(
            f"backend {name!r} is not available ({type(exc).__name__}: {exc}); "
            f"install {_EXTRA[name]}"
        ) from None
    if name == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)  # float64 must mean float64
        # ... and float32 float32: on a GPU, JAX multiplies float32 matrices in TF32 (10-bit
        # mantissas) by default, 3e-3 relative error (measured on an H100, docs/performance.md).
        jax.config.update("jax_default_matmul_precision", "highest")
    return module


def resolve(name: str, device: str | None = None) -> Backend:
    """Turn a backend name and an optional device string into a :class:`Backend`.

    Raises :class:`BackendError` with one sentence naming what is missing and
    which extra installs it.
    """
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    module = _import(name)
    if name == "numpy":
        if device not in (None, "cpu"):
            raise BackendError(f"numpy runs on the cpu only, not on {device!r}; use --backend cupy for a GPU")
        return Backend(name, array_api_compat.array_namespace(np.empty(0)), "cpu")
    if name == "array_api_strict":
        names = [device_name(d) for d in module.__array_namespace_info__().devices()]
        wanted = device or "CPU_DEVICE"
        if wanted == "cpu":
            wanted = "CPU_DEVICE"
        if wanted not in names:
            raise BackendError(f"array_api_strict has no device {wanted!r}; choose one of {', '.join(names)}")
        return Backend(name, module, module.Device(wanted))
    if name == "torch":
        wanted = device or "cpu"
        if wanted.startswith("cuda"):
            if not module.cuda.is_available():
                raise BackendError("--device cuda needs a CUDA GPU, but torch sees none; train on --device cpu")
            index = int(wanted.partition(":")[2] or 0)
            if index >= module.cuda.device_count():
                raise BackendError(f"torch sees {module.cuda.device_count()} CUDA device(s); {wanted!r} does not exist")
            wanted = f"cuda:{index}"  # the index its arrays report, so that devices compare equal
        elif wanted != "cpu":
            raise BackendError(f"torch device must be cpu, cuda or cuda:N, got {wanted!r}")
        return Backend(name, array_api_compat.array_namespace(module.empty(0)), module.device(wanted))
    if name == "cupy":
        try:
            count = module.cuda.runtime.getDeviceCount()
        except Exception as exc:
            raise BackendError(f"cupy is installed but no CUDA GPU is usable ({exc}); use --backend numpy") from None
        wanted = device or "cuda"
        if not wanted.startswith("cuda"):
            raise BackendError(f"cupy runs on CUDA devices only (cuda, cuda:N), not {wanted!r}")
        index = int(wanted.partition(":")[2] or 0)
        if index >= count:
            raise BackendError(f"cupy sees {count} CUDA device(s); {wanted!r} does not exist")
        return Backend(name, array_api_compat.array_namespace(module.empty(0)), module.cuda.Device(index))
    # jax
    import jax

    wanted = device or "cpu"
    platform, _, index = wanted.partition(":")
    platform = {"cuda": "gpu"}.get(platform, platform)
    try:
        devices = jax.devices(platform)
    except RuntimeError:
        raise BackendError(f"jax has no {wanted!r} device here; install jax with CUDA support or use cpu") from None
    index = int(index or 0)
    if index >= len(devices):
        raise BackendError(f"jax sees {len(devices)} {platform} device(s); {wanted!r} does not exist")
    return Backend(name, module, devices[index])


def backend_of(x) -> Backend:
    """The :class:`Backend` an existing array lives on."""
    xp = array_api_compat.array_namespace(x)
    if array_api_compat.is_numpy_array(x):
        name = "numpy"
    elif array_api_compat.is_cupy_array(x):
        name = "cupy"
    elif array_api_compat.is_torch_array(x):
        name = "torch"
    elif array_api_compat.is_jax_array(x):
        name = "jax"
    else:
        name = "array_api_strict"
    return Backend(name, xp, array_api_compat.device(x))


def namespace(*arrays, where: str = "xpcnn"):
    """``array_namespace(*arrays)``, with one clear error if they come from two
    libraries or two devices.  ``where`` names the caller in that message."""
    arrays = [a for a in arrays if a is not None]
    try:
        xp = array_api_compat.array_namespace(*arrays)
    except TypeError:
        kinds = sorted({f"{type(a).__module__}.{type(a).__name__}" for a in arrays})
        raise TypeError(f"{where}: arrays from different libraries mixed in one call: {' and '.join(kinds)}") from None
    devices = [array_api_compat.device(a) for a in arrays]
    if any(d != devices[0] for d in devices[1:]):  # (called in every layer: keep the common case short)
        devices = [d for i, d in enumerate(devices) if all(d != seen for seen in devices[:i])]
        raise ValueError(
            f"{where}: arrays on different devices mixed in one call: "
            + " and ".join(device_name(d) for d in devices)
        )
    return xp


def on_gpu(x) -> bool:
    """Whether an array lives on a CUDA device (CuPy, PyTorch or JAX on a GPU)."""
    return device_name(array_api_compat.device(x)).startswith("cuda")


def to_numpy(x) -> np.ndarray:
    """Any supported array -> a host NumPy array (a copy where the data is on a device)."""
    if isinstance(x, np.ndarray):
        return x
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    if array_api_compat.is_cupy_array(x):
        return x.get()
    if array_api_compat.is_jax_array(x):
        return np.asarray(x)
    if hasattr(x, "to_device") and type(x).__module__.startswith("array_api_strict"):
        import array_api_strict

        return np.asarray(x.to_device(array_api_strict.Device("CPU_DEVICE")))
    return np.asarray(x)


def from_numpy(host_array, backend: Backend, dtype: str | None = None):
    """Host array -> ``backend``'s device.  A dtype cast happens on the host first, so
    every backend receives bit-identical values."""
    host_array = np.asarray(host_array)
    if dtype is not None:
        host_array = host_array.astype(dtype, copy=False)
    xp = backend.xp
    if backend.name == "torch":
        import torch

        host_array = np.ascontiguousarray(host_array)
        if not host_array.flags.writeable:  # e.g. IDX data read with np.frombuffer
            host_array = host_array.copy()
        return torch.from_numpy(host_array).to(backend.device)
    if backend.name == "cupy":
        with backend.device:
            return xp.asarray(host_array)
    if backend.name == "jax":
        import jax

        return jax.device_put(host_array, backend.device)
    return xp.asarray(host_array, device=backend.device)


def transfer(x, backend: Backend, dtype: str | None = None):
    """Move an array to another backend/device.  Uses DLPack when both sides are
    CUDA arrays (no host round trip), otherwise goes through host NumPy."""
    source = backend_of(x)
    same_place = source.name == backend.name and source.device == backend.device
    if same_place and dtype is None:
        return x
    if same_place:
        return backend.xp.astype(x, backend.dtype(dtype))
    if "cuda" in device_name(source.device) and "cuda" in device_name(backend.device):
        try:
            moved = backend.xp.from_dlpack(x)
            if dtype is not None:
                moved = backend.xp.astype(moved, backend.dtype(dtype))
            return moved
        except Exception:  # different GPUs, or a library without DLPack import
            pass
    return from_numpy(to_numpy(x), backend, dtype)


def synchronize(backend: Backend, *arrays) -> None:
    """Wait until the device has finished the work queued so far (CuPy, PyTorch on CUDA) or that
    produces ``arrays`` (JAX, which dispatches asynchronously on every device).  For timing only:
    training itself never waits (see :mod:`xpcnn.training`)."""
    if backend.name == "cupy":
        backend.device.synchronize()
    elif backend.name == "torch" and backend.device.type == "cuda":
        import torch

        torch.cuda.synchronize(backend.device)
    elif backend.name == "jax" and arrays:
        import jax

        jax.block_until_ready(arrays)


@contextlib.contextmanager
def limit_blas_threads(backend: Backend, threads: int = 1):
    """While the block runs: ``threads`` BLAS threads per calling thread (NumPy's OpenBLAS and
    similar, via threadpoolctl) and, on PyTorch, ``threads`` intra-op threads
    (``torch.set_num_threads``).  For executors that run several steps' shares on threads of their
    own, so that their threads and BLAS's do not fight over the cores."""
    from threadpoolctl import threadpool_limits

    torch_threads = None
    if backend.name == "torch":
        import torch

        torch_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads, user_api="blas"):
            yield
    finally:
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)


def available(specs=BACKENDS) -> list[str]:
    """The backend names or specs (``'torch:cuda'``) among ``specs`` that resolve here."""
    result = []
    for spec in specs:
        try:
            resolve(*parse_spec(spec))
        except BackendError:
            continue
        result.append(spec)
    return result


def dtype_name(x) -> str:
    """'float32', 'float64', 'int64', ... for an array of any backend."""
    return to_numpy_dtype(x).name


def to_numpy_dtype(x) -> np.dtype:
    text = str(x.dtype)
    for prefix in ("torch.", "array_api_strict."):
        text = text.removeprefix(prefix)
    return np.dtype(text)
