"""array-api-strict: the standard's reference namespace and nothing more, on three pretend devices
(the test suite's check that xpcnn uses only the standard, and keeps devices apart)."""

from __future__ import annotations

from typing import Any

import numpy as np

from xpcnn.backends.base import Adapter, Array, BackendError, Namespace


class ArrayApiStrictAdapter(Adapter):
    name = "array_api_strict"
    module = "array_api_strict"
    install = "the 'test' extra: pip install 'xpcnn[test]'"
    device_modules = ("array_api_strict",)

    def resolve(self, module: Any, device: str | None) -> tuple[Namespace, Any]:
        names = [self.device_name(d) for d in module.__array_namespace_info__().devices()]
        wanted = device or "CPU_DEVICE"
        if wanted == "cpu":
            wanted = "CPU_DEVICE"
        if wanted not in names:
            raise BackendError(f"array_api_strict has no device {wanted!r}; choose one of {', '.join(names)}")
        return module, module.Device(wanted)

    def device_name(self, device: Any) -> str:
        return device._device

    def owns(self, x: Any) -> bool:
        return hasattr(x, "to_device") and type(x).__module__.startswith("array_api_strict")

    def to_numpy(self, x: Array) -> np.ndarray:
        import array_api_strict

        return np.asarray(x.to_device(array_api_strict.Device("CPU_DEVICE")))
