"""The test fixtures over (namespace, device) and dtype, and where skips are decided.

``backend`` runs a test on every backend spec below that is selected (option
``--backends`` or env ``XPCNN_BACKENDS``, comma-separated names or specs) and
available.  A backend named in ``XPCNN_REQUIRE_BACKENDS`` (CI sets it) that
cannot be resolved is an error, not a skip.  CUDA specs carry the ``gpu``
marker: ``pytest -m gpu`` runs just those on a GPU machine.

``dtype`` runs a test in ``"float32"`` and ``"float64"``.  Test ids name the backend spec, then
the dtype: ``test_x[numpy-float64]``, ``test_x[array_api_strict:device1-float32]``.

Assertions that check namespace, device, dtype and shape as well as values
(``xp_assert_close``) live in ``tests/helpers.py``: ``from helpers import xp_assert_close``
(pytest puts ``tests/`` on ``sys.path``: it has a conftest.py and no ``__init__.py``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig

# The benchmarks live outside the package, in scripts/ (tests/scripts/ imports them).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))

# Several array libraries share one GPU in this process: JAX must not take 75% of its memory
# at start-up (its default), or CuPy and PyTorch run out.  A value set by the user wins.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from xpcnn.backends import BackendError, resolve, split_spec  # noqa: E402

SPECS = [
    "numpy",
    "array_api_strict:CPU_DEVICE",
    "array_api_strict:device1",
    "array_api_strict:device2",
    "torch:cpu",
    "jax:cpu",
    "cupy:cuda",
    "torch:cuda",
    "jax:cuda",
]

MNIST_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist")


def pytest_addoption(parser):
    parser.addoption("--backends", default=os.environ.get("XPCNN_BACKENDS", ""),
                     help="comma-separated backends or specs to test (default: all available)")


def _selected(config) -> list[str]:
    wanted = [w.strip() for w in config.getoption("--backends").split(",") if w.strip()]
    if not wanted:
        return SPECS
    return [s for s in SPECS if s in wanted or split_spec(s)[0] in wanted]


def _required() -> set[str]:
    return {w.strip() for w in os.environ.get("XPCNN_REQUIRE_BACKENDS", "").split(",") if w.strip()}


def pytest_configure(config):
    for name in _required():
        spec = next((s for s in SPECS if split_spec(s)[0] == name or s == name), name)
        try:
            resolve(*split_spec(spec))
        except BackendError as exc:
            raise pytest.UsageError(f"required backend {name!r} is not usable: {exc}") from None


def _params(config):
    return [pytest.param(spec, id=spec, marks=[pytest.mark.gpu] if "cuda" in spec else [])
            for spec in _selected(config)]


DTYPES = ["float32", "float64"]


@pytest.hookimpl(tryfirst=True)  # before the fixtures' own params (dtype): ids read "numpy-float64"
def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", _params(metafunc.config), indirect=True)
    if "cpu_backend" in metafunc.fixturenames:
        specs = [p for p in _params(metafunc.config) if "cuda" not in p.values[0]]
        metafunc.parametrize("cpu_backend", specs, indirect=True)


def _is_required(spec: str) -> bool:
    """A spec named in XPCNN_REQUIRE_BACKENDS, or the CPU specs of a backend named there
    (requiring 'torch' requires torch on the CPU; name 'torch:cuda' to require the GPU)."""
    required = _required()
    return spec in required or (split_spec(spec)[0] in required and "cuda" not in spec)


def _resolve_or_skip(spec):
    name, device = split_spec(spec)
    try:
        return resolve(name, device)
    except BackendError as exc:
        if _is_required(spec):
            pytest.fail(f"required backend {spec} failed: {exc}")
        pytest.skip(str(exc))


@pytest.fixture
def backend(request):
    """A resolved ``xpcnn.Backend`` (namespace ``.xp`` and ``.device``)."""
    return _resolve_or_skip(request.param)


@pytest.fixture
def cpu_backend(request):
    return _resolve_or_skip(request.param)


@pytest.fixture(params=DTYPES, ids=DTYPES)
def dtype(request):
    """A floating dtype name, ``"float32"`` or ``"float64"`` (``backend.dtype(name)`` gives the dtype)."""
    return request.param


@pytest.fixture
def torch_cuda():
    """PyTorch on the GPU (for checks only PyTorch can make, such as its sync debug mode)."""
    return _resolve_or_skip("torch:cuda")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def mnist_dir():
    path = os.path.abspath(MNIST_DIR)
    if not os.path.isdir(path):
        pytest.skip(f"real MNIST files not present at {path}")
    return path


def find_mpiexec() -> str | None:
    """The mpich wheel puts mpiexec beside the interpreter (a venv's bin/, not on PATH unless activated)."""
    for candidate in (os.path.join(sysconfig.get_path("scripts"), "mpiexec"),
                      os.path.join(os.path.dirname(sys.executable), "mpiexec")):
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("mpiexec")


@pytest.fixture
def mpi() -> str:
    """The path of mpiexec, for tests that run an MPI job as a subprocess (never pytest under mpiexec:
    one failing rank would hang the others).  Without mpi4py or mpiexec the test skips, unless
    XPCNN_REQUIRE_MPI=1 (CI sets it), which makes that a failure."""
    found = find_mpiexec()
    missing = [what for what, ok in (("mpi4py", importlib.util.find_spec("mpi4py") is not None),
                                     ("mpiexec", found is not None)) if not ok]
    if missing:
        message = f"{' and '.join(missing)} not found: pip install -e '.[mpi]'"
        if os.environ.get("XPCNN_REQUIRE_MPI") == "1":
            pytest.fail(f"XPCNN_REQUIRE_MPI=1 but {message}")
        pytest.skip(message)
    assert found is not None
    return found
