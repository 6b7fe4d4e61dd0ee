"""xpcnn.training.noise: a step's dropout noise is a function of the run's seed, the epoch and the
step, drawn on the host in layer order, and drawn only for a model that needs it."""

import numpy as np

from xpcnn.nn import Conv2D, Dropout, Flatten, Sequential
from xpcnn.training.noise import draw_noise, step_noise, step_seed


def test_draw_noise_is_a_function_of_the_seed():
    shapes = {"7.noise": (3, 2), "1.noise": (3, 4, 2, 2)}
    a = draw_noise(shapes, step_seed(5, 1, 2))
    b = draw_noise(dict(reversed(list(shapes.items()))), step_seed(5, 1, 2))  # order does not matter
    assert list(a) == ["1.noise", "7.noise"]
    for name in shapes:
        assert a[name].dtype == np.float64 and a[name].shape == shapes[name]
        np.testing.assert_array_equal(a[name], b[name])
        assert 0 <= a[name].min() and a[name].max() < 1
    single = draw_noise(shapes, step_seed(5, 1, 2), "float32")
    np.testing.assert_array_equal(single["1.noise"], a["1.noise"].astype(np.float32))  # a host cast of the same draw
    for other in (step_seed(5, 1, 3), step_seed(5, 2, 2), step_seed(6, 1, 2)):
        assert not np.array_equal(draw_noise(shapes, other)["1.noise"], a["1.noise"])
    # apart from the augmentation's stream (numpy.random.default_rng([seed, epoch, step]))
    assert not np.array_equal(np.random.default_rng([5, 1, 2]).random((3, 4, 2, 2)), a["1.noise"])


def test_step_noise_draws_only_for_dropout():
    images = np.zeros((4, 1, 6, 6), np.uint8)  # (N, C, H, W), as the Trainer hands them over
    assert step_noise(Sequential(Conv2D(1, 2, 3), Flatten()), images, 0, 0, 0, "float32") is None
    assert step_noise(Sequential(Flatten(), Dropout(0.0)), images, 0, 0, 0, "float32") is None
    noise = step_noise(Sequential(Conv2D(1, 2, 3), Dropout(0.5)), images, 3, 1, 4, "float32")
    assert noise["1.noise"].shape == (4, 2, 4, 4) and noise["1.noise"].dtype == np.float32
