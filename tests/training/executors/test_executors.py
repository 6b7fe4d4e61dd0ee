"""xpcnn.training.executors: the step-executor contract; a batch cut into shares (chunks, threads)
gives the whole-batch step; the Trainer closes what an executor owns."""

import dataclasses
import re

import numpy as np
import pytest

from xpcnn import data
from xpcnn.backends import limit_blas_threads, to_numpy
from xpcnn.nn import Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sigmoid
from xpcnn.nn.losses import MSELoss, SoftmaxCrossEntropyLoss
from xpcnn.nn.sequential import Sequential
from xpcnn.optim import SGD
from xpcnn.training import PRESETS, SplitStep, StepExecutor, Trainer, WholeBatchStep, make_executor


def network(backend):
    rng = np.random.default_rng(3)
    return Sequential(Conv2D(1, 4, 3, rng=rng), ReLU(), MaxPool2D(2), Conv2D(4, 3, 3, padding=1, rng=rng), Sigmoid(),
                      Flatten(), Dense(3 * 6 * 6, 5, rng=rng)).to(backend, dtype="float64")


@pytest.mark.parametrize("threads,chunk,batch", [(2, None, 10), (3, None, 10), (4, None, 3), (1, 3, 10), (1, 20, 10),
                                                (2, 3, 10), (3, 1, 4)])
def test_split_gradients_equal_the_whole_batch(backend, threads, chunk, batch):
    """Shares of unequal size, more threads than images (empty shares are skipped), chunks in one
    thread, several chunks per thread, a chunk larger than the batch."""
    rng = np.random.default_rng(0)
    x = backend.asarray(rng.random((batch, 1, 14, 14)), dtype="float64")
    labels = backend.asarray(rng.integers(0, 5, batch), dtype="int64")
    whole, split = network(backend), network(backend)
    loss_fn = SoftmaxCrossEntropyLoss()
    loss = loss_fn(whole(x), labels)
    whole.backward(loss_fn.backward(), input_grad=False)
    step = SplitStep(threads, chunk)
    step.bind(split, SoftmaxCrossEntropyLoss(), SGD(0.1), backend, "float64")
    try:
        split_loss = step.gradients(x, labels)
    finally:
        step.close()
    assert float(to_numpy(split_loss)) == pytest.approx(float(to_numpy(loss)), rel=1e-13)
    expected = dict(whole.named_gradients())
    got = dict(split.named_gradients())
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_allclose(to_numpy(got[name]), to_numpy(expected[name]), rtol=1e-11,
                                   atol=1e-14, err_msg=name)


def test_split_step_with_float_targets(cpu_backend):
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
    step = SplitStep(2, chunk=2)
    step.bind(split, MSELoss(), SGD(0.1), cpu_backend, "float64")
    step.gradients(x, y)
    step.close()
    for (name, got), (_, expected) in zip(split.named_gradients(), whole.named_gradients()):
        np.testing.assert_allclose(to_numpy(got), to_numpy(expected), rtol=1e-11, atol=1e-15,
                                   err_msg=name)


@pytest.mark.parametrize("preset", ["default", "article"])
@pytest.mark.parametrize("threads,chunk", [(2, None), (1, 16), (2, 16)])
def test_trainer_with_shares_follows_the_whole_batch_run(cpu_backend, preset, threads, chunk):
    dataset = data.load_embedded()
    config = dataclasses.replace(PRESETS[preset], dtype="float64", epochs=1, train_count=None, batch_size=50)
    train = dataset.train.take(300)
    with Trainer(config, cpu_backend, executor=WholeBatchStep()) as single:
        single.fit(train)
    runs = []
    for _ in range(2):
        with Trainer(config, cpu_backend, executor=SplitStep(threads, chunk)) as threaded:
            threaded.fit(train)
            runs.append(threaded.model.state_dict())
    reference = single.model.state_dict()
    for name in reference:
        np.testing.assert_allclose(runs[0][name], reference[name], rtol=1e-10, atol=1e-13, err_msg=name)
        assert np.array_equal(runs[0][name], runs[1][name]), f"{name}: two threaded runs differ"


@pytest.mark.parametrize("threads,chunk,message", [(0, None, "threads must be an integer >= 1, got 0"),
                                                   (2, 0, "chunk must be an integer >= 1, got 0"),
                                                   (2.0, None, "threads must be an integer >= 1, got 2.0"),
                                                   (1, None, "give threads >= 2 or a chunk size")])
def test_split_step_rejects_bad_counts(threads, chunk, message):
    with pytest.raises(ValueError, match=message):
        SplitStep(threads, chunk)


def test_limit_blas_threads_restores_the_limits(cpu_backend):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [(info["internal_api"], info["num_threads"]) for info in threadpoolctl.threadpool_info()
              if info["user_api"] == "blas"]
    with limit_blas_threads(cpu_backend, 1):
        assert all(info["num_threads"] == 1 for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas")
    after = [(info["internal_api"], info["num_threads"]) for info in threadpoolctl.threadpool_info()
             if info["user_api"] == "blas"]
    assert after == before


def test_make_executor_picks_the_plain_step_unless_asked_to_split():
    assert type(make_executor()) is WholeBatchStep
    assert type(make_executor(threads=2)) is SplitStep and make_executor(threads=2).describe() == \
        "2 shares per batch, 2 threads"
    assert make_executor(chunk=8).describe() == "pieces of at most 8 images, 1 thread"


class CountingStep(WholeBatchStep):
    """A custom executor plugged into the Trainer: counts its calls and records its closing."""

    def __init__(self):
        self.calls, self.closed, self.running_entered = 0, 0, 0

    def running(self):
        self.running_entered += 1
        return super().running()

    def step(self, batch):
        self.calls += 1
        return super().step(batch)

    def close(self):
        self.closed += 1


def test_a_custom_executor_plugs_into_the_loop_and_the_trainer_closes_it(cpu_backend):
    """The contract from the module docstring: bind once, running() around fit, step per batch,
    close at the end; the result is the plain step's, bit for bit."""
    config = dataclasses.replace(PRESETS["default"], dtype="float64", epochs=2, batch_size=50)
    train = data.load_embedded().train.take(200)
    executor = CountingStep()
    with Trainer(config, cpu_backend, executor=executor) as custom:
        custom.fit(train)
    assert executor.calls == 8 and executor.running_entered == 1 and executor.closed == 1
    with Trainer(config, cpu_backend, executor=WholeBatchStep()) as plain:
        plain.fit(train)
    for name, value in plain.model.state_dict().items():
        np.testing.assert_array_equal(custom.model.state_dict()[name], value)


def test_split_step_pool_is_closed_by_the_trainer(cpu_backend):
    config = dataclasses.replace(PRESETS["default"], dtype="float64", epochs=1, batch_size=50)
    with Trainer(config, cpu_backend, executor=SplitStep(2)) as trainer:
        trainer.fit(data.load_embedded().train.take(100))
        pool = trainer.executor.pool
        assert pool is not None
    assert trainer.executor.pool is None and pool._shutdown


@pytest.mark.parametrize("executor", [WholeBatchStep(), SplitStep(2)], ids=["whole", "split"])
def test_an_empty_batch_is_refused_in_one_line(cpu_backend, executor):
    executor.bind(network(cpu_backend), SoftmaxCrossEntropyLoss(), SGD(0.1), cpu_backend, "float64")
    try:
        with pytest.raises(data.DataError, match=re.escape(
                f"{type(executor).__name__}.to_device: a training step needs at least one image, got an empty "
                "batch (images of shape (0, 1, 14, 14))")):
            executor.to_device(np.zeros((0, 1, 14, 14), np.uint8), np.zeros(0, np.int64))
    finally:
        executor.close()


def test_the_base_executor_has_no_step():
    with pytest.raises(NotImplementedError):
        StepExecutor().step(None)
