"""``@njit`` kernels for the numba backend: the element-wise and row-wise work around BLAS.

One module per job; each kernel is imported from the module that defines it
(this package re-exports nothing, and only :mod:`fastbp.backends.numba_backend`
imports it, so ``import fastbp`` never loads numba):

- :mod:`.elementwise`: the per-element helpers several jobs share (activations,
  their gradients, the subnormal flush) and the activation codes;
- :mod:`.dense`: a dense layer's bias + activation forward, the activation
  backward, column sums (bias gradients);
- :mod:`.softmax`: softmax + cross-entropy and its gradient, the label range;
- :mod:`.batchnorm`: BatchNorm forward (statistics and running averages) and backward;
- :mod:`.updates`: the fused optimizer updates, one kernel per rule;
- :mod:`.fpmode`: flush-to-zero / denormals-are-zero around fastbp's own passes;
- :mod:`.tiny`: a whole SGD step of a tiny net as one compiled call;
- :mod:`.whole`: the forward and backward pass of any net without dropout as
  one compiled call, BLAS called from inside it.

Conventions every kernel keeps, so results equal the NumPy reference:

- Scalars arrive as Python numbers and each kernel casts them to its
  arrays' dtype (``x.dtype.type(v)``): a float64 scalar would promote
  float32 arithmetic inside numba, and NumPy scalar arguments take the
  dispatcher twice as long as Python floats.  The update kernels take their
  constants as one array already in that dtype, in the reference's order.
- ``error_model="numpy"``: division by zero gives inf/nan as in NumPy instead
  of a Python exception, whose check kept loops with a division from
  vectorising (the optimizer updates ran 8x slower).
- Reductions across rows are plain loops in a fixed order, so no result
  depends on the number of threads.
- Only the softmax + cross-entropy pass runs in parallel (see :mod:`.softmax`).

Every kernel is ``cache=True``.  Numba checks a cached kernel against its own
file only: after editing a helper in :mod:`.elementwise`, delete the cache
(``__pycache__/*.nbi``, ``*.nbc`` here, or ``NUMBA_CACHE_DIR``) or kernels in
the other modules keep the old helper compiled in.
"""
