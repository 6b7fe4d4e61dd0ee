"""NumPy: the CPU backend of the base install."""

from __future__ import annotations

from typing import Any

import array_api_compat

from xpcnn.backends.base import Adapter, BackendError, Namespace


class NumpyAdapter(Adapter):
    name = "numpy"
    module = "numpy"
    install = "numpy (a base dependency)"

    def resolve(self, module: Any, device: str | None) -> tuple[Namespace, Any]:
        if device not in (None, "cpu"):
            raise BackendError(f"numpy runs on the cpu only, not on {device!r}; use --backend cupy for a GPU")
        return array_api_compat.array_namespace(module.empty(0)), "cpu"

    def owns(self, x: Any) -> bool:
        return array_api_compat.is_numpy_array(x)
