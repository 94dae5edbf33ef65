"""One suite for every backend: the ``backend`` fixture runs a test on each one available."""

import numpy
import pytest

import fastbp
import fastbp.backends as registry

BACKENDS = fastbp.available_backends()
DTYPES = ("float64", "float32")
#: relative tolerance of a backend against the NumPy reference, per dtype
PARITY_RTOL = {"float64": 1e-10, "float32": 1e-4}


#: the backends a parity test compares with the reference; a visible skip when there is none
ACCELERATED = [name for name in BACKENDS if name != "numpy"] or [pytest.param(
    None, marks=pytest.mark.skip(reason="no accelerated backend (numba, cupy) here: parity with "
                                        "the NumPy reference is untested"), id="none")]


@pytest.fixture(params=BACKENDS, scope="session")
def backend(request):
    return fastbp.get_backend(request.param)


@pytest.fixture(params=ACCELERATED, scope="session")
def accelerated(request):
    """A non-reference backend, for tests that compare one with the NumPy reference."""
    return fastbp.get_backend(request.param)


@pytest.fixture(params=DTYPES, scope="session")
def dtype(request):
    return request.param


@pytest.fixture(scope="session")
def reference():
    return fastbp.get_backend("numpy")


@pytest.fixture(autouse=True)
def _restore_backend_choice(monkeypatch):
    """Each test starts from the default choice, whatever the previous one set."""
    monkeypatch.delenv("FASTBP_BACKEND", raising=False)
    monkeypatch.setattr(registry, "_global_choice", None)


def host(x):
    return fastbp.to_numpy(x)


def assert_close(actual, expected, dtype, what=""):
    """Relative error of whole arrays, as ``gradient_check`` measures it."""
    from fastbp.gradcheck import rel_error

    err = rel_error(host(actual), host(expected))
    assert err <= PARITY_RTOL[str(numpy.dtype(dtype))], f"{what}: relative error {err:.2e}"
