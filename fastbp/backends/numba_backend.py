"""NumbaBackend: NumPy arrays, compiled kernels for the hot paths, products in one BLAS.

Every matrix product goes through one OpenBLAS (NumPy's own when it can be
reached, see :mod:`fastbp.backends.numba_blas`), never two: two OpenBLAS
thread pools spinning in one step fight over the cores.  The SGD step folds
each weight update into the product that makes its gradient
(``W -= lr * a.T @ d`` is one GEMM with ``beta = 1``) when the optimizer's
rule allows it.

Anything these kernels do not handle (other ranks, integer arrays) falls back
to the reference implementation.
"""

from __future__ import annotations

import math
import os

import numpy as np

try:
    import numba
    import scipy  # noqa: F401  (the products fall back to its BLAS)
except ImportError as exc:  # the registry turns this into an install hint
    raise ImportError(f"the numba backend needs numba and scipy ({exc.name} is missing)") from exc

# OpenMP's threads spin after a parallel loop and land on the cores that the
# BLAS threads need next (a step ran 30x slower); numba's own work queue sleeps.
# A layer the user chose with NUMBA_THREADING_LAYER is kept.
if not os.environ.get("NUMBA_THREADING_LAYER"):
    numba.config.THREADING_LAYER = "workqueue"

from fastbp.backends import numba_blas  # noqa: E402  (after the layer is chosen)
from fastbp.backends.numba_blas import gemm  # noqa: E402
from fastbp.backends.numba_kernels import batchnorm, dense, elementwise, softmax, tiny, updates, whole  # noqa: E402
from fastbp.backends.numpy_backend import NumpyBackend, adam_step_size

_FLOATS = frozenset((np.dtype(np.float32), np.dtype(np.float64)))
_ACTIVATIONS = {"identity": elementwise.IDENTITY, "relu": elementwise.RELU, "sigmoid": elementwise.SIGMOID}
#: multiply-adds per step below which one compiled call with plain loops beats BLAS
TINY_STEP_FLOPS = 1 << 16
#: batch x parameters above which folding the update into the products beats the
#: gradient kernel, per foldable update: SGD folds from 784-50-10, B=100, on; Momentum's
#: fold needs a second pass over W and v, and the kernel beats it by 1.1-1.3x at
#: 784-100-100-10, B=100 to 256, until about 784-256-256-10, B=128
_FOLD_ABOVE = {"sgd_update": 1 << 20, "momentum_update": 1 << 25}
#: flat parameter bytes for which claiming their cache lines before the update pass pays
#: (:func:`~fastbp.backends.numba_kernels.updates.claim_lines`), steps timed interleaved on
#: Zen 4: at 784-100-100-10 (359 and 717 KB) from 2% slower to 6% faster while its two cores
#: traded lines quickly, 5-26% faster while slowly; 0-3 µs lost at 64-100-100-10 (70 and 141
#: KB: mostly one-thread products); 2.5% lost at 784-256-256-10 (1.1 MB, lines traded quickly);
#: with one BLAS thread the lines stay here and the claim cost 2% (float64), so it is skipped
_CLAIM_BYTES = (1 << 18, 1 << 20)


def _floats(*arrays):
    """True when the kernels handle these arrays: one float dtype, 2-D first argument.

    A plain loop: ``all()`` over a generator costs as much as a tiny step's checks.
    """
    dtype = arrays[0].dtype
    if dtype not in _FLOATS or arrays[0].ndim != 2:
        return False
    for a in arrays:
        if a.dtype != dtype:
            return False
    return True


def _contiguous_like(out, a):
    """True when the products may write into ``out``: C-contiguous, of ``a``'s dtype."""
    return out.dtype == a.dtype and out.flags.c_contiguous


#: each fused update by name: its kernel, and its constants from the hyper-parameters,
#: in the order the kernel (and the reference) applies them
_UPDATE_KERNELS = {
    "sgd_update": (updates.sgd, lambda lr: (lr,)),
    "momentum_update": (updates.momentum, lambda lr, momentum: (lr, momentum)),
    "nesterov_update": (updates.nesterov, lambda lr, momentum: (lr, momentum)),
    "adagrad_update": (updates.adagrad, lambda lr, eps: (lr, eps)),
    "rmsprop_update": (updates.rmsprop, lambda lr, decay, eps: (lr, eps, decay, 1 - decay)),
    "adam_update": (updates.adam, lambda lr, beta1, beta2, step, eps: (
        *adam_step_size(lr, beta1, beta2, step, eps), beta1, 1 - beta1, beta2, 1 - beta2)),
    "apply_velocity": (updates.apply_velocity, lambda decay: (decay,)),
}


def _kernel_update(name, hyper, dtype):
    """``(kernel, constants)`` of the fused update ``name`` for arrays of ``dtype``."""
    kernel, constants = _UPDATE_KERNELS[name]
    return kernel, np.array(constants(*hyper), dtype=dtype)


def _fused_update(name, arrays, hyper):
    """Run the fused update ``name`` on flat views of ``arrays`` (param, grad, state...).

    Returns False, changing nothing, when the arrays are not one float dtype
    and C-contiguous (the caller then runs the reference).
    """
    dtype = arrays[0].dtype
    if dtype not in _FLOATS or not all(a.dtype == dtype and a.flags.c_contiguous for a in arrays):
        return False
    kernel, constants = _kernel_update(name, hyper, dtype)
    kernel(*[a.reshape(-1) for a in arrays], constants)
    return True


class NumbaBackend(NumpyBackend):
    name = "numba"

    def __init__(self):
        self._scratches = {}  # (purpose, dtype) -> the gradient kernel's scratch, grown as needed

    def info(self) -> dict:
        cache = os.environ.get("NUMBA_CACHE_DIR") or "(next to the fastbp sources, __pycache__)"
        return {**super().info(), "numba": numba.__version__,
                "threading_layer": numba.config.THREADING_LAYER,
                "threads": numba.get_num_threads(), "cache_dir": cache,
                "blas": f"{numba_blas.LIBRARY}, every product of a step"}

    def label_range(self, t):
        return softmax.label_range(t)  # numba returns Python ints

    def all_finite(self, array) -> bool:
        if array.dtype not in _FLOATS:
            return super().all_finite(array)
        return bool(elementwise.all_finite(array.ravel(order="K")))  # a view unless strided

    # ----------------------------------------------------------------- affine
    def affine_forward(self, x, W, b):
        if not _floats(x, W, b):
            return super().affine_forward(x, W, b)
        return self.dense_forward(x, W, b, "identity")

    def affine_backward(self, dout, x, W, need_dx=True):
        if not _floats(dout, x, W):
            return super().affine_backward(dout, x, W, need_dx)
        dx = self.gemm(dout, W, trans_b=True) if need_dx else None
        return dx, self.gemm(x, dout, trans_a=True), self.activation_backward_bias(
            np.ascontiguousarray(dout), None, "identity")[1]

    # ------------------------------------------------------------ activations
    def relu_forward(self, x):
        """The mask is the output itself: it is positive exactly where ``x`` was."""
        if not _floats(x):
            return super().relu_forward(x)
        out = self._activate(x, elementwise.RELU)
        return out, out

    def relu_backward(self, dout, mask):
        if not _floats(dout, mask) or mask.shape != dout.shape:
            return super().relu_backward(dout, mask)
        return self._activation_grad(dout, mask, elementwise.RELU)

    def sigmoid_forward(self, x):
        return self._activate(x, elementwise.SIGMOID) if _floats(x) else super().sigmoid_forward(x)

    def sigmoid_backward(self, dout, out):
        if not _floats(dout, out) or out.shape != dout.shape:
            return super().sigmoid_backward(dout, out)
        return self._activation_grad(dout, out, elementwise.SIGMOID)

    @staticmethod
    def _activate(x, act):
        out = np.empty(x.shape, dtype=x.dtype)
        dense.act_forward(x, out, act)
        return out

    @staticmethod
    def _activation_grad(dout, a, act):
        dx = np.empty(dout.shape, dtype=dout.dtype)
        dense.act_backward(dout, a, dx, act)
        return dx

    # ------------------------------------------------ softmax + cross-entropy
    def softmax_cross_entropy(self, x, t):
        if not _floats(x):
            return super().softmax_cross_entropy(x, t)
        dtype = x.dtype
        probs = np.empty(x.shape, dtype=dtype)
        return dtype.type(softmax.softmax_xent(x, np.zeros(x.shape[1], dtype), t, probs, 0.0)), probs

    def softmax_cross_entropy_backward(self, probs, t):
        if not _floats(probs):
            return super().softmax_cross_entropy_backward(probs, t)
        dtype = probs.dtype
        dx = np.empty(probs.shape, dtype=dtype)
        softmax.softmax_xent_backward(probs, t, dx, 1.0 / probs.shape[0])
        return dx

    # -------------------------------------------------------------- batchnorm
    def batchnorm_forward(self, x, gamma, beta, running_mean, running_var, momentum, eps,
                          train_flg):
        if not _floats(x, gamma, beta, running_mean, running_var):
            return super().batchnorm_forward(x, gamma, beta, running_mean, running_var, momentum,
                                             eps, train_flg)
        out, xn = np.empty(x.shape, dtype=x.dtype), np.empty(x.shape, dtype=x.dtype)
        inv_std = np.empty(x.shape[1], dtype=x.dtype)
        batchnorm.batchnorm_forward(x, gamma, beta, running_mean, running_var, float(momentum),
                                    float(eps), bool(train_flg), out, xn, inv_std)
        return out, xn, inv_std

    def batchnorm_backward(self, dout, xn, inv_std, gamma, train_flg):
        if not _floats(dout, xn, inv_std, gamma):
            return super().batchnorm_backward(dout, xn, inv_std, gamma, train_flg)
        dx = np.empty(dout.shape, dtype=dout.dtype)
        dgamma, dbeta = (np.empty(dout.shape[1], dtype=dout.dtype) for _ in range(2))
        batchnorm.batchnorm_backward(dout, xn, inv_std, gamma, bool(train_flg), dx, dgamma, dbeta)
        return dx, dgamma, dbeta

    # ------------------------------------------------------------- optimizers
    # Each runs the fused kernel when it can, else the reference.
    def sgd_update(self, param, grad, lr):
        if not _fused_update("sgd_update", (param, grad), (lr,)):
            super().sgd_update(param, grad, lr)

    def momentum_update(self, param, grad, velocity, lr, momentum):
        if not _fused_update("momentum_update", (param, grad, velocity), (lr, momentum)):
            super().momentum_update(param, grad, velocity, lr, momentum)

    def nesterov_update(self, param, grad, velocity, lr, momentum):
        if not _fused_update("nesterov_update", (param, grad, velocity), (lr, momentum)):
            super().nesterov_update(param, grad, velocity, lr, momentum)

    def adagrad_update(self, param, grad, h, lr, eps):
        if not _fused_update("adagrad_update", (param, grad, h), (lr, eps)):
            super().adagrad_update(param, grad, h, lr, eps)

    def rmsprop_update(self, param, grad, h, lr, decay_rate, eps):
        if not _fused_update("rmsprop_update", (param, grad, h), (lr, decay_rate, eps)):
            super().rmsprop_update(param, grad, h, lr, decay_rate, eps)

    def adam_update(self, param, grad, m, v, lr, beta1, beta2, step, eps):
        if not _fused_update("adam_update", (param, grad, m, v), (lr, beta1, beta2, step, eps)):
            super().adam_update(param, grad, m, v, lr, beta1, beta2, step, eps)

    # ------------------------------------------- blocks of the training step
    def gemm(self, a, b, out=None, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
        if not (_floats(a, b) and b.ndim == 2 and (out is None or _contiguous_like(out, a))):
            return super().gemm(a, b, out, trans_a, trans_b, alpha, beta)
        a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
        if out is None:  # with beta = 0 BLAS never reads the empty array
            shape = (a.shape[1] if trans_a else a.shape[0], b.shape[0] if trans_b else b.shape[1])
            out, beta = np.empty(shape, dtype=a.dtype), 0.0
        return gemm(a, b, out, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta)

    def activate(self, x, activation):
        if activation == "identity" or not _floats(x):
            return super().activate(x, activation)
        return self._activate(x, _ACTIVATIONS[activation])

    def dense_forward(self, x, W, b, activation):
        if not _floats(x, W, b):
            return super().dense_forward(x, W, b, activation)
        out = self.gemm(x, W)
        dense.bias_act_forward(out, b, _ACTIVATIONS[activation])
        return out

    def softmax_cross_entropy_grad(self, z, b, t):
        if not _floats(z, b):
            return super().softmax_cross_entropy_grad(z, b, t)
        d = np.empty(z.shape, dtype=z.dtype)
        return z.dtype.type(softmax.softmax_xent(z, b, t, d, 1.0 / z.shape[0])), d

    def activation_backward_bias(self, d, a, activation):
        if not (_floats(d) and d.flags.writeable and (a is None or a.shape == d.shape)):
            return super().activation_backward_bias(d, a, activation)
        return d, dense.act_backward_col_sums(d, d if a is None else a, _ACTIVATIONS[activation])

    def apply_velocity(self, param, velocity, decay):
        if not _fused_update("apply_velocity", (param, velocity), (decay,)):
            super().apply_velocity(param, velocity, decay)

    def whole_step(self, x, t, weights, biases, sizes, params, grads, activation, decay, rule,
                   check_finite, batchnorm=None, dropout=None):
        """Compiled calls where they pay: the tiny-net SGD kernel, or the gradient kernel
        (:mod:`~fastbp.backends.numba_kernels.whole`) and one fused update pass, for small
        nets, BatchNorm and dropout nets and the updates that cannot fold into a product."""
        name, hyper, state = rule
        if name == "sgd_update" and not decay and batchnorm is None and dropout is None:
            loss = self._tiny_sgd_step(x, t, weights, biases, params, activation, hyper[0],
                                       check_finite)
            if loss is not None:
                return loss
        if not (numba_blas.IN_NUMBA and _floats(x, params) and x.flags.c_contiguous):
            return None
        if batchnorm is None and x.shape[0] * params.size > _FOLD_ABOVE.get(name, math.inf):
            return None  # the step's own path folds this update into the products
        running, momentum, eps = batchnorm or (None, 0.0, 0.0)
        uniforms, ratio, scale, masks = None, 0.0, 1.0, None
        if dropout is not None:
            if check_finite and not self.all_finite(x):
                return x.dtype.type(math.nan)  # refused before drawing, as the layered step
            generators, ratio, scale, masks = dropout
            uniforms = self._draws(generators, x.shape[0], sizes[1:-1].tolist())
        kernel, constants = _kernel_update(name, hyper, x.dtype)
        work = self._scratch(x.dtype, whole.work_size(x.shape[0], sizes, batchnorm is not None,
                                                      dropout is not None))
        loss = x.dtype.type(whole.mlp_gradient(
            x, t, sizes, params, grads, _ACTIVATIONS[activation], float(decay), work,
            check_finite, running, float(momentum), float(eps), uniforms, float(ratio),
            float(scale), masks))
        if not check_finite or math.isfinite(loss):
            if _CLAIM_BYTES[0] <= params.nbytes <= _CLAIM_BYTES[1] and numba_blas.threads() != 1:
                bits = np.dtype(f"i{params.itemsize}").type  # the integers of the floats' width
                updates.claim_lines(params.view(bits), bits(0))
            kernel(params, grads, *state, constants)
        return loss

    def _scratch(self, dtype, size, purpose="work"):
        """At least ``size`` elements of ``dtype``, the same memory step after step."""
        held = self._scratches.get((purpose, dtype))
        if held is None or held.size < size:
            held = self._scratches[(purpose, dtype)] = np.empty(size, dtype=dtype)
        return held

    def _draws(self, generators, batch, widths):
        """Each dropout layer's uniform draws for ``batch`` samples, layer after layer: what
        ``Dropout.forward`` draws (``rng.random((batch, width))``), from the same generators."""
        size = batch * sum(widths)
        uniforms, at = self._scratch(np.float64, size, "uniforms")[:size], 0
        for generator, width in zip(generators, widths):
            generator.random(out=uniforms[at:at + batch * width])
            at += batch * width
        return uniforms

    @staticmethod
    def _tiny_sgd_step(x, t, weights, biases, params, activation, lr, check_finite):
        # decided with the fewest checks: the whole step takes ~6 µs (the weights and
        # biases are views of params, so one dtype check covers them)
        if (len(weights) == 2 and t.ndim == 1 and _floats(x, params) and x.flags.c_contiguous
                and x.shape[0] * (weights[0].size + weights[1].size) <= TINY_STEP_FLOPS):
            (W1, W2), (b1, b2) = weights, biases
            return x.dtype.type(tiny.tiny_mlp_sgd_step(x, t, W1, b1, W2, b2, _ACTIVATIONS[activation],
                                                       float(lr), 1.0 / x.shape[0], check_finite))
        return None
