"""Test assertions that check where an array lives, not only its numbers.

``from helpers import xp_assert_close`` in any test module (pytest puts ``tests/`` on
``sys.path``: it holds a conftest.py and no ``__init__.py``).  In the style of SciPy's
``xp_assert_close`` (scipy/_lib/_array_api.py): a layer that returned the right numbers as a
NumPy array, on the wrong device or in float64 instead of float32 fails here, where
``np.testing.assert_allclose`` on ``to_numpy(...)`` would pass.
"""

from __future__ import annotations

import array_api_compat
import numpy as np

from xpcnn.backends import device_name, to_numpy


def normal_array(backend, rng: np.random.Generator, shape: tuple, dtype: str = "float64"):
    """Standard-normal values drawn on the host from ``rng``, on ``backend``'s device in ``dtype``."""
    return backend.asarray(rng.standard_normal(shape), dtype)


def _is_array(value) -> bool:
    return array_api_compat.is_array_api_obj(value) and not isinstance(value, (bool, int, float, complex))


def _namespace_name(xp) -> str:
    return getattr(xp, "__name__", repr(xp))


def _compat_namespace(xp):
    """The namespace ``array_api_compat.array_namespace`` gives for ``xp``'s arrays, so that
    ``xp=numpy`` and ``xp=torch`` mean their array-api-compat wrappers, as ``backend.xp`` does."""
    return array_api_compat.array_namespace(xp.asarray(0))


def xp_assert_close(actual, desired, *, xp=None, device=None, dtype=None, rtol: float | None = None,
                    atol: float = 0.0, err_msg: str = "") -> None:
    """Assert that ``actual`` is an array of namespace ``xp`` on ``device`` with dtype ``dtype``,
    the shape of ``desired`` and values close to it: |actual - desired| <= atol + rtol |desired|.

    ``desired`` is an array (any library) or anything ``numpy.asarray`` takes.  What is not
    given is taken from ``desired`` when it is an array of the expected namespace: ``xp`` from
    ``desired`` (an array of any library), then ``device`` and ``dtype`` from ``desired`` if it
    lives in ``xp``.  A host reference (NumPy, a list) for an array of another library needs
    ``xp=``, ``device=`` and ``dtype=`` (e.g. ``xp=backend.xp, device=backend.device,
    dtype=backend.dtype("float32")``); ``dtype`` may also be a name such as ``"float32"``.

    ``rtol`` defaults to 4 sqrt(eps) of ``actual``'s dtype (SciPy's default): about 1.4e-3 in
    float32, 6e-8 in float64.  Values are compared on the host (``xpcnn.backends.to_numpy``)."""
    prefix = f"{err_msg}: " if err_msg else ""
    if not _is_array(actual):
        raise AssertionError(f"{prefix}expected an array, got {type(actual).__name__}: {actual!r}")
    actual_xp = array_api_compat.array_namespace(actual)
    desired_is_array = _is_array(desired)
    if xp is None:
        if not desired_is_array:
            desired = np.asarray(desired)
        xp = array_api_compat.array_namespace(desired)
        desired_is_array = True
    else:
        xp = _compat_namespace(xp)
    if actual_xp is not xp:
        raise AssertionError(f"{prefix}namespace: got {_namespace_name(actual_xp)}, "
                             f"expected {_namespace_name(xp)}")

    same_library = desired_is_array and array_api_compat.array_namespace(desired) is xp
    if device is None:
        if not same_library:
            raise AssertionError(f"{prefix}xp_assert_close: give device= (desired is not an array "
                                 f"of {_namespace_name(xp)})")
        device = array_api_compat.device(desired)
    if array_api_compat.device(actual) != device:
        raise AssertionError(f"{prefix}device: got {device_name(array_api_compat.device(actual))}, "
                             f"expected {device_name(device)}")

    if dtype is None:
        if not same_library:
            raise AssertionError(f"{prefix}xp_assert_close: give dtype= (desired is not an array "
                                 f"of {_namespace_name(xp)})")
        dtype = desired.dtype
    elif isinstance(dtype, str):
        dtype = getattr(xp, dtype)
    if actual.dtype != dtype:
        raise AssertionError(f"{prefix}dtype: got {actual.dtype}, expected {dtype}")

    host_actual, host_desired = to_numpy(actual), np.asarray(to_numpy(desired) if desired_is_array else desired)
    if host_actual.shape != host_desired.shape:
        raise AssertionError(f"{prefix}shape: got {host_actual.shape}, expected {host_desired.shape}")

    if rtol is None:
        rtol = 4 * float(np.finfo(host_actual.dtype).eps) ** 0.5 if host_actual.dtype.kind in "fc" else 0.0
    np.testing.assert_allclose(host_actual, host_desired, rtol=rtol, atol=atol, err_msg=err_msg)


def stop_at(epoch: int, step: int):
    """An extension that requests a stop (as a signal would) once epoch ``epoch`` (from 1) has run
    ``step`` steps; give the Trainer ``sync_every=1`` so that it sees every step."""
    from xpcnn.training import Lambda

    def check(trainer, values):
        if trainer.state.epoch == epoch - 1 and trainer.state.step_in_epoch >= step:
            trainer.stop_requested = True

    return Lambda(on_losses=check)


def refuse_host_reads(patch, array_type, names, what: str = "a training step") -> None:
    """Make every way in ``names`` that an array of ``array_type`` reaches the host raise (with
    ``patch``, a monkeypatch context): a test of 'no device -> host read inside a step'."""
    def refuse(name):
        def read(self, *args, **kwargs):
            raise AssertionError(f"{what} called Array.{name}: a device -> host read")
        return read

    for name in names:
        patch.setattr(array_type, name, refuse(name))


def interrupt_and_resume(config, backend, make_executor, train, path, epoch: int, step: int):
    """Train ``config`` until a stop request after ``step`` steps of epoch ``epoch`` (a checkpoint
    at ``path``), then resume it in a new Trainer and train to the end: (interrupted, resumed)."""
    import pytest

    from xpcnn.training import Checkpointer, Interrupted, Trainer

    with Trainer(config, backend, executor=make_executor(), sync_every=1,
                 extensions=[stop_at(epoch, step), Checkpointer(path)]) as first:
        with pytest.raises(Interrupted, match=f"interrupted at epoch {epoch}, step {step}"):
            first.fit(train)
    with Trainer(config, backend, executor=make_executor()) as resumed:
        resumed.resume(path)
        resumed.fit(train)
    return first, resumed
