"""CuPy: NumPy's API on CUDA GPUs (and on nothing else)."""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from xpcnn.backends.base import Adapter, Array, Backend, BackendError, Namespace


class CupyAdapter(Adapter):
    name = "cupy"
    module = "cupy"
    install = "the 'cuda12' or 'cuda13' extra: pip install 'xpcnn[cuda12]'"
    device_modules = ("cupy", "cupy_backends")
    runs_on_cpu = False

    def resolve(self, module: Any, device: str | None) -> tuple[Namespace, Any]:
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
        return array_api_compat.array_namespace(module.empty(0)), module.cuda.Device(index)

    def device_name(self, device: Any) -> str:
        return f"cuda:{device.id}"

    def gpu_count(self) -> int:
        import cupy

        return cupy.cuda.runtime.getDeviceCount()

    def nccl_device(self, device: Any) -> int | None:
        return device.id

    def owns(self, x: Any) -> bool:
        return array_api_compat.is_cupy_array(x)

    def to_numpy(self, x: Array) -> np.ndarray:
        return x.get()

    def from_numpy(self, host_array: np.ndarray, backend: Backend) -> Array:
        with backend.device:
            return backend.xp.asarray(host_array)

    def synchronize(self, backend: Backend, arrays: tuple) -> None:
        backend.device.synchronize()
