import numpy as np
import pytest

from xpcnn import BCELoss, MSELoss, SoftmaxCrossEntropyLoss, assert_gradients_ok, to_numpy


def test_mse_is_the_articles_half_squared_error(backend):
    out = backend.asarray(np.array([[0.2], [0.9]]), "float64")
    y = backend.asarray(np.array([[1.0], [0.0]]), "float64")
    loss = MSELoss()
    value = float(to_numpy(loss(out, y)))
    assert value == pytest.approx((0.5 * 0.8 ** 2 + 0.5 * 0.9 ** 2) / 2)
    np.testing.assert_allclose(to_numpy(loss.backward()), [[-0.4], [0.45]])


@pytest.mark.parametrize("loss_cls", [MSELoss, BCELoss])
def test_probability_loss_gradients(backend, rng, loss_cls):
    out = backend.asarray(rng.uniform(0.05, 0.95, (5, 3)), "float64")
    target = backend.asarray((rng.random((5, 3)) > 0.5).astype(float), "float64")
    assert_gradients_ok(loss_cls(), out, target=target)


def test_softmax_cross_entropy_gradient(backend, rng):
    logits = backend.asarray(rng.standard_normal((6, 4)) * 3, "float64")
    labels = backend.asarray(np.array([0, 3, 1, 2, 2, 0]), None)
    assert_gradients_ok(SoftmaxCrossEntropyLoss(), logits, target=labels)


def test_losses_are_finite_at_extremes(backend):
    logits = backend.asarray(np.array([[1e4, -1e4, 0.0], [-800.0, 800.0, 0.0]]), "float32")
    labels = backend.asarray(np.array([1, 0]), None)
    loss = SoftmaxCrossEntropyLoss()
    value = float(to_numpy(loss(logits, labels)))
    assert np.isfinite(value) and value == pytest.approx((2e4 + 1600.0) / 2)
    assert np.all(np.isfinite(to_numpy(loss.backward())))
    probs = backend.asarray(np.array([[0.0], [1.0]]), "float32")
    target = backend.asarray(np.array([[1.0], [0.0]]), "float32")
    bce = BCELoss()
    assert np.isfinite(float(to_numpy(bce(probs, target))))
    assert np.all(np.isfinite(to_numpy(bce.backward())))


def test_loss_input_validation():
    with pytest.raises(ValueError, match=r"MSELoss: target shape \(3,\) does not match output shape \(3, 1\)"):
        MSELoss()(np.zeros((3, 1)), np.zeros(3))
    with pytest.raises(ValueError, match=r"expected 2 integer labels of shape \(2,\), got shape \(3,\)"):
        SoftmaxCrossEntropyLoss()(np.zeros((2, 10)), np.zeros(3, dtype=np.int64))
    with pytest.raises(TypeError, match="expected floating-point logits, got dtype int64"):
        SoftmaxCrossEntropyLoss()(np.zeros((2, 10), dtype=np.int64), np.zeros(2, dtype=np.int64))
