"""xpcnn.nn.init: the three weight schemes (shapes, ranges, spreads), biases, seeding, errors."""

import math

import numpy as np
import pytest

from xpcnn import Conv2D, Dense
from xpcnn.nn.init import INITIALISERS, as_generator, make_bias, make_weight

BIG = (1000, 1000)  # a million draws: sample statistics within about 0.1-0.3% of the truth


@pytest.mark.parametrize("scheme", INITIALISERS)
@pytest.mark.parametrize("shape", [(7,), (5, 3), (4, 1, 5, 5), (2, 3, 1, 2)], ids=str)
def test_weights_have_the_shape_asked_for_as_float64_host_arrays(scheme, shape):
    weight = make_weight(np.random.default_rng(0), shape, fan_in=25, fan_out=100, scheme=scheme)
    assert isinstance(weight, np.ndarray) and weight.shape == shape and weight.dtype == np.float64
    assert np.all(np.isfinite(weight))


def test_uniform_is_the_articles_u01():
    weight = make_weight(np.random.default_rng(0), BIG, fan_in=25, fan_out=10, scheme="uniform")
    assert weight.min() >= 0.0 and weight.max() < 1.0
    assert weight.min() < 1e-5 and weight.max() > 1 - 1e-5  # the whole interval is used
    assert weight.mean() == pytest.approx(0.5, abs=2e-3)
    assert weight.var() == pytest.approx(1 / 12, rel=1e-2)


@pytest.mark.parametrize("fan_in,fan_out", [(25, 75), (2304, 10), (1, 1)])
def test_glorot_stays_within_its_limit(fan_in, fan_out):
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    weight = make_weight(np.random.default_rng(1), BIG, fan_in, fan_out, "glorot")
    assert weight.min() >= -limit and weight.max() < limit
    assert weight.min() < -0.999 * limit and weight.max() > 0.999 * limit  # and fills it
    assert weight.mean() == pytest.approx(0.0, abs=3e-3 * limit)
    assert weight.var() == pytest.approx(2.0 / (fan_in + fan_out), rel=1e-2)  # limit^2 / 3


@pytest.mark.parametrize("fan_in", [25, 400, 2304])
def test_he_has_std_sqrt_2_over_fan_in(fan_in):
    weight = make_weight(np.random.default_rng(2), BIG, fan_in, 10, "he")
    std = math.sqrt(2.0 / fan_in)
    assert weight.std() == pytest.approx(std, rel=5e-3)
    assert weight.mean() == pytest.approx(0.0, abs=5e-3 * std)
    assert abs(weight).max() > 4 * std  # normal, not bounded


def test_biases():
    rng = np.random.default_rng(3)
    uniform = make_bias(rng, 1000, "uniform")  # the article draws its bias from U[0, 1) too
    assert uniform.shape == (1000,) and uniform.min() >= 0.0 and uniform.max() < 1.0 and uniform.std() > 0.2
    for scheme in ("glorot", "he"):
        bias = make_bias(rng, 7, scheme)
        assert bias.shape == (7,) and bias.dtype == np.float64 and not np.any(bias)


@pytest.mark.parametrize("scheme", INITIALISERS)
def test_the_same_seed_gives_bit_identical_weights(scheme):
    first = make_weight(as_generator(42), (3, 4, 5), 20, 12, scheme)
    second = make_weight(as_generator(42), (3, 4, 5), 20, 12, scheme)
    np.testing.assert_array_equal(first, second)
    assert first.tobytes() == second.tobytes()
    assert not np.array_equal(first, make_weight(as_generator(43), (3, 4, 5), 20, 12, scheme))


def test_as_generator_takes_a_seed_or_a_generator():
    rng = np.random.default_rng(5)
    assert as_generator(rng) is rng  # a generator is used as it is, its state shared
    assert as_generator(5).random() == np.random.default_rng(5).random()
    assert as_generator(None).random() != as_generator(None).random()  # fresh entropy


def test_layers_draw_the_same_weights_from_the_same_seed():
    for make in (lambda seed: Conv2D(2, 3, 5, rng=seed), lambda seed: Dense(8, 4, init="he", rng=seed)):
        first, second = make(7), make(7)
        for name in first.params:
            np.testing.assert_array_equal(first.params[name], second.params[name])


def test_layers_pass_their_fans():
    """Conv2D's fan_in is in_channels*kh*kw (He by default); Dense's in_features (Glorot)."""
    conv = Conv2D(16, 32, 5, rng=0)  # fan_in 400: std sqrt(2/400)
    assert conv.params["weight"].std() == pytest.approx(math.sqrt(2 / 400), rel=0.03)
    dense = Dense(300, 100, rng=0)  # limit sqrt(6/400)
    limit = math.sqrt(6 / 400)
    assert abs(dense.params["weight"]).max() < limit and abs(dense.params["weight"]).max() > 0.99 * limit


@pytest.mark.parametrize("scheme", ["xavier", "", "He", None])
def test_an_unknown_scheme_is_an_error_naming_the_choices(scheme):
    with pytest.raises(ValueError, match=rf"unknown initialiser {scheme!r}; choose one of uniform, glorot, he"):
        make_weight(np.random.default_rng(0), (2, 2), 2, 2, scheme)
    with pytest.raises(ValueError, match="unknown initialiser"):
        Dense(2, 2, init=scheme)
