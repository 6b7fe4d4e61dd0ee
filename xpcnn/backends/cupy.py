"""CuPy: NumPy's API on CUDA GPUs (and on nothing else)."""

from __future__ import annotations

import array_api_compat

from xpcnn.backends.base import Adapter, BackendError


class CupyAdapter(Adapter):
    name = "cupy"
    module = "cupy"
    install = "the 'cuda12' or 'cuda13' extra: pip install 'xpcnn[cuda12]'"
    device_modules = ("cupy", "cupy_backends")
    runs_on_cpu = False

    def resolve(self, module, device):
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

    def device_name(self, device) -> str:
        return f"cuda:{device.id}"

    def gpu_count(self) -> int:
        import cupy

        return cupy.cuda.runtime.getDeviceCount()

    def nccl_device(self, device) -> int | None:
        return device.id

    def owns(self, x) -> bool:
        return array_api_compat.is_cupy_array(x)

    def to_numpy(self, x):
        return x.get()

    def from_numpy(self, host_array, backend):
        with backend.device:
            return backend.xp.asarray(host_array)

    def synchronize(self, backend, arrays) -> None:
        backend.device.synchronize()
