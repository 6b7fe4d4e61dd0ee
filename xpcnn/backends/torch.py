"""PyTorch: CPU and CUDA devices; on CUDA, a step can be captured as one CUDA graph."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import array_api_compat
import numpy as np

from xpcnn.backends.base import Adapter, Array, Backend, BackendError, Namespace

if TYPE_CHECKING:
    from xpcnn.training.executors.base import StepExecutor


class TorchAdapter(Adapter):
    name = "torch"
    module = "torch"
    install = "the 'torch' extra: pip install 'xpcnn[torch]'"
    device_modules = ("torch",)

    def resolve(self, module: Any, device: str | None) -> tuple[Namespace, Any]:
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
        return array_api_compat.array_namespace(module.empty(0)), module.device(wanted)

    def device_name(self, device: Any) -> str:
        return device.type if device.index is None else f"{device.type}:{device.index}"

    def gpu_count(self) -> int:
        import torch

        return torch.cuda.device_count()

    def nccl_device(self, device: Any) -> int | None:
        return (device.index or 0) if device.type == "cuda" else None

    def owns(self, x: Any) -> bool:
        return array_api_compat.is_torch_array(x)

    def to_numpy(self, x: Array) -> np.ndarray:
        return x.detach().cpu().numpy()

    def from_numpy(self, host_array: np.ndarray, backend: Backend) -> Array:
        import torch

        host_array = np.ascontiguousarray(host_array)
        if not host_array.flags.writeable:  # e.g. IDX data read with np.frombuffer
            host_array = host_array.copy()
        return torch.from_numpy(host_array).to(backend.device)

    def synchronize(self, backend: Backend, arrays: tuple) -> None:
        if backend.device.type == "cuda":
            import torch

            torch.cuda.synchronize(backend.device)

    @contextlib.contextmanager
    def limit_threads(self, threads: int) -> Iterator[None]:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def compiled_executor(self, backend: Backend) -> StepExecutor | None:
        if backend.device.type != "cuda":
            return None
        from xpcnn.training.executors.cuda_graph import TorchGraphStep

        return TorchGraphStep()
