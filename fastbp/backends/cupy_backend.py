"""CupyBackend: the reference code on an NVIDIA GPU (``xp = cupy``), with fused kernels.

Everything generic is inherited from ``NumpyBackend``; this module overrides
only what a fused CUDA kernel does in fewer passes over device memory.
Kernels compile lazily on first use and CuPy caches them per dtype.  Matrix
products stay in cuBLAS; TF32 stays off unless the user sets ``CUPY_TF32=1``.

Arrays never cross the host/device boundary silently: a NumPy array handed to
this backend is an error that says how to move it once (``fastbp.to_device``).
"""

from __future__ import annotations

import numpy

try:
    import cupy
except ImportError as exc:  # the registry turns this into an install hint
    raise ImportError("CuPy is not installed") from exc

from fastbp.backends import BackendUnavailableError
from fastbp.backends.numpy_backend import NumpyBackend, adam_step_size


def _visible_devices() -> int:
    try:
        return cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError:
        return 0


if _visible_devices() == 0:
    raise BackendUnavailableError(
        "fastbp: backend 'cupy' is not available: CuPy is installed but no CUDA device is "
        "visible (check the NVIDIA driver, nvidia-smi and CUDA_VISIBLE_DEVICES)"
    )

# Each activation as an expression of its input ``v``, and its backward as an
# expression of the upstream gradient ``dout`` and the activation's output ``y``.
_ACT_FORWARD = {
    "identity": "v",
    "relu": "v <= (T)0 ? (T)0 : v",  # max(v, 0) with NaN kept, as NumPy's maximum
    "sigmoid": "v >= 0 ? (T)1 / ((T)1 + exp(-v)) : exp(v) / ((T)1 + exp(v))",
}
# ReLU gives NaN where its output was NaN (``y * 0``), as the reference does.
_ACT_BACKWARD = {"relu": "y > (T)0 ? dout : y * (T)0", "sigmoid": "dout * y * ((T)1 - y)"}

_bias_act = {name: cupy.ElementwiseKernel("T b", "T z", f"T v = z + b; z = {expr}",
                                          f"fastbp_bias_{name}")
             for name, expr in _ACT_FORWARD.items()}
_act_forward = {name: cupy.ElementwiseKernel("T v", "T y", f"y = {expr}", f"fastbp_{name}")
                for name, expr in _ACT_FORWARD.items()}
_act_backward = {name: cupy.ElementwiseKernel("T dout, T y", "T d", f"d = {expr}",
                                              f"fastbp_{name}_backward")
                 for name, expr in _ACT_BACKWARD.items()}
_sgd = cupy.ElementwiseKernel("T grad, T lr", "T param", "param -= lr * grad", "fastbp_sgd")
# One kernel per parameter and optimizer, in the reference's order of operations;
# ``FLUSH(s)`` zeroes a state value below the smallest normal ``tiny`` (NaN stays NaN).
_FLUSH = "#define FLUSH(s) s = fabs(s) < tiny ? (T)0 : s\n"
_UPDATES = {
    name: cupy.ElementwiseKernel(inputs + ", T tiny", outputs, body, f"fastbp_{name}",
                                 preamble=_FLUSH)
    for name, inputs, outputs, body in [
        ("momentum", "T grad, T lr, T mu", "T param, T v",
         "v = v * mu - lr * grad; FLUSH(v); param += v"),
        ("nesterov", "T grad, T lr, T mu", "T param, T v",
         "T step = lr * grad; v = v * mu - step; FLUSH(v); param = param - step + mu * v"),
        ("adagrad", "T grad, T lr, T eps", "T param, T h",
         "h += grad * grad; FLUSH(h); param -= lr * grad / (sqrt(h) + eps)"),
        ("rmsprop", "T grad, T lr, T eps, T decay, T keep", "T param, T h",
         "h = h * decay + keep * (grad * grad); FLUSH(h); param -= lr * grad / (sqrt(h) + eps)"),
        ("adam", "T grad, T lr, T eps, T beta1, T keep1, T beta2, T keep2", "T param, T m, T v",
         "m = m * beta1 + keep1 * grad; v = v * beta2 + keep2 * (grad * grad); FLUSH(m); "
         "FLUSH(v); param -= lr * m / (sqrt(v) + eps)"),
    ]
}

# One thread per row: logits of a row are few (the classes), and the loss and
# its gradient come out of the same pass over them.
_SOFTMAX_XENT_SOURCE = r"""
template<typename T> __device__ T smallest_normal();
template<> __device__ float smallest_normal<float>() { return 1.17549435e-38f; }
template<> __device__ double smallest_normal<double>() { return 2.2250738585072014e-308; }

// Probabilities below the smallest normal are 0, as in the reference.
template<typename T>
__device__ T softmax_row(const T* z, const T* b, long long i, int c, T* out, T* shift) {
    const T* zi = z + i * c;
    T* oi = out + i * c;
    T m = zi[0] + b[0];
    for (int j = 1; j < c; ++j) m = max(m, zi[j] + b[j]);
    T s = 0;
    for (int j = 0; j < c; ++j) { T e = exp(zi[j] + b[j] - m); oi[j] = e; s += e; }
    for (int j = 0; j < c; ++j) {
        T p = oi[j] / s;
        oi[j] = p < smallest_normal<T>() ? (T)0 : p;
    }
    *shift = m;
    return log(s);
}

template<typename T>
__global__ void xent_index(const T* z, const T* b, const long long* t, T* out, T* losses,
                           T scale, long long n, int c) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    T m;
    T lse = softmax_row(z, b, i, c, out, &m);
    long long k = t[i];
    losses[i] = lse - (z[i * c + k] + b[k] - m);
    if (scale != (T)0) {
        out[i * c + k] -= (T)1;
        for (int j = 0; j < c; ++j) out[i * c + j] *= scale;
    }
}

template<typename T>
__global__ void xent_onehot(const T* z, const T* b, const T* t, T* out, T* losses,
                            T scale, long long n, int c) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    T m;
    T lse = softmax_row(z, b, i, c, out, &m);
    T loss = 0;
    for (int j = 0; j < c; ++j) {
        T tj = t[i * c + j];
        loss += tj * (lse - (z[i * c + j] + b[j] - m));
        if (scale != (T)0) out[i * c + j] = (out[i * c + j] - tj) * scale;
    }
    losses[i] = loss;
}
"""
_KERNEL_NAMES = [f"xent_{kind}<{ctype}>" for kind in ("index", "onehot")
                 for ctype in ("float", "double")]
_CTYPES = {numpy.dtype(numpy.float32): "float", numpy.dtype(numpy.float64): "double"}
_module = None
_THREADS = 128


def _softmax_xent(z, b, t, scale):
    """Launch the fused kernel; returns ``(summed loss as a 0-d array, out)``."""
    global _module
    if _module is None:
        _module = cupy.RawModule(code=_SOFTMAX_XENT_SOURCE, options=("-std=c++14",),
                                 name_expressions=_KERNEL_NAMES)
    n, c = z.shape
    kind = "index" if t.ndim == 1 else "onehot"
    kernel = _module.get_function(f"xent_{kind}<{_CTYPES[z.dtype]}>")
    z = cupy.ascontiguousarray(z)
    t = cupy.ascontiguousarray(t.astype(cupy.int64 if kind == "index" else z.dtype, copy=False))
    out = cupy.empty_like(z)
    losses = cupy.empty(n, dtype=z.dtype)
    kernel(((n + _THREADS - 1) // _THREADS,), (_THREADS,),
           (z, cupy.ascontiguousarray(b), t, out, losses, z.dtype.type(scale), numpy.int64(n),
            numpy.int32(c)))
    return losses.sum(), out


def _typed(array, *scalars):
    """Python numbers as scalars of ``array``'s dtype (kernel arguments must match ``T``),
    then the dtype's smallest normal, the last argument of every update kernel."""
    return [array.dtype.type(s) for s in (*scalars, numpy.finfo(array.dtype).tiny)]


class CupyBackend(NumpyBackend):
    name = "cupy"
    xp = cupy
    device = "cuda:0"
    gpu = True

    # ----------------------------------------------------------------- arrays
    def to_numpy(self, x):
        return cupy.asnumpy(x)

    def ensure_array(self, x, where: str):
        if isinstance(x, cupy.ndarray):
            return x
        if isinstance(x, numpy.ndarray):
            raise TypeError(
                f"{where}: received a NumPy array but the 'cupy' backend works on GPU arrays; "
                "move the data to the GPU once with fastbp.to_device(x) (a copy per call "
                "would be slow)"
            )
        return cupy.asarray(x)

    def info(self) -> dict:
        device = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(device.id)
        free, total = device.mem_info
        name = props["name"]
        return {**super().info(), "device": f"cuda:{device.id}",
                "gpu": name.decode() if isinstance(name, bytes) else name,
                "memory": f"{total / 2**30:.1f} GiB ({free / 2**30:.1f} GiB free)",
                "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion()}

    def synchronize(self):
        cupy.cuda.get_current_stream().synchronize()

    # ----------------------------------------------------------------- affine
    def affine_forward(self, x, W, b):
        out = x @ W
        _bias_act["identity"](b, out)
        return out

    # ------------------------------------------------------------ activations
    def relu_forward(self, x):
        """The mask is the output itself: it is positive exactly where ``x`` was."""
        out = _act_forward["relu"](x)
        return out, out

    def relu_backward(self, dout, mask):
        return _act_backward["relu"](dout, mask)

    def sigmoid_forward(self, x):
        return _act_forward["sigmoid"](x)

    def sigmoid_backward(self, dout, out):
        return _act_backward["sigmoid"](dout, out)

    # ------------------------------------------------ softmax + cross-entropy
    def softmax_cross_entropy(self, x, t):
        total, probs = _softmax_xent(x, cupy.zeros(x.shape[1], x.dtype), t, 0)
        return total / x.dtype.type(x.shape[0]), probs

    # ------------------------------------------------------------- optimizers
    def sgd_update(self, param, grad, lr):
        _sgd(grad, param.dtype.type(lr), param)

    def momentum_update(self, param, grad, velocity, lr, momentum):
        _UPDATES["momentum"](grad, *_typed(param, lr, momentum), param, velocity)

    def nesterov_update(self, param, grad, velocity, lr, momentum):
        _UPDATES["nesterov"](grad, *_typed(param, lr, momentum), param, velocity)

    def adagrad_update(self, param, grad, h, lr, eps):
        _UPDATES["adagrad"](grad, *_typed(param, lr, eps), param, h)

    def rmsprop_update(self, param, grad, h, lr, decay_rate, eps):
        _UPDATES["rmsprop"](grad, *_typed(param, lr, eps, decay_rate, 1 - decay_rate), param, h)

    def adam_update(self, param, grad, m, v, lr, beta1, beta2, step, eps):
        constants = (*adam_step_size(lr, beta1, beta2, step, eps), beta1, 1 - beta1, beta2,
                     1 - beta2)
        _UPDATES["adam"](grad, *_typed(param, *constants), param, m, v)

    # ------------------------------------------- blocks of the training step
    def dense_forward(self, x, W, b, activation):
        """The product in cuBLAS, then bias and activation in one kernel."""
        out = x @ W
        _bias_act[activation](b, out)
        return out

    def softmax_cross_entropy_grad(self, z, b, t):
        total, d = _softmax_xent(z, b, t, 1.0 / z.shape[0])
        return total / z.dtype.type(z.shape[0]), d

    def activation_backward_bias(self, d, a, activation):
        if activation != "identity":
            d = _act_backward[activation](d, a)
        return d, d.sum(axis=0)
