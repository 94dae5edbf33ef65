"""Every backend's hot paths against the NumPy reference, both dtypes, any layout."""

import numpy
import pytest
from conftest import assert_close, host
from hypothesis import given, settings
from hypothesis import strategies as st

dims = st.integers(1, 40)


def _arrays(backend, dtype, seed, shapes, transposed=False):
    """Random arrays on ``backend``; with ``transposed`` they are non-contiguous views."""
    rng = numpy.random.default_rng(seed)
    out = []
    for shape in shapes:
        a = rng.standard_normal(shape[::-1] if transposed and len(shape) == 2 else shape)
        a = backend.asarray(a, dtype=dtype)
        out.append(a.T if transposed and len(shape) == 2 else a)
    return out


@settings(max_examples=15, deadline=None)
@given(n=dims, d_in=dims, d_out=dims, seed=st.integers(0, 2**16), transposed=st.booleans())
def test_affine_matches_reference(accelerated, reference, dtype, n, d_in, d_out, seed, transposed):
    x, W, b, dout = _arrays(accelerated, dtype, seed, [(n, d_in), (d_in, d_out), (d_out,), (n, d_out)],
                            transposed)
    ref = [reference.asarray(host(a)) for a in (x, W, b, dout)]
    out = accelerated.affine_forward(x, W, b)
    assert out.dtype == numpy.dtype(dtype)
    assert_close(out, reference.affine_forward(*ref[:3]), dtype, "affine_forward")
    for got, want, name in zip(accelerated.affine_backward(dout, x, W),
                               reference.affine_backward(ref[3], ref[0], ref[1]), ("dx", "dW", "db")):
        assert got.dtype == numpy.dtype(dtype), name
        assert_close(got, want, dtype, name)
    dx, _, _ = accelerated.affine_backward(dout, x, W, need_dx=False)
    assert dx is None


@settings(max_examples=15, deadline=None)
@given(n=dims, d=dims, seed=st.integers(0, 2**16), transposed=st.booleans())
def test_activations_match_reference(accelerated, reference, dtype, n, d, seed, transposed):
    x, dout = _arrays(accelerated, dtype, seed, [(n, d), (n, d)], transposed)
    rx, rdout = reference.asarray(host(x)), reference.asarray(host(dout))
    out, mask = accelerated.relu_forward(x)
    ref_out, ref_mask = reference.relu_forward(rx)
    assert out.dtype == numpy.dtype(dtype)
    assert_close(out, ref_out, dtype, "relu_forward")
    dx = accelerated.relu_backward(dout, mask)
    assert dx.dtype == numpy.dtype(dtype)
    assert_close(dx, reference.relu_backward(rdout, ref_mask), dtype, "relu_backward")
    s = accelerated.sigmoid_forward(x)
    assert s.dtype == numpy.dtype(dtype)
    assert_close(s, reference.sigmoid_forward(rx), dtype, "sigmoid_forward")
    ds = accelerated.sigmoid_backward(dout, s)
    assert_close(ds, reference.sigmoid_backward(rdout, reference.sigmoid_forward(rx)), dtype,
                 "sigmoid_backward")


@settings(max_examples=15, deadline=None)
@given(n=dims, c=st.integers(2, 12), seed=st.integers(0, 2**16), transposed=st.booleans(),
       one_hot=st.booleans())
def test_softmax_cross_entropy_matches_reference(accelerated, reference, dtype, n, c, seed,
                                                  transposed, one_hot):
    (x,) = _arrays(accelerated, dtype, seed, [(n, c)], transposed)
    labels = numpy.random.default_rng(seed).integers(0, c, n)
    t_host = numpy.eye(c, dtype=dtype)[labels] if one_hot else labels
    t = accelerated.asarray(t_host)
    loss, probs = accelerated.softmax_cross_entropy(x, t)
    ref_loss, ref_probs = reference.softmax_cross_entropy(reference.asarray(host(x)), t_host)
    assert probs.dtype == numpy.dtype(dtype) and loss.dtype == numpy.dtype(dtype)
    assert_close(loss, ref_loss, dtype, "loss")
    assert_close(probs, ref_probs, dtype, "probs")
    dx = accelerated.softmax_cross_entropy_backward(probs, t)
    assert dx.dtype == numpy.dtype(dtype)
    assert_close(dx, reference.softmax_cross_entropy_backward(ref_probs, t_host), dtype, "dx")


@pytest.mark.parametrize("n, c", [(520, 64), (3001, 11)])  # n * c >= 2**15, n % 64 != 0
@pytest.mark.parametrize("one_hot", [False, True])
def test_softmax_cross_entropy_of_many_rows_matches_reference(accelerated, reference, dtype, n, c,
                                                               one_hot):
    """Enough rows for numba's row-parallel pass, and a last chunk of rows that is not full."""
    (x,) = _arrays(accelerated, dtype, 0, [(n, c)])
    labels = numpy.random.default_rng(1).integers(0, c, n)
    t_host = numpy.eye(c, dtype=dtype)[labels] if one_hot else labels
    loss, probs = accelerated.softmax_cross_entropy(x, accelerated.asarray(t_host))
    ref_loss, ref_probs = reference.softmax_cross_entropy(reference.asarray(host(x)), t_host)
    assert_close(loss, ref_loss, dtype, "loss")
    assert_close(probs, ref_probs, dtype, "probs")


def test_sgd_update_matches_reference_in_place(accelerated, reference, dtype):
    param, grad = _arrays(accelerated, dtype, 0, [(5, 3), (5, 3)])
    expected = reference.asarray(host(param))
    reference.sgd_update(expected, reference.asarray(host(grad)), 0.1)
    same_object = param
    accelerated.sgd_update(param, grad, 0.1)
    assert param is same_object and param.dtype == numpy.dtype(dtype)
    assert_close(param, expected, dtype, "sgd")


def test_array_helpers_round_trip(backend):
    data = numpy.arange(6.0).reshape(2, 3)
    on_device = backend.asarray(data)
    assert isinstance(on_device, backend.xp.ndarray)
    numpy.testing.assert_array_equal(backend.to_numpy(on_device), data)
    assert isinstance(backend.to_numpy(on_device), numpy.ndarray)


def test_rng_is_seeded(backend):
    a = host(backend.rng(3).standard_normal(4))
    b = host(backend.rng(3).standard_normal(4))
    numpy.testing.assert_array_equal(a, b)
