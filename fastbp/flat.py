"""Named arrays that are views of one flat buffer: a net's params, buffers and gradients.

One contiguous buffer lets an optimizer update a whole net in one fused pass
and a data-parallel step average every gradient with one message.  The names
keep the textbook's ``params["W1"]``.  The set of names and each shape are
fixed by the architecture, and assigning to a name copies into the existing
array (cast to its dtype, moved to its device, shape checked first), so the
layers, the training step, the optimizer's state and the checkpoints all keep
seeing the same memory.
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping

import numpy


class FlatArrays(MutableMapping):
    """``{name: array}`` over one 1-D buffer ``flat`` of ``backend``; ``owner`` names it in errors."""

    def __init__(self, owner, backend, dtype, shapes):
        self.owner, self.backend = owner, backend
        self._shapes = {key: tuple(shape) for key, shape in shapes.items()}
        #: the names in order, as a tuple (iterating it is faster than the mapping)
        self.names = tuple(self._shapes)
        self.flat = backend.xp.zeros(sum(math.prod(s) for s in self._shapes.values()), dtype=dtype)
        self._arrays = self.views_of(self.flat)

    def views_of(self, flat) -> dict:
        """``{name: view}`` of another buffer laid out like ``self.flat`` (optimizer state)."""
        views, start = {}, 0
        for key, shape in self._shapes.items():
            size = math.prod(shape)
            views[key] = flat[start:start + size].reshape(shape)
            start += size
        return views

    def __getstate__(self):
        """Copies and pickles hold the buffer; the views are made again from it (a copied view
        would be an array of its own, and assignments to it would miss the buffer)."""
        state = self.__dict__.copy()
        del state["_arrays"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._arrays = self.views_of(self.flat)

    def zeros_like(self, owner) -> FlatArrays:
        """A new set with the same names and shapes, all zero."""
        return FlatArrays(owner, self.backend, self.flat.dtype, self._shapes)

    def __getitem__(self, key):
        return self._arrays[key]

    def __setitem__(self, key, value):
        self._arrays[key][...] = self._checked(key, value)

    def update(self, other=(), **more):
        """Assign several arrays, all checked before any is copied: a refused one changes none."""
        values = dict(other, **more)
        checked = {key: self._checked(key, value) for key, value in values.items()}
        for key, value in checked.items():
            self._arrays[key][...] = value

    def _checked(self, key, value):
        """``value`` for ``self[key]``, in the buffer's dtype on its device, or a ValueError."""
        if key not in self._arrays:
            raise ValueError(f"{self.owner}: no array {key!r} to assign to; the names are fixed "
                             f"by the architecture: {list(self._arrays)}")
        target = self._arrays[key]
        value = self.backend.asarray(value)
        if value.dtype.kind not in "fiub":
            raise ValueError(f"{self.owner}[{key!r}]: expected real numbers, received dtype "
                             f"{value.dtype}; nothing was changed")
        if value.shape != target.shape:
            raise ValueError(f"{self.owner}[{key!r}]: expected shape {tuple(target.shape)}, "
                             f"received {tuple(value.shape)}; nothing was changed")
        xp = self.backend.xp
        with numpy.errstate(over="ignore"):  # an overflow is named below, not warned about
            cast = value.astype(target.dtype)
        if bool((xp.isinf(cast) & ~xp.isinf(value)).any()):
            raise ValueError(f"{self.owner}[{key!r}]: values beyond the range of "
                             f"{target.dtype} (largest {float(xp.abs(value).max()):.3g}) would "
                             f"become inf; nothing was changed")
        return cast

    def __delitem__(self, key):
        raise ValueError(f"{self.owner}: {key!r} cannot be removed (the architecture fixes "
                         f"{list(self._arrays)})")

    def __iter__(self):
        return iter(self._arrays)

    def __len__(self):
        return len(self._arrays)

    def __repr__(self):
        shapes = ", ".join(f"{k!r}: {s}" for k, s in self._shapes.items())
        return f"{self.owner}({{{shapes}}}, dtype={self.flat.dtype})"
