import inspect
import subprocess
import sys

import numpy
import pytest

import fastbp
import fastbp.backends as registry
from fastbp.backends.numpy_backend import NumpyBackend


def test_default_is_numpy():
    assert fastbp.get_backend().name == "numpy"


def test_environment_variable_selects_backend(monkeypatch, backend):
    monkeypatch.setenv("FASTBP_BACKEND", backend.name)
    assert fastbp.get_backend().name == backend.name


def test_empty_environment_variable_counts_as_unset(monkeypatch):
    monkeypatch.setenv("FASTBP_BACKEND", "")
    assert fastbp.get_backend().name == "numpy"


def test_unknown_environment_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("FASTBP_BACKEND", "tensorflow")
    with pytest.raises(ValueError, match="FASTBP_BACKEND") as info:
        fastbp.get_backend()
    assert "'tensorflow'" in str(info.value) and "numba" in str(info.value)


def test_precedence(monkeypatch, backend):
    monkeypatch.setenv("FASTBP_BACKEND", backend.name)
    fastbp.set_backend("numpy")
    assert fastbp.get_backend().name == "numpy"  # set_backend beats the variable
    with fastbp.use_backend(backend.name):
        assert fastbp.get_backend().name == backend.name  # the context beats set_backend
        assert fastbp.get_backend("numpy").name == "numpy"  # the argument beats all
        with fastbp.use_backend("numpy"):
            assert fastbp.get_backend().name == "numpy"
        assert fastbp.get_backend().name == backend.name
    assert fastbp.get_backend().name == "numpy"


def test_use_backend_restores_after_an_exception(backend):
    with pytest.raises(RuntimeError):
        with fastbp.use_backend(backend.name):
            raise RuntimeError
    assert fastbp.get_backend().name == "numpy"


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as info:
        fastbp.set_backend("jax")
    message = str(info.value)
    assert "'jax'" in message
    assert all(name in message for name in ("numpy", "numba", "cupy"))


@pytest.fixture
def broken_numba(monkeypatch):
    """Make the numba backend unavailable, as on a machine without numba."""
    monkeypatch.setitem(sys.modules, "numba", None)
    monkeypatch.delitem(sys.modules, "fastbp.backends.numba_backend", raising=False)
    monkeypatch.setattr(registry, "_instances", {})


def test_unavailable_backend_raises_install_hint_and_keeps_choice(broken_numba):
    fastbp.set_backend("numpy")
    with pytest.raises(fastbp.BackendUnavailableError) as info:
        fastbp.set_backend("numba")
    assert isinstance(info.value, ImportError)
    assert 'pip install "fastbp[numba]"' in str(info.value)
    assert fastbp.get_backend().name == "numpy"
    with pytest.raises(fastbp.BackendUnavailableError):
        with fastbp.use_backend("numba"):
            pass
    assert "numba" not in fastbp.available_backends()
    assert "fastbp[numba]" in fastbp.backend_info()["numba"]["reason"]


def test_unavailable_environment_choice_does_not_fall_back(broken_numba, monkeypatch):
    monkeypatch.setenv("FASTBP_BACKEND", "numba")
    with pytest.raises(fastbp.BackendUnavailableError):
        fastbp.get_backend()


def test_cupy_without_gpu_says_how_to_install():
    if "cupy" in fastbp.available_backends():
        pytest.skip("a GPU is present: the cupy backend is available")
    with pytest.raises(fastbp.BackendUnavailableError, match=r"fastbp\[cuda1[23]\]"):
        fastbp.set_backend("cupy")


def test_import_fastbp_leaves_accelerator_packages_alone():
    code = ("import sys, fastbp, fastbp.layers, fastbp.nets, fastbp.optim, fastbp.gradcheck, "
            "fastbp.cli; fastbp.get_backend(); "
            "print(sorted(m for m in ('numba', 'cupy', 'torch', 'jax', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_backend_info_reports_every_backend():
    info = fastbp.backend_info()
    assert set(info) == {"numpy", "numba", "cupy"}
    assert info["numpy"]["available"] is True
    for entry in info.values():
        assert entry["available"] or entry["reason"]


def _public_methods(cls):
    return {name: inspect.signature(member) for name, member in inspect.getmembers(cls)
            if callable(member) and not name.startswith("_")}


def test_backends_expose_the_reference_signatures(backend):
    """Every backend has the reference's methods with the same signatures (and no others)."""
    assert _public_methods(type(backend)) == _public_methods(NumpyBackend)


@pytest.mark.parametrize("dtype", ["float32", "float64", "int64"])
@pytest.mark.parametrize("layout", ["1-d", "C", "F", "strided"])
def test_all_finite_finds_every_nan_and_inf(backend, dtype, layout):
    """The test before every step: any one NaN or inf, anywhere, in any layout."""
    rng = numpy.random.default_rng(0)
    base = rng.standard_normal((37, 29)).astype(dtype)
    shaped = {"1-d": lambda a: a.reshape(-1), "C": lambda a: a, "F": numpy.asfortranarray,
              "strided": lambda a: a[:, ::3]}[layout]
    assert backend.all_finite(backend.asarray(shaped(base)))
    if dtype == "int64":
        return
    for bad in (numpy.nan, numpy.inf, -numpy.inf):
        for where in [(0, 0), (36, 27), tuple(rng.integers(0, (37, 29)))]:
            poisoned = base.copy()
            poisoned[where] = bad
            expected = bool(numpy.isfinite(shaped(poisoned)).all())  # "strided" may skip it
            assert backend.all_finite(backend.asarray(shaped(poisoned))) == expected
    huge = numpy.full((5, 3), numpy.finfo(dtype).max, dtype=dtype)
    assert backend.all_finite(backend.asarray(huge))  # finite, however large


@pytest.mark.parametrize("bad", [123, 1.5, object()])
def test_a_backend_argument_that_is_neither_a_name_nor_a_backend_is_refused(bad):
    """``backend=`` takes a name or a backend object; anything else is the ValueError listing
    the valid names, not an AttributeError later in the layer or net."""
    from fastbp.layers import ReLU
    from fastbp.nets import TwoLayerNet

    for make in (lambda: fastbp.get_backend(bad), lambda: fastbp.to_device([1.0], backend=bad),
                 lambda: ReLU(backend=bad), lambda: TwoLayerNet(2, 2, 2, backend=bad)):
        with pytest.raises(ValueError, match="unknown backend .*expected one of"):
            make()
    assert fastbp.get_backend(fastbp.get_backend("numpy")).name == "numpy"  # objects still pass
