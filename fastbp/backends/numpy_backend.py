"""The reference backend: every hot path written once against ``self.xp``.

``CupyBackend`` sets ``xp = cupy`` and inherits all of this unchanged;
``NumbaBackend`` overrides the hot paths with compiled kernels.  Every other
backend is tested against the results of this one.

Conventions fixed here: losses are batch means; ``t`` is class indices of
shape ``(N,)`` or one-hot of shape ``(N, C)``; the loss is returned as a 0-d
array of the input's dtype (no host synchronisation on a GPU); every update
is in place.
"""

from __future__ import annotations

import math

import numpy


def adam_step_size(lr, beta1, beta2, step, eps):
    """Adam's bias corrections folded into ``(lr_t, eps_t)`` for ``lr_t * m / (sqrt(v) + eps_t)``.

    PyTorch adds ``eps`` to ``sqrt(v / (1 - beta2**step))``; multiplying through
    by ``sqrt(1 - beta2**step)`` gives the textbook's ``lr_t`` form.
    """
    root = math.sqrt(1 - beta2 ** step)
    return lr * root / (1 - beta1 ** step), eps * root


class NumpyBackend:
    name = "numpy"
    xp = numpy
    device = "cpu"
    gpu = False

    def __reduce__(self):
        """A copied or unpickled backend is the registry's one of that name, not a second one."""
        from fastbp.backends import get_backend

        return get_backend, (self.name,)

    # ----------------------------------------------------------------- arrays
    def asarray(self, x, dtype=None):
        """``x`` as an array of this backend (no copy when it already is one)."""
        return self.xp.asarray(x, dtype=dtype)

    def to_numpy(self, x):
        """``x`` as a host NumPy array."""
        return numpy.asarray(x)

    def rng(self, seed=None):
        """A seeded generator that makes arrays of this backend."""
        return self.xp.random.default_rng(seed)

    def ensure_array(self, x, where: str):
        """Accept ``x`` as this backend's array; refuse arrays living on another device."""
        if type(x) is numpy.ndarray:
            return x
        if hasattr(x, "__cuda_array_interface__"):
            raise TypeError(
                f"{where}: received a GPU array but the {self.name!r} backend works on host "
                "arrays; move it once with fastbp.to_numpy(x)"
            )
        return numpy.asarray(x)

    def label_range(self, t):
        """``(smallest, largest)`` of the non-empty 1-D integer labels ``t``, as Python ints."""
        return int(t.min()), int(t.max())

    def info(self) -> dict:
        """Details reported by ``fastbp info``."""
        return {"device": self.device, "array_module": f"{self.xp.__name__} {self.xp.__version__}"}

    def synchronize(self):
        """Wait for queued work to finish (a no-op on the host)."""

    def all_finite(self, array) -> bool:
        """True when ``array`` holds no NaN or inf (one device synchronisation on a GPU)."""
        return bool(self.xp.isfinite(array).all())

    # ----------------------------------------------------------------- affine
    def affine_forward(self, x, W, b):
        return x @ W + b

    def affine_backward(self, dout, x, W, need_dx=True):
        """Return ``(dx, dW, db)``; ``dx`` is None when ``need_dx`` is false."""
        dx = dout @ W.T if need_dx else None
        return dx, x.T @ dout, dout.sum(axis=0)

    # ------------------------------------------------------------ activations
    def relu_forward(self, x):
        """Return ``(out, mask)``: ``out = max(x, 0)`` keeps NaN (as NumPy and PyTorch do),
        and the mask is ``out`` itself: positive exactly where ``x`` passed, NaN where it was NaN.
        """
        out = self.xp.maximum(x, 0)
        return out, out

    def relu_backward(self, dout, mask):
        """``dout`` where the output was positive, 0 where it was 0, NaN where it was NaN.

        A new array; the caller's ``dout`` is never overwritten.
        """
        return self.xp.where(mask > 0, dout, mask * 0)

    def sigmoid_forward(self, x):
        # exp(-logaddexp(0, -x)) = 1 / (1 + exp(-x)) without overflow for large -x.
        return self.xp.exp(-self.xp.logaddexp(0, -x))

    def sigmoid_backward(self, dout, out):
        return dout * out * (1 - out)

    # ------------------------------------------------ softmax + cross-entropy
    def softmax_cross_entropy(self, x, t):
        """Return ``(loss, probs)``: the batch mean of ``logsumexp(x) - x[t]``.

        Probabilities below the dtype's smallest normal are 0 (``flush_subnormals``).
        """
        xp = self.xp
        shifted = x - x.max(axis=1, keepdims=True)
        log_probs = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        n = x.shape[0]
        if t.ndim == 1:
            picked = log_probs[xp.arange(n), t].sum()
        else:
            picked = (log_probs * t).sum()
        probs = xp.exp(log_probs)
        self.flush_subnormals(probs)
        return -picked / n, probs

    def softmax_cross_entropy_backward(self, probs, t):
        """Gradient of the batch-mean loss: ``(probs - onehot(t)) / N``."""
        n = probs.shape[0]
        if t.ndim == 1:
            dx = probs.copy()
            dx[self.xp.arange(n), t] -= 1
        else:
            dx = probs - t
        dx /= n
        return dx

    # -------------------------------------------------------------- batchnorm
    def batchnorm_forward(self, x, gamma, beta, running_mean, running_var, momentum, eps,
                          train_flg):
        """Return ``(out, xn, inv_std)`` for 2-D ``x``: ``out = gamma * xn + beta``.

        Training normalises by the batch statistics (biased variance) and folds
        them into the running ones in place, ``r = momentum * r + (1 - momentum)
        * batch``; inference normalises by the running statistics.
        """
        if train_flg:
            mean = x.mean(axis=0)
            xc = x - mean
            var = (xc * xc).mean(axis=0)
            running_mean *= momentum
            running_mean += (1 - momentum) * mean
            running_var *= momentum
            running_var += (1 - momentum) * var
        else:
            xc, var = x - running_mean, running_var
        inv_std = 1 / self.xp.sqrt(var + eps)
        xn = xc * inv_std
        return gamma * xn + beta, xn, inv_std

    def batchnorm_backward(self, dout, xn, inv_std, gamma, train_flg):
        """Return ``(dx, dgamma, dbeta)`` of the forward pass that made ``xn`` and ``inv_std``.

        In training the batch statistics depend on ``x``, which gives the
        compact form ``dx = gamma * inv_std * (dout - mean(dout) - xn *
        mean(dout * xn))``; in inference they are constants.
        """
        dbeta = dout.sum(axis=0)
        dgamma = (dout * xn).sum(axis=0)
        if not train_flg:
            return dout * (gamma * inv_std), dgamma, dbeta
        n = dout.shape[0]
        return (gamma * inv_std / n) * (n * dout - dbeta - xn * dgamma), dgamma, dbeta

    # ------------------------------------------------------------- optimizers
    # Hyper-parameters arrive as Python numbers, which keep float32 arrays
    # float32 (a NumPy float64 scalar would promote the temporaries).  State
    # that decays (velocity, h, m, v) is flushed of subnormals after each
    # update, before the parameter reads it: see ``flush_subnormals``.
    def flush_subnormals(self, a):
        """In place: values of ``a`` below its dtype's smallest normal become 0 (NaN stays NaN).

        A state decaying geometrically towards zero sticks at the smallest
        subnormals in round-to-nearest, and arithmetic on subnormals makes
        every later update many times slower.  Every backend applies this
        same rule inside its fused passes; numba's also treat subnormal
        intermediates as zero, with the bounded differences fpmode.py states.
        """
        self.xp.copyto(a, 0, where=abs(a) < numpy.finfo(a.dtype).tiny)

    def sgd_update(self, param, grad, lr):
        """In place: ``param -= lr * grad``."""
        param -= lr * grad

    def momentum_update(self, param, grad, velocity, lr, momentum):
        """In place: ``velocity = momentum * velocity - lr * grad; param += velocity``."""
        velocity *= momentum
        velocity -= lr * grad
        self.flush_subnormals(velocity)
        param += velocity

    def nesterov_update(self, param, grad, velocity, lr, momentum):
        """In place: the momentum step, then ``param += momentum * velocity - lr * grad``.

        PyTorch's Nesterov (``SGD(nesterov=True)``) in the textbook's velocity form.
        """
        step = lr * grad
        velocity *= momentum
        velocity -= step
        self.flush_subnormals(velocity)
        param -= step
        param += momentum * velocity

    def adagrad_update(self, param, grad, h, lr, eps):
        """In place: ``h += grad**2; param -= lr * grad / (sqrt(h) + eps)``."""
        h += grad * grad
        self.flush_subnormals(h)
        self._scaled_step(param, grad, h, lr, eps)

    def rmsprop_update(self, param, grad, h, lr, decay_rate, eps):
        """In place: ``h = decay_rate * h + (1 - decay_rate) * grad**2``, then AdaGrad's step."""
        h *= decay_rate
        h += (1 - decay_rate) * (grad * grad)
        self.flush_subnormals(h)
        self._scaled_step(param, grad, h, lr, eps)

    def adam_update(self, param, grad, m, v, lr, beta1, beta2, step, eps):
        """In place: Adam's moments and bias-corrected step (``adam_step_size``); ``step`` counts from 1."""
        m *= beta1
        m += (1 - beta1) * grad
        v *= beta2
        v += (1 - beta2) * (grad * grad)
        self.flush_subnormals(m)
        self.flush_subnormals(v)
        self._scaled_step(param, m, v, *adam_step_size(lr, beta1, beta2, step, eps))

    def _scaled_step(self, param, direction, second_moment, lr, eps):
        """In place: ``param -= lr * direction / (sqrt(second_moment) + eps)``."""
        denom = self.xp.sqrt(second_moment)
        denom += eps
        param -= lr * direction / denom

    # ------------------------------------------- blocks of the training step
    # ``MultiLayerNet.train_step`` is composed of these; a backend overrides
    # blocks, never the step.  Activations are named "identity", "relu", "sigmoid".
    def gemm(self, a, b, out=None, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
        """``out = alpha * op(a) @ op(b) + beta * out``, in place; a new array when ``out`` is None.

        ``op`` transposes when ``trans_a`` / ``trans_b`` is set.  ``beta = 1``
        lets a weight update ride on the product that makes its gradient.
        """
        product = (a.T if trans_a else a) @ (b.T if trans_b else b)
        if alpha != 1:
            product *= alpha
        if out is None:
            return product
        if beta == 0:
            out[...] = product
        else:
            out *= beta
            out += product
        return out

    def activate(self, x, activation):
        """``activation(x)`` as a new array."""
        if activation == "relu":
            return self.relu_forward(x)[0]
        return self.sigmoid_forward(x) if activation == "sigmoid" else x

    def dense_forward(self, x, W, b, activation):
        """``activation(x @ W + b)``: the product, then bias and activation in one pass."""
        return self.activate(self.affine_forward(x, W, b), activation)

    def softmax_cross_entropy_grad(self, z, b, t):
        """``(loss, dz)`` of the logits ``z + b``: the batch-mean loss and ``(softmax - t) / N``.

        One pass where a backend fuses it; ``dz`` is also the gradient of ``b``'s sum.
        """
        loss, probs = self.softmax_cross_entropy(z + b, t)
        return loss, self.softmax_cross_entropy_backward(probs, t)

    def activation_backward_bias(self, d, a, activation):
        """``(d * activation'(a), its column sums)``: the gradient through an activation whose
        output is ``a``, and the bias gradient of the layer below.  ``d`` may be overwritten.
        """
        if activation == "relu":
            d = self.relu_backward(d, a)
        elif activation == "sigmoid":
            d = self.sigmoid_backward(d, a)
        return d, d.sum(axis=0)

    def apply_velocity(self, param, velocity, decay):
        """In place: ``velocity -= decay * param``, flushed of subnormals, then ``param += velocity``.

        The end of a Momentum step whose product ``velocity = momentum * velocity
        - lr * a.T @ d`` already ran; ``decay`` is ``lr * weight_decay_lambda``.
        """
        if decay:
            velocity -= decay * param
        self.flush_subnormals(velocity)
        param += velocity

    def whole_step(self, x, t, weights, biases, sizes, params, grads, activation, decay, rule,
                   check_finite, batchnorm=None, dropout=None):
        """The whole step of a net as one call, where a backend has one; None means "not
        here", and the net composes the blocks instead.

        The contract is ``train_step``'s: ``weights``/``biases`` are views of the
        flat ``params``, ``sizes`` the layer widths (input first, an int64
        array), gradients go to the flat ``grads``, ``decay`` is the
        weight-decay lambda, ``rule`` is the optimizer's ``flat_rule``;
        ``batchnorm`` is None, or for a BatchNorm after every hidden Affine
        ``(running, momentum, eps)`` with ``running`` the flat running
        statistics (``gamma``/``beta`` follow each hidden ``b`` in ``params``);
        ``dropout`` is None, or for a Dropout after every hidden activation
        ``(generators, ratio, scale, masks)``: each layer's generator, to draw
        from as ``Dropout.forward`` does, the layers' ratio and scale, and one
        flat array to fill with the masks (each layer's ``(batch, width)`` in turn).
        Returns the loss; with ``check_finite`` a NaN or inf in ``x`` or in the
        loss updates nothing (running statistics included) and the loss
        returned is then not finite (the net tells the two apart); a NaN or
        inf in ``x`` is found before any mask is drawn.
        """
        return None
