"""xpcnn.parallel: a batch split over threads gives the whole-batch step."""

import dataclasses

import numpy as np
import pytest

from xpcnn import data
from xpcnn.backend import to_numpy
from xpcnn.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sigmoid
from xpcnn.losses import MSELoss, SoftmaxCrossEntropyLoss
from xpcnn.model import Sequential
from xpcnn.parallel import ThreadedStep, single_threaded_blas
from xpcnn.training import PRESETS, Trainer


def network(backend):
    rng = np.random.default_rng(3)
    return Sequential(Conv2D(1, 4, 3, rng=rng), ReLU(), MaxPool2D(2), Conv2D(4, 3, 3, padding=1, rng=rng), Sigmoid(),
                      Flatten(), Dense(3 * 6 * 6, 5, rng=rng)).to(backend, dtype="float64")


@pytest.mark.parametrize("threads,batch", [(2, 10), (3, 10), (4, 3)])
def test_threaded_gradients_equal_the_whole_batch(backend, threads, batch):
    """Shares of unequal size, and more threads than images (empty shares are skipped)."""
    rng = np.random.default_rng(0)
    x = backend.asarray(rng.random((batch, 1, 14, 14)), dtype="float64")
    labels = backend.asarray(rng.integers(0, 5, batch), dtype="int64")
    whole, split = network(backend), network(backend)
    loss_fn = SoftmaxCrossEntropyLoss()
    loss = loss_fn(whole(x), labels)
    whole.backward(loss_fn.backward(), input_grad=False)
    step = ThreadedStep(split, SoftmaxCrossEntropyLoss(), threads)
    try:
        split_loss = step(x, labels)
    finally:
        step.close()
    assert float(to_numpy(split_loss)) == pytest.approx(float(to_numpy(loss)), rel=1e-13)
    expected = dict(whole.named_gradients())
    got = dict(split.named_gradients())
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_allclose(to_numpy(got[name]), to_numpy(expected[name]), rtol=1e-11,
                                   atol=1e-14, err_msg=name)


def test_threaded_step_with_float_targets(cpu_backend):
    """The article's loss (1/2 squared error against (N, 1) float targets) splits the same way."""
    rng = np.random.default_rng(1)
    x = cpu_backend.asarray(rng.random((7, 1, 8, 8)), dtype="float64")
    y = cpu_backend.asarray(rng.random((7, 1)), dtype="float64")

    def model():
        return Sequential(Conv2D(1, 2, 3, bias=False, init="uniform", rng=np.random.default_rng(2)), Sigmoid(),
                          Flatten(), Dense(72, 1, rng=np.random.default_rng(3)), Sigmoid()).to(cpu_backend,
                                                                                              dtype="float64")
    whole, split = model(), model()
    loss_fn = MSELoss()
    loss_fn(whole(x), y)
    whole.backward(loss_fn.backward(), input_grad=False)
    step = ThreadedStep(split, MSELoss(), 2)
    step(x, y)
    step.close()
    for (name, got), (_, expected) in zip(split.named_gradients(), whole.named_gradients()):
        np.testing.assert_allclose(to_numpy(got), to_numpy(expected), rtol=1e-11, atol=1e-15,
                                   err_msg=name)


@pytest.mark.parametrize("preset", ["default", "article"])
def test_trainer_with_threads_follows_the_single_threaded_run(cpu_backend, preset):
    dataset = data.load_embedded()
    config = dataclasses.replace(PRESETS[preset], dtype="float64", epochs=1, train_count=None, batch_size=50)
    train = dataset.train.take(300)
    single = Trainer(config, cpu_backend)
    single.fit(train)
    runs = []
    for _ in range(2):
        threaded = Trainer(config, cpu_backend, threads=2)
        threaded.fit(train)
        runs.append(threaded.model.state_dict())
    reference = single.model.state_dict()
    for name in reference:
        np.testing.assert_allclose(runs[0][name], reference[name], rtol=1e-10, atol=1e-13, err_msg=name)
        assert np.array_equal(runs[0][name], runs[1][name]), f"{name}: two threaded runs differ"


def test_threads_must_be_at_least_two(cpu_backend):
    with pytest.raises(ValueError, match="threads must be an integer >= 2"):
        ThreadedStep(network(cpu_backend), SoftmaxCrossEntropyLoss(), 1)


def test_single_threaded_blas_restores_the_limits(cpu_backend):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [(info["internal_api"], info["num_threads"]) for info in threadpoolctl.threadpool_info()
              if info["user_api"] == "blas"]
    with single_threaded_blas(cpu_backend):
        assert all(info["num_threads"] == 1 for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas")
    after = [(info["internal_api"], info["num_threads"]) for info in threadpoolctl.threadpool_info()
             if info["user_api"] == "blas"]
    assert after == before
