"""xpcnn.tools.gradcheck: the checker passes correct backward passes and catches wrong ones (a checker
that passes everything would make every gradient test in the suite worthless)."""

import numpy as np
import pytest
from helpers import normal_array, xp_assert_close

import xpcnn
from xpcnn import Conv2D, Dense, MSELoss, Sequential, Sigmoid, assert_gradients_ok, check_gradients
from xpcnn.tools.gradcheck import GradCheckResult

# -- deliberately wrong layers ------------------------------------------------------------

class DoubledInputGradDense(Dense):
    """Right parameter gradients, dE/dX twice too large."""

    def backward(self, grad_out, input_grad=True):
        grad = super().backward(grad_out, input_grad)
        return None if grad is None else 2.0 * grad


class WrongWeightGradDense(Dense):
    """Right dE/dX and dE/db, dE/dW 1.5 times too large."""

    def backward(self, grad_out, input_grad=True):
        grad = super().backward(grad_out, input_grad)
        self.grads["weight"] = 1.5 * self.grads["weight"]
        return grad


class MeanBiasGradDense(Dense):
    """A classic slip: dE/db as the batch mean of G instead of its sum."""

    def backward(self, grad_out, input_grad=True):
        grad = super().backward(grad_out, input_grad)
        self.grads["bias"] = self.grads["bias"] / grad_out.shape[0]
        return grad


class WrongSigmoid(Sigmoid):
    """dA/dZ = A (1 + A) instead of A (1 - A)."""

    def backward(self, grad_out, input_grad=True):
        (a,) = self.saved_for_backward()
        return grad_out * (a * (1.0 + a))


class HalvedMSELoss(MSELoss):
    def backward(self):
        return 0.5 * super().backward()


def _by_name(results):
    return {r.name: r for r in results}


# -- correct layers pass ------------------------------------------------------------------------

def test_correct_dense_passes_with_every_array_checked(backend, rng):
    results = check_gradients(Dense(5, 3, rng=1), normal_array(backend, rng, (4, 5)), max_elements=None)
    assert [r.name for r in results] == ["input", "weight", "bias"]
    assert all(isinstance(r, GradCheckResult) and r.ok for r in results)
    assert all(r.max_abs_error < 1e-7 for r in results)


def test_correct_model_with_a_loss_passes(backend, rng):
    model = Sequential(Conv2D(1, 2, 3, rng=1), Sigmoid(), xpcnn.Flatten(), Dense(2 * 4 * 4, 2, rng=2))
    target = backend.asarray(rng.standard_normal((3, 2)), "float64")
    results = assert_gradients_ok(model, normal_array(backend, rng, (3, 1, 6, 6)), loss=MSELoss(), target=target)
    assert {r.name for r in results} == {"input", "0.weight", "0.bias", "3.weight", "3.bias"}


def test_a_loss_alone_is_checked_on_its_input(backend, rng):
    target = backend.asarray(rng.standard_normal((3, 2)), "float64")
    results = assert_gradients_ok(MSELoss(), normal_array(backend, rng, (3, 2)), target=target)
    assert [r.name for r in results] == ["input"]


def test_the_layer_is_left_in_float64_on_the_inputs_backend(backend, rng):
    layer = Dense(4, 2, rng=0).to(backend, dtype="float32")
    x = backend.asarray(rng.standard_normal((2, 4)), "float32")
    assert_gradients_ok(layer, x)
    for value in layer.params.values():
        xp_assert_close(value, value, xp=backend.xp, device=backend.device, dtype="float64")
    # and its parameters are put back exactly as they were (the nudges undone)
    fresh = Dense(4, 2, rng=0).to(backend, dtype="float32").to(backend, dtype="float64")
    for name, value in layer.params.items():
        xp_assert_close(value, fresh.params[name], rtol=0)


# -- wrong layers fail --------------------------------------------------------------------------

def test_a_doubled_input_gradient_is_caught(backend, rng):
    results = _by_name(check_gradients(DoubledInputGradDense(5, 3, rng=1), normal_array(backend, rng, (4, 5))))
    assert not results["input"].ok
    assert results["input"].max_rel_error == pytest.approx(1 / 2, rel=1e-3)  # |2g - g| / |2g|
    assert results["weight"].ok and results["bias"].ok  # only the wrong array is blamed
    with pytest.raises(AssertionError, match=r"gradient check failed: input: max abs err"):
        assert_gradients_ok(DoubledInputGradDense(5, 3, rng=1), normal_array(backend, rng, (4, 5)))


def test_a_wrong_weight_gradient_is_caught(backend, rng):
    results = _by_name(check_gradients(WrongWeightGradDense(5, 3, rng=1), normal_array(backend, rng, (4, 5))))
    assert [name for name, r in results.items() if not r.ok] == ["weight"]
    with pytest.raises(AssertionError, match=r"gradient check failed: weight: ") as failure:
        assert_gradients_ok(WrongWeightGradDense(5, 3, rng=1), normal_array(backend, rng, (4, 5)))
    assert "input" not in str(failure.value) and "bias" not in str(failure.value)


def test_a_mean_instead_of_a_sum_in_the_bias_gradient_is_caught(backend, rng):
    results = _by_name(check_gradients(MeanBiasGradDense(5, 3, rng=1), normal_array(backend, rng, (4, 5))))
    assert [name for name, r in results.items() if not r.ok] == ["bias"]


def test_a_wrong_activation_inside_a_model_is_caught(backend, rng):
    """One wrong layer deep in a model spoils the input gradient and every parameter before it."""
    model = Sequential(Dense(4, 3, rng=1), WrongSigmoid(), Dense(3, 2, rng=2))
    results = _by_name(check_gradients(model, normal_array(backend, rng, (3, 4))))
    assert {name for name, r in results.items() if not r.ok} == {"input", "0.weight", "0.bias"}
    assert results["2.weight"].ok and results["2.bias"].ok


def test_a_wrong_loss_gradient_is_caught(backend, rng):
    target = backend.asarray(rng.standard_normal((3, 2)), "float64")
    with pytest.raises(AssertionError, match="gradient check failed: input"):
        assert_gradients_ok(HalvedMSELoss(), normal_array(backend, rng, (3, 2)), target=target)
    with pytest.raises(AssertionError, match="gradient check failed"):  # and as a model's loss
        assert_gradients_ok(Dense(4, 2, rng=1), normal_array(backend, rng, (3, 4)), loss=HalvedMSELoss(), target=target)


def test_a_small_error_is_within_a_loose_tolerance_only(backend, rng):
    class SlightlyWrong(Dense):
        def backward(self, grad_out, input_grad=True):
            grad = super().backward(grad_out, input_grad)
            return None if grad is None else grad * (1 + 1e-3)

    x = normal_array(backend, rng, (4, 5))
    assert not _by_name(check_gradients(SlightlyWrong(5, 3, rng=1), x))["input"].ok
    assert _by_name(check_gradients(SlightlyWrong(5, 3, rng=1), x, rtol=1e-2))["input"].ok


def test_max_elements_samples_large_arrays(rng):
    results = check_gradients(Dense(30, 20, rng=1), rng.standard_normal((2, 30)), max_elements=5)
    assert all(r.ok for r in results)
    wrong = check_gradients(WrongWeightGradDense(30, 20, rng=1), rng.standard_normal((2, 30)), max_elements=5)
    assert not _by_name(wrong)["weight"].ok  # a sample of a wholly wrong array is wrong too
    np.testing.assert_equal([r.name for r in wrong], ["input", "weight", "bias"])
