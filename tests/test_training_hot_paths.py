"""The optimizer and BatchNorm hot paths of every backend against the NumPy reference.

Both dtypes, any shape, contiguous or not; updates must happen in place and
keep the dtype of the arrays they update (state included).
"""

import numpy
import pytest
from conftest import assert_close, host
from hypothesis import given, settings
from hypothesis import strategies as st

shapes = st.one_of(st.tuples(st.integers(1, 30)), st.tuples(st.integers(1, 20), st.integers(1, 20)))

#: method -> (names of its array arguments, after which the hyper-parameters follow)
UPDATES = {
    "sgd_update": (("param", "grad"), (0.1,)),
    "momentum_update": (("param", "grad", "velocity"), (0.1, 0.9)),
    "nesterov_update": (("param", "grad", "velocity"), (0.1, 0.9)),
    "adagrad_update": (("param", "grad", "h"), (0.1, 1e-10)),
    "rmsprop_update": (("param", "grad", "h"), (0.1, 0.99, 1e-8)),
    "adam_update": (("param", "grad", "m", "v"), (0.01, 0.9, 0.999, 3, 1e-8)),
}


def _host_arrays(names, shape, seed):
    """Random host arrays; second-moment state (``h``, ``v``) is non-negative."""
    rng = numpy.random.default_rng(seed)
    return [numpy.abs(rng.standard_normal(shape)) if name in ("h", "v")
            else rng.standard_normal(shape) for name in names]


def _on(backend, arrays, dtype, transposed=False):
    """Copies of ``arrays`` on ``backend``; with ``transposed`` non-contiguous views."""
    out = [backend.asarray((a.T if transposed else a).copy(), dtype=dtype) for a in arrays]
    return [a.T for a in out] if transposed else out


@pytest.mark.parametrize("method", UPDATES)
@settings(max_examples=10, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16), transposed=st.booleans())
def test_update_matches_reference_in_place(accelerated, reference, dtype, method, shape, seed,
                                           transposed):
    names, hyper = UPDATES[method]
    arrays = _host_arrays(names, shape, seed)
    ours = _on(accelerated, arrays, dtype, transposed and len(shape) == 2)
    ref = _on(reference, arrays, dtype)
    identities = [id(a) for a in ours]
    getattr(accelerated, method)(*ours, *hyper)
    getattr(reference, method)(*ref, *hyper)
    assert [id(a) for a in ours] == identities
    for name, got, want in zip(names, ours, ref):
        assert got.dtype == numpy.dtype(dtype), name
        assert_close(got, want, dtype, f"{method}: {name}")
    assert not numpy.array_equal(host(ours[0]), arrays[0].astype(dtype))  # param moved


@settings(max_examples=15, deadline=None)
@given(n=st.integers(2, 30), d=st.integers(1, 20), seed=st.integers(0, 2**16),
       transposed=st.booleans(), train_flg=st.booleans())
def test_batchnorm_matches_reference(accelerated, reference, dtype, n, d, seed, transposed, train_flg):
    rng = numpy.random.default_rng(seed)
    x, dout = rng.standard_normal((n, d)) * 3 + 1, rng.standard_normal((n, d))
    gamma, beta, mean = rng.standard_normal((3, d))
    var = rng.random(d) + 0.5
    ours = [*_on(accelerated, [x, dout], dtype, transposed),
            *_on(accelerated, [gamma, beta, mean, var], dtype)]
    ref = _on(reference, [x, dout, gamma, beta, mean, var], dtype)
    results = []
    for be, (x_, dout_, gamma_, beta_, mean_, var_) in ((accelerated, ours), (reference, ref)):
        out, xn, inv_std = be.batchnorm_forward(x_, gamma_, beta_, mean_, var_, 0.9, 1e-6,
                                                train_flg)
        results.append((out, xn, inv_std, mean_, var_,
                        *be.batchnorm_backward(dout_, xn, inv_std, gamma_, train_flg)))
    names = ("out", "xn", "inv_std", "running_mean", "running_var", "dx", "dgamma", "dbeta")
    for name, got, want in zip(names, *results):
        assert got.dtype == numpy.dtype(dtype), name
        assert_close(got, want, dtype, name)
