"""The worked example of a new backend (docs/architecture.md): one adapter class and one
registration line.  ``numpy2`` is NumPy under a second name -- the smallest adapter there is: what
to import, what installs it, which devices it has, and which arrays are its own; every other quirk
(host transfer, synchronising, threads, a compiled executor) keeps :class:`Adapter`'s default."""

import dataclasses

import array_api_compat
import numpy as np
import pytest

from xpcnn import data
from xpcnn.backends import ADAPTERS, Adapter, BackendError, available, register, resolve
from xpcnn.training import PRESETS, Trainer


class Numpy2Adapter(Adapter):
    name = "numpy2"
    module = "numpy"
    install = "numpy (a base dependency)"

    def resolve(self, module, device):
        if device not in (None, "cpu"):
            raise BackendError(f"numpy2 runs on the cpu only, not on {device!r}")
        return array_api_compat.array_namespace(module.empty(0)), "cpu"

    def owns(self, x) -> bool:
        return array_api_compat.is_numpy_array(x)


@pytest.fixture
def numpy2():
    register(Numpy2Adapter())  # the registration line (xpcnn/backends/__init__.py holds the built-in ones)
    try:
        yield resolve("numpy2")
    finally:
        del ADAPTERS["numpy2"]


def test_a_registered_adapter_is_a_backend(numpy2):
    assert numpy2.label == "numpy2:cpu" and available(["numpy2", "numpy2:cuda"]) == ["numpy2"]
    with pytest.raises(BackendError, match="numpy2 runs on the cpu only, not on 'cuda'"):
        resolve("numpy2", "cuda")
    x = numpy2.asarray(np.arange(3), "float32")
    assert x.dtype == np.float32 and array_api_compat.device(x) == numpy2.device


def test_training_runs_on_the_new_backend_bitwise_like_numpy(numpy2):
    """One epoch of three steps: the same library under another name gives the same bits."""
    config = dataclasses.replace(PRESETS["default"], dtype="float64", epochs=1, batch_size=50)
    train = data.load_embedded().train.take(150)
    runs = {}
    for backend in (numpy2, resolve("numpy")):
        with Trainer(config, backend) as trainer:
            trainer.fit(train)
        runs[backend.name] = trainer
    assert runs["numpy2"].state.global_step == 3
    assert runs["numpy2"].state.step_losses == runs["numpy"].state.step_losses
    for name, value in runs["numpy"].model.state_dict().items():
        np.testing.assert_array_equal(runs["numpy2"].model.state_dict()[name], value, err_msg=name)


def test_an_unknown_backend_lists_the_registered_ones(numpy2):
    with pytest.raises(BackendError, match="unknown backend 'mxnet'; choose one of numpy, cupy, torch, jax, "
                                           "array_api_strict, numpy2"):
        resolve("mxnet")
