"""Flush-to-zero and denormals-are-zero for fastbp's own passes, never around BLAS.

A value below the dtype's smallest normal (a subnormal) makes x86 cores take a
slow microcode path on every operation that reads or produces it: an Adam
update whose moments decay through the subnormal range, or whose gradients
are tiny enough that their squares are, ran 20-26x slower here.  The fused
passes already store no subnormals (see ``_flushed``), but their
intermediates (``beta1 * m``, ``grad * grad``) still are.  ``flush_on`` sets
the FTZ and DAZ bits of the MXCSR register, which make the hardware treat
subnormals as zero, and returns the previous register for ``restore``; a
kernel calls the pair around its own loops only, so neither BLAS nor the
user's code runs in the changed mode.  On other processors, and under
``NUMBA_DISABLE_JIT``, both are no-ops.

The reference computes with subnormals and flushes only the state it
stores, so where a subnormal number takes part in an update (a parameter,
a gradient or an intermediate) the two differ: the state by a few ``tiny``
(the dtype's smallest normal), and a step by what was flushed, at most a
few ``tiny``, magnified by a division by ``sqrt(state) + eps`` up to
``1 / eps``, and by a relative ``sqrt(tiny) / eps`` when that state is
within a few ``tiny`` of zero on one side and not the other.  The
optimizers refuse an ``eps`` below ``sqrt(tiny)`` (``Optimizer._check_range``),
so the first stays below ``sqrt(tiny)``; the second is below rounding for
``eps`` above about 1e-12 in float32 and 1e-138 in float64.  Elsewhere the
results are the reference's exactly (tests/test_subnormals.py checks both).
"""

from __future__ import annotations

import platform

import numba
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

#: MXCSR's flush-to-zero (bit 15) and denormals-are-zero (bit 6)
FTZ_DAZ = 0x8040
#: the register can be set: an x86 processor, and compiled code (not NUMBA_DISABLE_JIT)
X86 = (platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
       and not numba.config.DISABLE_JIT)


def _mxcsr_call(builder, name, pointer):
    fnty = ir.FunctionType(ir.VoidType(), [ir.PointerType(ir.IntType(8))])
    fn = cgutils.get_or_insert_function(builder.module, fnty, name)
    builder.call(fn, [builder.bitcast(pointer, ir.PointerType(ir.IntType(8)))])


@intrinsic
def _read_mxcsr(typingctx):
    def codegen(context, builder, signature, args):
        slot = cgutils.alloca_once(builder, ir.IntType(32))
        _mxcsr_call(builder, "llvm.x86.sse.stmxcsr", slot)
        return builder.load(slot)

    return types.uint32(), codegen


@intrinsic
def _write_mxcsr(typingctx, value):
    def codegen(context, builder, signature, args):
        slot = cgutils.alloca_once(builder, ir.IntType(32))
        builder.store(context.cast(builder, args[0], signature.args[0], types.uint32), slot)
        _mxcsr_call(builder, "llvm.x86.sse.ldmxcsr", slot)
        return context.get_dummy_value()

    return types.void(value), codegen


if X86:
    @njit(cache=True)
    def flush_on():
        """Set FTZ and DAZ; returns the register as it was."""
        previous = _read_mxcsr()
        _write_mxcsr(previous | FTZ_DAZ)
        return previous

    @njit(cache=True)
    def restore(previous):
        """Put the register back as ``flush_on`` found it."""
        _write_mxcsr(previous)

    @njit(cache=True)
    def read():
        """The MXCSR register now (for tests)."""
        return _read_mxcsr()
else:
    @njit(cache=True)
    def flush_on():
        return 0

    @njit(cache=True)
    def restore(previous):
        pass

    @njit(cache=True)
    def read():
        return 0
