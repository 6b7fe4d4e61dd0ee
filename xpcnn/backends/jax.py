"""JAX: CPU and CUDA devices, float64 enabled; each training step is compiled by jax.jit unless
told not to (measured: docs/performance.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import array_api_compat
import numpy as np

from xpcnn.backends.base import Adapter, Array, Backend, BackendError, Namespace

if TYPE_CHECKING:
    from xpcnn.training.executors.base import StepExecutor


class JaxAdapter(Adapter):
    name = "jax"
    module = "jax.numpy"
    install = "the 'jax' extra: pip install 'xpcnn[jax]'"
    device_modules = ("jax", "jaxlib")
    compiles_by_default = True

    def configure(self, module: Any) -> None:
        import jax

        jax.config.update("jax_enable_x64", True)  # float64 must mean float64
        # ... and float32 float32: on a GPU, JAX multiplies float32 matrices in TF32 (10-bit
        # mantissas) by default, 3e-3 relative error (measured on an H100, docs/performance.md).
        jax.config.update("jax_default_matmul_precision", "highest")

    def resolve(self, module: Any, device: str | None) -> tuple[Namespace, Any]:
        import jax

        wanted = device or "cpu"
        platform, _, index = wanted.partition(":")
        platform = {"cuda": "gpu"}.get(platform, platform)
        try:
            devices = jax.devices(platform)
        except RuntimeError:
            raise BackendError(f"jax has no {wanted!r} device here; install jax with CUDA support or use cpu") from None
        number = int(index or 0)
        if number >= len(devices):
            raise BackendError(f"jax sees {len(devices)} {platform} device(s); {wanted!r} does not exist")
        return module, devices[number]

    def device_name(self, device: Any) -> str:
        return "cpu" if device.platform == "cpu" else f"cuda:{device.id}"

    def gpu_count(self) -> int:
        import jax

        return len(jax.devices("gpu"))

    def owns(self, x: Any) -> bool:
        return array_api_compat.is_jax_array(x)

    def from_numpy(self, host_array: np.ndarray, backend: Backend) -> Array:
        import jax

        return jax.device_put(host_array, backend.device)

    def synchronize(self, backend: Backend, arrays: tuple) -> None:
        if arrays:
            import jax

            jax.block_until_ready(arrays)

    def compiled_executor(self, backend: Backend) -> StepExecutor | None:
        from xpcnn.training.executors.jax_jit import JaxJitStep

        return JaxJitStep()
