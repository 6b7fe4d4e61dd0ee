"""The test helper xp_assert_close itself: it passes on a match and fails, saying why, on a wrong
namespace, device, dtype, shape or value."""

import numpy as np
import pytest
from helpers import xp_assert_close

import xpcnn


def test_passes_on_a_match(backend, dtype, rng):
    host = rng.standard_normal((2, 3))
    actual, desired = backend.asarray(host, dtype), backend.asarray(host, dtype)
    xp_assert_close(actual, desired, rtol=0)
    xp_assert_close(actual, host, xp=backend.xp, device=backend.device, dtype=dtype)  # a host reference
    xp_assert_close(actual, host, xp=backend.xp, device=backend.device, dtype=backend.dtype(dtype))


def test_fails_on_a_wrong_dtype(backend, rng):
    host = rng.standard_normal(4)
    with pytest.raises(AssertionError, match="dtype: got .*float32.*expected .*float64"):
        xp_assert_close(backend.asarray(host, "float32"), backend.asarray(host, "float64"))
    with pytest.raises(AssertionError, match="dtype: got .*float64.*expected .*float32"):
        xp_assert_close(backend.asarray(host, "float64"), host, xp=backend.xp, device=backend.device,
                        dtype="float32")


def test_fails_on_a_wrong_device():
    pytest.importorskip("array_api_strict")
    one, two = xpcnn.resolve("array_api_strict", "device1"), xpcnn.resolve("array_api_strict", "device2")
    host = np.arange(3.0)
    with pytest.raises(AssertionError, match="device: got device1, expected device2"):
        xp_assert_close(one.asarray(host, "float64"), two.asarray(host, "float64"))
    with pytest.raises(AssertionError, match="device: got device2, expected device1"):
        xp_assert_close(two.asarray(host, "float64"), host, xp=one.xp, device=one.device, dtype="float64")


def test_fails_on_wrong_values(backend):
    desired = np.array([1.0, 2.0, 3.0])
    actual = backend.asarray(np.array([1.0, 2.0, 3.001]), "float64")
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        xp_assert_close(actual, desired, xp=backend.xp, device=backend.device, dtype="float64")
    xp_assert_close(actual, desired, xp=backend.xp, device=backend.device, dtype="float64", atol=2e-3)
    with pytest.raises(AssertionError, match="conv output"):  # err_msg says which array
        xp_assert_close(actual, desired, xp=backend.xp, device=backend.device, dtype="float64",
                        err_msg="conv output")


def test_default_rtol_follows_the_dtype(backend):
    """4 sqrt(eps): a relative error of 1e-4 passes in float32 and fails in float64."""
    desired = np.full(3, 1.0)
    for dtype, ok in [("float32", True), ("float64", False)]:
        actual = backend.asarray(desired * (1 + 1e-4), dtype)
        if ok:
            xp_assert_close(actual, desired, xp=backend.xp, device=backend.device, dtype=dtype)
        else:
            with pytest.raises(AssertionError, match="Not equal to tolerance"):
                xp_assert_close(actual, desired, xp=backend.xp, device=backend.device, dtype=dtype)


def test_fails_on_a_wrong_shape(backend):
    actual = backend.asarray(np.zeros((2, 3)), "float64")
    with pytest.raises(AssertionError, match=r"shape: got \(2, 3\), expected \(3, 2\)"):
        xp_assert_close(actual, backend.asarray(np.zeros((3, 2)), "float64"))
    with pytest.raises(AssertionError, match=r"shape: got \(2, 3\), expected \(6,\)"):
        xp_assert_close(actual, np.zeros(6), xp=backend.xp, device=backend.device, dtype="float64")


def test_fails_on_a_wrong_namespace():
    strict = pytest.importorskip("array_api_strict")
    host = np.arange(3.0)
    with pytest.raises(AssertionError, match="namespace: got .*numpy, expected array_api_strict"):
        xp_assert_close(host, strict.asarray(host))
    with pytest.raises(AssertionError, match="namespace: got array_api_strict, expected .*numpy"):
        xp_assert_close(strict.asarray(host), host)
    with pytest.raises(AssertionError, match="expected an array"):
        xp_assert_close(1.0, host)


def test_a_host_reference_for_another_library_needs_device_and_dtype():
    strict = pytest.importorskip("array_api_strict")
    actual, host = strict.asarray(np.arange(3.0)), np.arange(3.0)
    with pytest.raises(AssertionError, match="give device="):
        xp_assert_close(actual, host, xp=strict)
    with pytest.raises(AssertionError, match="give dtype="):
        xp_assert_close(actual, host, xp=strict, device=actual.device)
    xp_assert_close(actual, host, xp=strict, device=actual.device, dtype="float64")


def test_plain_numpy_module_means_its_compat_namespace():
    xp_assert_close(np.arange(3.0), [0.0, 1.0, 2.0], xp=np, device="cpu", dtype="float64")
    xp_assert_close(np.arange(3.0), [0.0, 1.0, 2.0])  # namespace, device, dtype of the list as NumPy sees it
