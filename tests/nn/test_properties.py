"""Property-based checks over random shapes, strides, paddings and batch sizes."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xpcnn import AvgPool2D, Conv2D, MaxPool2D, Sigmoid, SoftmaxCrossEntropyLoss, check_gradients, resolve, to_numpy

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def conv_cases(draw):
    kernel = draw(st.integers(1, 4))
    stride = draw(st.integers(1, 3))
    padding = draw(st.integers(0, 2))
    size = draw(st.integers(max(1, kernel - 2 * padding), 9))
    return dict(batch=draw(st.integers(1, 3)), channels=draw(st.integers(1, 3)), filters=draw(st.integers(1, 3)),
                kernel=kernel, stride=stride, padding=padding, height=size,
                width=draw(st.integers(max(1, kernel - 2 * padding), 9)), seed=draw(st.integers(0, 2**16)),
                im2col=draw(st.sampled_from(["slices", "gather"])))


@SETTINGS
@given(case=conv_cases())
def test_conv_shape_and_gradient_property(case):
    conv = Conv2D(case["channels"], case["filters"], case["kernel"], stride=case["stride"], padding=case["padding"],
                  rng=case["seed"], im2col=case["im2col"])
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((case["batch"], case["channels"], case["height"], case["width"]))
    out = conv(x)
    f, s, p = case["kernel"], case["stride"], case["padding"]
    assert out.shape == (case["batch"], case["filters"], (case["height"] + 2 * p - f) // s + 1,
                         (case["width"] + 2 * p - f) // s + 1)
    results = check_gradients(conv, x, max_elements=16, seed=case["seed"])
    assert all(r.ok for r in results), results


@SETTINGS
@given(kernel=st.integers(1, 3), stride=st.integers(1, 3), size=st.integers(3, 8), batch=st.integers(1, 3),
       average=st.booleans(), seed=st.integers(0, 2**16))
def test_pool_shape_and_gradient_property(kernel, stride, size, batch, average, seed):
    pool = (AvgPool2D if average else MaxPool2D)(kernel, stride)
    x = np.random.default_rng(seed).standard_normal((batch, 2, size, size))
    out = pool(x)
    assert out.shape == (batch, 2, (size - kernel) // stride + 1, (size - kernel) // stride + 1)
    assert all(r.ok for r in check_gradients(pool, x, max_elements=16, seed=seed))


@SETTINGS
@given(values=st.lists(st.floats(-1e30, 1e30, allow_nan=False), min_size=2, max_size=8))
def test_sigmoid_and_softmax_are_finite_for_extreme_inputs(values):
    backend = resolve("numpy")
    x = backend.asarray(np.array(values), "float32")
    assert np.all(np.isfinite(to_numpy(Sigmoid()(x))))
    logits = backend.asarray(np.array([values]), "float32")
    loss = SoftmaxCrossEntropyLoss()
    value = loss(logits, backend.asarray(np.array([0]), None))
    assert np.isfinite(float(to_numpy(value)))
    assert np.all(np.isfinite(to_numpy(loss.backward())))


@SETTINGS
@given(batch=st.integers(1, 4), features=st.integers(1, 6), outputs=st.integers(1, 5), bias=st.booleans(),
       activation=st.sampled_from(["Sigmoid", "Tanh", "ReLU", "Flatten"]), seed=st.integers(0, 2**16))
def test_dense_and_activation_property(batch, features, outputs, bias, activation, seed):
    import xpcnn
    rng = np.random.default_rng(seed)
    dense = xpcnn.Dense(features, outputs, bias=bias, rng=seed)
    x = rng.standard_normal((batch, features))
    assert dense(x).shape == (batch, outputs)
    assert all(r.ok for r in check_gradients(dense, x, max_elements=16, seed=seed))
    layer = getattr(xpcnn, activation)()
    x4 = rng.standard_normal((batch, 2, 3, features)) + 0.01  # keep ReLU's kink away from zero
    assert layer(x4).shape == ((batch, 2 * 3 * features) if activation == "Flatten" else x4.shape)
    assert all(r.ok for r in check_gradients(layer, x4, max_elements=16, seed=seed))
