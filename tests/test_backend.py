import pathlib
import re

import numpy as np
import pytest

import xpcnn
from xpcnn.backends import BackendError, device_name, parse_spec, resolve

PACKAGE = pathlib.Path(xpcnn.__file__).parent


def test_parse_spec():
    assert parse_spec("torch:cuda:1") == ("torch", "cuda:1")
    assert parse_spec("numpy") == ("numpy", None)
    assert parse_spec("array_api_strict:device1") == ("array_api_strict", "device1")


@pytest.mark.parametrize("name,device,message", [
    ("mxnet", None, "unknown backend 'mxnet'; choose one of numpy, cupy, torch, jax, array_api_strict"),
    ("numpy", "cuda", "numpy runs on the cpu only"),
    ("array_api_strict", "device9", "array_api_strict has no device 'device9'"),
])
def test_resolve_errors_are_one_sentence(name, device, message):
    with pytest.raises(BackendError, match=re.escape(message)):
        resolve(name, device)


def test_missing_package_names_the_extra(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "cupy" or name.startswith("cupy."):
            raise ImportError("No module named 'cupy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.delitem(__import__("sys").modules, "cupy", raising=False)
    with pytest.raises(BackendError, match=r"backend 'cupy' is not available .*pip install 'xpcnn\[cuda12\]'"):
        resolve("cupy")


def test_torch_cuda_without_gpu_is_one_line():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(BackendError, match="--device cuda needs a CUDA GPU, but torch sees none"):
        resolve("torch", "cuda")


def test_backend_fixture_device(backend):
    x = backend.asarray(np.ones(3), "float32")
    import array_api_compat
    assert array_api_compat.device(x) == backend.device
    assert device_name(backend.device) in backend.label


def test_no_numpy_in_layer_loss_optimizer_modules():
    """Layer, loss and optimizer code gets its namespace from its arrays; only the initialisers
    (host-drawn weights) and the presets built on them use NumPy."""
    modules = [p for p in (PACKAGE / "nn").rglob("*.py") if p.name not in ("init.py",)] + [PACKAGE / "optim.py"]
    assert len(modules) > 5
    for path in modules:
        source = path.read_text()
        assert not re.search(r"^\s*(import numpy|from numpy)", source, re.M), path


def test_only_standard_array_calls_in_package():
    forbidden = re.compile(r"\beinsum\(|as_strided|add\.at\(|sliding_window_view|np\.random\.seed")
    for path in PACKAGE.rglob("*.py"):
        assert not forbidden.search(path.read_text()), path
