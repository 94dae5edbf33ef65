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

import numpy


class NumpyBackend:
    name = "numpy"
    xp = numpy
    device = "cpu"
    #: capability flags: what this backend accelerates beyond the reference.
    compiled_kernels = False
    gpu = False

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
        if hasattr(x, "__cuda_array_interface__"):
            raise TypeError(
                f"{where}: received a GPU array but the {self.name!r} backend works on host "
                "arrays; move it once with fastbp.to_numpy(x)"
            )
        return numpy.asarray(x)

    def label_range(self, t):
        """``(smallest, largest)`` class index in ``t``, as Python ints (validation)."""
        return int(t.min()), int(t.max())

    def info(self) -> dict:
        """Details reported by ``fastbp info``."""
        return {"device": self.device, "array_module": f"{self.xp.__name__} {self.xp.__version__}"}

    def synchronize(self):
        """Wait for queued work to finish (a no-op on the host)."""

    # ----------------------------------------------------------------- affine
    def affine_forward(self, x, W, b):
        return x @ W + b

    def affine_backward(self, dout, x, W, need_dx=True):
        """Return ``(dx, dW, db)``; ``dx`` is None when ``need_dx`` is false."""
        dx = dout @ W.T if need_dx else None
        return dx, x.T @ dout, dout.sum(axis=0)

    # ------------------------------------------------------------ activations
    def relu_forward(self, x):
        """Return ``(out, mask)`` where ``mask`` marks the inputs that passed."""
        mask = x > 0
        return self.xp.where(mask, x, 0), mask

    def relu_backward(self, dout, mask):
        """A new array; the caller's ``dout`` is never overwritten."""
        return self.xp.where(mask, dout, 0)

    def sigmoid_forward(self, x):
        # exp(-logaddexp(0, -x)) = 1 / (1 + exp(-x)) without overflow for large -x.
        return self.xp.exp(-self.xp.logaddexp(0, -x))

    def sigmoid_backward(self, dout, out):
        return dout * out * (1 - out)

    # ------------------------------------------------ softmax + cross-entropy
    def softmax_cross_entropy(self, x, t):
        """Return ``(loss, probs)``: the batch mean of ``logsumexp(x) - x[t]``."""
        xp = self.xp
        shifted = x - x.max(axis=1, keepdims=True)
        log_probs = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        n = x.shape[0]
        if t.ndim == 1:
            picked = log_probs[xp.arange(n), t].sum()
        else:
            picked = (log_probs * t).sum()
        return -picked / n, xp.exp(log_probs)

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

    # ------------------------------------------------------------- optimizers
    def sgd_update(self, param, grad, lr):
        """In place: ``param -= lr * grad``."""
        param -= lr * grad

    # ------------------------------------------------------- the whole step
    def mlp_sgd_step(self, x, t, weights, biases, activation, lr):
        """One SGD step of Affine-activation-...-Affine-softmax, in place; returns the loss.

        The pure-array form of ``train_step`` for plain nets with plain SGD, so a
        backend can fuse the whole step.  The reference composes the hot paths
        and skips the input gradient of the first layer.
        """
        relu = activation == "relu"
        acts, caches = [x], []
        for i, (W, b) in enumerate(zip(weights, biases)):
            z = self.affine_forward(acts[-1], W, b)
            if i < len(weights) - 1:
                z, cache = self.relu_forward(z) if relu else (self.sigmoid_forward(z),) * 2
                caches.append(cache)
            acts.append(z)
        loss, probs = self.softmax_cross_entropy(acts.pop(), t)
        d = self.softmax_cross_entropy_backward(probs, t)
        for i in reversed(range(len(weights))):
            d_below, dW, db = self.affine_backward(d, acts[i], weights[i], need_dx=i > 0)
            self.sgd_update(weights[i], dW, lr)
            self.sgd_update(biases[i], db, lr)
            if i:
                backward = self.relu_backward if relu else self.sigmoid_backward
                d = backward(d_below, caches[i - 1])
        return loss
