"""xpcnn.training.executors.split: BatchNorm synchronised over the shares of a batch (the whole
batch's statistics: gradients and running statistics equal to the whole-batch step in float64, in
plain stacks and inside residual blocks), a split fixed by the batch (the same bits for any thread
count), and a share's error raised, never a hang."""

import threading

import numpy as np
import pytest

from xpcnn.backends import resolve, to_numpy
from xpcnn.nn.base import Layer
from xpcnn.nn.losses import SoftmaxCrossEntropyLoss
from xpcnn.nn.spec import parse_spec
from xpcnn.optim import SGD
from xpcnn.training.executors import SplitStep, forward_backward, statistics_layers

VGG_LIKE = "conv4k3p1-bn-relu-conv4k3p1-bn-relu-maxpool2-flatten-dense6-bn-relu-dense"
RESNET_LIKE = ("conv4k3p1-bn-relu-res(conv4k3p1-bn-relu-conv4k3p1-bn)-relu-"
               "res(conv6k3s2p1-bn-relu-conv6k3p1-bn|conv6k1s2-bn)-relu-gap-dense")


def model(spec, backend):
    net = parse_spec(spec, image_shape=(2, 8, 8), outputs=5, seed=1).to(backend, dtype="float64")
    rng = np.random.default_rng(7)
    for layer in statistics_layers(net):  # gamma, beta and the running statistics away from 1 and 0
        layer.params = {"weight": backend.asarray(rng.uniform(0.5, 2.0, layer.size), "float64"),
                        "bias": backend.asarray(rng.standard_normal(layer.size), "float64")}
        layer.buffers = {"running_mean": backend.asarray(rng.standard_normal(layer.size), "float64"),
                         "running_var": backend.asarray(rng.uniform(0.5, 2.0, layer.size), "float64")}
    return net


def batch(backend, n, seed=0):
    rng = np.random.default_rng(seed)
    # a large mean against the spread: what a sum of squares would lose to cancellation
    x = backend.asarray(3.0 + rng.standard_normal((n, 2, 8, 8)), dtype="float64")
    return x, backend.asarray(rng.integers(0, 5, n), dtype="int64")


def split_gradients(spec, backend, threads, chunk, x, y):
    net = model(spec, backend)
    step = SplitStep(threads, chunk)
    step.bind(net, SoftmaxCrossEntropyLoss(), SGD(0.1), backend, "float64")
    try:
        with step.running():
            loss = step.gradients(x, y)
    finally:
        step.close()
    return net, loss


@pytest.mark.parametrize("spec", [VGG_LIKE, RESNET_LIKE], ids=["vgg-like", "resnet-like"])
@pytest.mark.parametrize("chunk", [6, 4, 3], ids=["2-shares", "3-shares", "4-shares"])
def test_synchronised_batchnorm_is_the_whole_batch_step(cpu_backend, spec, chunk):
    """12 images as 2, 3 or 4 shares: every gradient, the loss and every running statistic equal
    the whole-batch step's (float64: to rounding)."""
    x, y = batch(cpu_backend, 12)
    whole = model(spec, cpu_backend)
    loss = forward_backward(whole, SoftmaxCrossEntropyLoss(), x, y)
    split, split_loss = split_gradients(spec, cpu_backend, 2, chunk, x, y)
    assert len(SplitStep(2, chunk).shares(12)) == 12 // chunk
    np.testing.assert_allclose(to_numpy(split_loss), to_numpy(loss), rtol=1e-12)
    want, got = dict(whole.named_gradients()), dict(split.named_gradients())
    assert want.keys() == got.keys() and any(".running" not in k for k in got)
    for name in want:
        np.testing.assert_allclose(to_numpy(got[name]), to_numpy(want[name]), rtol=1e-9, atol=1e-12, err_msg=name)
    want_buffers, got_buffers = dict(whole.named_buffers()), dict(split.named_buffers())
    assert want_buffers.keys() == got_buffers.keys() and len(want_buffers) >= 6
    for name in want_buffers:
        np.testing.assert_allclose(to_numpy(got_buffers[name]), to_numpy(want_buffers[name]), rtol=1e-12,
                                   atol=1e-14, err_msg=name)
    # not the per-share statistics: those differ from the whole batch's by far more than rounding
    unsynchronised = model(spec, cpu_backend)
    forward_backward(unsynchronised, SoftmaxCrossEntropyLoss(), x[:chunk, ...], y[:chunk, ...])
    first = next(iter(want_buffers))
    assert not np.allclose(to_numpy(dict(unsynchronised.named_buffers())[first]), to_numpy(want_buffers[first]),
                           rtol=1e-6)


@pytest.mark.parametrize("spec", [VGG_LIKE, RESNET_LIKE, "conv4k3-relu-maxpool2-flatten-dense"],
                         ids=["vgg-like", "resnet-like", "no-batchnorm"])
def test_the_thread_count_does_not_change_a_bit(spec):
    """The split is the batch's (pieces of ``chunk``); threads only schedule them: 1, 2 and 3
    threads give bitwise-identical gradients, losses and running statistics (the shares' sums in
    share order), here with an uneven last piece."""
    numpy = resolve("numpy")
    x, y = batch(numpy, 11, seed=3)
    runs = [split_gradients(spec, numpy, threads, 3, x, y) for threads in (1, 2, 3)]
    for net, loss in runs[1:]:
        assert to_numpy(loss).tobytes() == to_numpy(runs[0][1]).tobytes()
        for (name, value), (_, first) in zip(net.state_dict().items(), runs[0][0].state_dict().items()):
            np.testing.assert_array_equal(to_numpy(value), to_numpy(first), err_msg=name)
        for (name, value), (_, first) in zip(net.named_gradients(), runs[0][0].named_gradients()):
            np.testing.assert_array_equal(to_numpy(value), to_numpy(first), err_msg=name)


class FailOn(Layer):
    """Raises in the forward of a share of ``rows`` rows (after a BatchNorm exchange)."""

    def __init__(self, rows):
        super().__init__()
        self.rows = rows

    def forward(self, x):
        if x.shape[0] == self.rows:
            raise ValueError(f"FailOn: a share of {self.rows} rows")
        return x

    def backward(self, grad_out, input_grad=True):
        return grad_out


def test_an_error_in_one_share_is_raised_and_no_share_waits_for_ever():
    """Shares of 2, 2 and 3 rows; the third fails after BatchNorm's forward exchange while the
    others wait in the next one: its ValueError comes out, the step does not hang, and the
    executor still runs the next step."""
    numpy = resolve("numpy")
    net = model(VGG_LIKE, numpy)
    net.layers.insert(2, FailOn(3))
    x, y = batch(numpy, 7)
    step = SplitStep(2, 3)
    step.bind(net, SoftmaxCrossEntropyLoss(), SGD(0.1), numpy, "float64")
    outcome = {}

    def run():
        try:
            with step.running():
                step.gradients(x, y)
        except Exception as exc:  # noqa: BLE001
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "the step hung"
    assert isinstance(outcome.get("error"), ValueError) and "a share of 3 rows" in str(outcome["error"])
    with step.running():
        loss = step.gradients(x[:4, ...], y[:4, ...])  # shares of 2 and 2 rows: a step as any other
    step.close()
    assert np.isfinite(to_numpy(loss))
