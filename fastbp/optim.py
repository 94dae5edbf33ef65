"""Optimizers with the textbook contract: ``update(params, grads)`` changes ``params`` in place.

The arithmetic is the backend's fused update kernel.  ``update`` checks every
key and shape before it touches anything, so a bad call changes nothing.
"""

from __future__ import annotations

from fastbp.backends import get_backend


class Optimizer:
    def __init__(self, lr):
        if not lr > 0:
            raise ValueError(f"{type(self).__name__}: lr must be > 0, received {lr!r}")
        self.lr = float(lr)

    def update(self, params, grads, backend=None):
        """Update ``params`` in place from ``grads`` (dicts with the same keys and shapes).

        ``backend`` defaults to the current backend; a net's ``train_step``
        passes its own.
        """
        self._check(params, grads)
        backend = get_backend(backend)
        for key in params:
            self._update_one(backend, key, params[key], grads[key])

    def _check(self, params, grads):
        name = f"{type(self).__name__}.update"
        if set(params) != set(grads):
            raise ValueError(f"{name}: params and grads must have the same keys, received "
                             f"params {sorted(params)} and grads {sorted(grads)}")
        for key, param in params.items():
            if grads[key].shape != param.shape:
                raise ValueError(f"{name}: grads[{key!r}] must have shape {tuple(param.shape)}, "
                                 f"received {tuple(grads[key].shape)}")

    def _update_one(self, backend, key, param, grad):
        raise NotImplementedError


class SGD(Optimizer):
    """Plain stochastic gradient descent: ``param -= lr * grad``."""

    def __init__(self, lr=0.01):
        super().__init__(lr)

    def _update_one(self, backend, key, param, grad):
        backend.sgd_update(param, grad, self.lr)
