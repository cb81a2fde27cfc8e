#!/usr/bin/env python3
"""Compile every fused kernel (``cnn_cifar.nn.kernels``, ``cnn_cifar.optim.kernels``) with NVRTC, as CuPy would,
on a machine without a GPU.

    uv venv /tmp/cupyvenv --python 3.11
    uv pip install --python /tmp/cupyvenv/bin/python numpy cupy-cuda12x nvidia-cuda-nvrtc-cu12 nvidia-cuda-runtime-cu12
    /tmp/cupyvenv/bin/python tools/compile_kernels.py [--dump]   # from the repository root; --dump: failed sources

What it checks: each kernel, in float32 and float64 (and float16 for the three that see it under autocast),
for each way the library calls it (a gate array or the scalar 1.0, ``ok`` a Python bool or a 0-d device
bool, with a residual or not, ...), with 32-bit and with 64-bit indexing (arrays past 2 GiB). The CUDA source
is CuPy's own: its code generators (``_kernel._get_elementwise_kernel_code``,
``_reduction._ReductionKernel_get_cached_function_code``) given the parameter types from
``_decide_params_type``, behind CuPy's headers, compiled by NVRTC with CuPy's options
(``core.assemble_cupy_compiler_options``, ``-ftz=true``, ``--device-as-default-execution-space``) for sm_90
(H100/H200), as ``core.compile_with_cache`` does minus its device queries, disk cache and module load. One
line per kernel, call, dtype and index width, NVRTC's log on failure; exit status 1 if any failed (or if
kernels.py declares a kernel that ``calls()`` below does not call: add it there).

What it reproduces rather than calls: the kernel type of each argument (``CArray<T, ndim, c_contiguous,
32-bit>``, scalar or ``CIndexer``) comes from the launch arrays, in Cython functions that need a device
(broadcasting, ``_reduce_dims``, the reduction's axis permutation). ``broadcast``, ``reduce_dims`` and
``reduction_source`` redo those steps in Python (from cupy/_core/_kernel.pyx and _reduction.pyx of CuPy 14)
on metadata-only stand-ins with the shapes and views of the call sites (nn/norm_device.py, nn/conv_device.py,
nn/activation.py, optim/optimizers.py). No reduction here can take CuPy's CUB path (one input and one output
only). It compiles; it does not run: wrong results, races or out-of-bounds indexing need a GPU
(benchmarks/gpu_check.py).
"""
from __future__ import annotations

import sys
from pathlib import Path

import cupy
import numpy as np
from cupy._core import _kernel, _reduction, core
from cupy.cuda import compiler

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from cnn_cifar.fused_kernel import REFERENCES  # noqa: E402 (after src joins sys.path)
from cnn_cifar.nn import kernels as K  # noqa: E402 (after src joins sys.path)
from cnn_cifar.optim import kernels as OK  # noqa: E402 (after src joins sys.path)

ARCH = "90"                          # H100 / H200
DTYPES = (np.float32, np.float64, np.float16)
HALF = {"cnn_im2col", "cnn_col2im", "cnn_relu_backward"}   # float16 under amp.autocast: Conv2d, a ReLU after it
# (batch norm widens to its float32 parameters; the optimizers update the float32 master weights)
NDARRAY, INDEXER, SCALAR = 1, 2, 3   # CuPy's _ArgKind


class Arr:
    """A device array as CuPy's launch sees it: shape, strides (bytes), dtype, C-contiguity flag."""

    def __init__(self, shape, dtype, strides=None, c_contiguous=None):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.strides = tuple(_contiguous_strides(self.shape, self.dtype.itemsize) if strides is None else strides)
        self.c = _is_c_contiguous(self.shape, self.strides, self.dtype.itemsize) if c_contiguous is None \
            else c_contiguous

    @classmethod
    def of(cls, a: np.ndarray) -> "Arr":
        """The stand-in for a NumPy array of the call site's shape and view (no device memory needed)."""
        return cls(a.shape, a.dtype, a.strides, a.flags.c_contiguous)

    def view(self, shape, strides, update_c: bool) -> "Arr":
        return Arr(shape, self.dtype, strides, None if update_c else self.c)


def _contiguous_strides(shape, itemsize):
    out, s = [], itemsize
    for d in reversed(shape):
        out.append(s)
        s *= max(d, 1)
    return tuple(reversed(out))


def _is_c_contiguous(shape, strides, itemsize):          # CuPy's _update_c_contiguity
    if 0 in shape:
        return True
    s = itemsize
    for d, st in zip(reversed(shape), reversed(strides)):
        if d != 1:
            if st != s:
                return False
            s *= d
    return True


def broadcast(args, params):
    """CuPy's _broadcast: non-raw arrays viewed to the common shape (zero strides), contiguity updated."""
    arrays = [a for a, p in zip(args, params) if isinstance(a, Arr) and not p.raw]
    shape = np.broadcast_shapes(*[a.shape for a in arrays]) if arrays else ()
    out = []
    for a, p in zip(args, params):
        if isinstance(a, Arr) and not p.raw and a.shape != shape:
            lead = len(shape) - len(a.shape)
            strides = [0] * lead + [st if d == shape[lead + j] else 0 for j, (d, st) in enumerate(zip(a.shape,
                                                                                                     a.strides))]
            a = a.view(shape, strides, True)
        out.append(a)
    return out, shape


def reduce_dims(args, params, shape):
    """CuPy's _reduce_dims (views made without updating C-contiguity, as CuPy's)."""
    if len(shape) <= 1 or not args:
        return args, shape
    if len(args) == 1:                                   # reductions' fast path: ndarray.reduced_view()
        a = args[0]
        if params[0].raw or not isinstance(a, Arr) or not a.c:
            return args, shape                           # (non-contiguous single outputs do not occur here)
        n = int(np.prod(a.shape))
        return [a.view((n,), (a.dtype.itemsize,), False)], (n,)
    idx = [i for i, (a, p) in enumerate(zip(args, params)) if isinstance(a, Arr) and not p.raw]
    strided = [i for i in idx if not args[i].c]
    if not idx or (strided and len(shape) == 2):
        return args, shape
    args = list(args)
    if not strided:
        n = int(np.prod(shape))
        for i in idx:
            args[i] = args[i].view((n,), (args[i].dtype.itemsize,), False)
        return args, (n,)
    vec, axes, last = list(shape), [], -1
    for ax in range(len(shape)):
        if vec[ax] == 1:
            continue
        if last >= 0:
            if any(args[i].strides[ax] * vec[ax] != args[i].strides[last] for i in strided):
                axes.append(last)
            else:
                vec[ax] *= vec[last]
        last = ax
    if last >= 0:
        axes.append(last)
    if len(axes) == len(shape):
        return args, shape
    new = tuple(vec[ax] for ax in axes)
    for i in idx:
        args[i] = args[i].view(new, [args[i].strides[ax] for ax in axes], False)
    return args, new


def arginfo(a, dtype, idx32: bool):
    """CuPy's _ArgInfo of one launch argument: an array, a Python scalar cast to its parameter's dtype, or an
    indexer (given as its shape tuple)."""
    if isinstance(a, Arr):
        return _kernel._ArgInfo(NDARRAY, cupy.ndarray, a.dtype, len(a.shape), a.c, idx32)
    if isinstance(a, tuple):
        return _kernel._ArgInfo(INDEXER, type(None), None, len(a), True, idx32)
    return _kernel._ArgInfo(SCALAR, type(None), np.dtype(dtype), 0, True, True)


def elementwise_source(kern, args, size, idx32):
    """ElementwiseKernel.__call__ up to the compile: the CUDA source CuPy would compile for these arguments."""
    nin = kern.nin
    ins, shape = broadcast(list(args), kern.params)
    ins = ins[:nin]
    outs = list(args[nin:])
    in_dt = tuple(a.dtype if isinstance(a, Arr) else None for a in ins)
    in_types, out_types, type_map = kern._decide_params_type(in_dt, tuple(a.dtype for a in outs))
    if size is not None:
        shape = (size,)
    if not outs:
        outs = [Arr(shape, t) for t in out_types]
    inout, shape = reduce_dims(ins + outs, kern.params, shape)
    infos = tuple(arginfo(a, t, idx32) for a, t in zip(inout, in_types + out_types)) + (arginfo(shape, None, idx32),)
    code = _kernel._get_elementwise_kernel_code(infos, type_map, kern.params, kern.operation, kern.name,
                                                kern.preamble, **kern.kwargs)
    return code, tuple(kern.kwargs.get("options", ()))


def reduction_source(kern, args, axis, keepdims, idx32):
    """ReductionKernel.__call__ (the non-CUB path) up to the compile; outputs allocated, or all given."""
    assert kern.nin > 1 or kern.nout > 1, "one input and one output could take the CUB path, not reproduced here"
    ins, a_shape = broadcast(list(args[:kern.nin]), kern.in_params)
    given = list(args[kern.nin:])
    in_types, out_types, type_map = _reduction._decide_params_type(
        kern.in_params, kern.out_params, tuple(a.dtype.type if isinstance(a, Arr) else None for a in ins),
        tuple(a.dtype.type for a in given))
    reduce_axis, out_axis = _reduction._get_axis(axis, len(a_shape))
    out_shape = tuple(_reduction._get_out_shape(a_shape, reduce_axis, out_axis, keepdims))
    for a, p in zip(given, kern.out_params):
        assert p.raw or a.shape == out_shape, f"{kern.name}: output {p.name} of shape {a.shape}, not {out_shape}"
    outs = given or [Arr(out_shape, t) for t in out_types]
    big = np.prod(a_shape) / max(np.prod(out_shape), 1) > 0x7FFFFFFF
    type_map = _kernel._TypeMap(type_map._pairs + (("IndexT", "int64" if big else "int32"),))
    perm = reduce_axis + out_axis
    if perm != tuple(range(len(a_shape))):               # _set_permuted_args: transposed views
        ins = [a.view([a.shape[i] for i in perm], [a.strides[i] for i in perm], True) if isinstance(a, Arr) else a
               for a in ins]
        a_shape = tuple(a_shape[i] for i in perm)
    ins, in_shape = reduce_dims(ins, kern.in_params, a_shape)
    outs, out_shape = reduce_dims(outs, kern.out_params, out_shape)
    block_size = _reduction._get_block_specs(int(np.prod(in_shape)), int(np.prod(out_shape)), 1, -1)[0]
    infos = tuple(arginfo(a, t, idx32) for a, t in zip(ins + outs, in_types + out_types)) + (
        arginfo(in_shape, None, idx32), arginfo(out_shape, None, idx32), arginfo(0, np.int32, idx32))
    code = _reduction._ReductionKernel_get_cached_function_code(
        kern.nin, kern.nout, kern._params, infos, type_map, kern.name, block_size, kern.reduce_type,
        kern.identity, kern.map_expr, kern.reduce_expr, kern.post_map_expr, kern.preamble, kern.options)
    return code, tuple(kern.options)


def calls(dt):
    """(kernel, label, arguments, keyword arguments) for each way the library calls each kernel, with small
    shapes; arrays as NumPy stand-ins (wrapped by Arr.of), scalars as the Python values passed."""
    C, H, W, N = 8, 6, 6, 4
    M = H * W * N
    e = lambda *s, t=dt: np.empty(s, t)                           # noqa: E731
    col = lambda: e(C)[:, None]                                   # noqa: E731  weight.data[:, None] and the like
    chwn = lambda a: a.transpose(1, 2, 3, 0)                      # noqa: E731  layout.chwn
    x2, ok0 = e(C, M), np.empty((), np.bool_)
    stats = lambda: (e(2, C)[0], e(2, C)[1], e(C), e(C), e(t=np.int64))   # noqa: E731  mean, var, running, count
    out = [(K.bn_stats, "", (x2, 0.1) + stats(), dict(axis=1)),
           (K.bn_stats, "BatchNorm1d", (e(M, C).T, 0.1) + stats(), dict(axis=1))]
    for s in K.BN_FORWARD:
        res = (e(C, M),) if "add" in s else ()
        out.append((K.BN_FORWARD[s], "", (x2, e(C, 1), e(C, 1), 1e-5, col(), col()) + res, {}))
        out.append((K.BN_EVAL[s], "", (x2, col(), col(), 1e-5, col(), col()) + res, {}))
    for label, g in (("gate", e(C, M)), ("gate=1.0", 1.0)):
        sums = (e(2, C)[0], e(2, C)[1], e(C), e(C))                            # a workspace's rows, the grads
        out.append((K.bn_grad_sums, label, (x2, g, e(C, M)) + sums, dict(axis=1)))
        out.append((K.bn_backward, label, (x2, g, e(C, M), col(), e(C, 1), 1e-5, e(2, C)[0][:, None],
                                           e(2, C)[1][:, None], 1.0 / M), {}))
    geo = (H, W, N, H, W, 3, 3, 1, 1, 1, 1, 1, 1)                  # 3x3, stride 1, padding 1
    out.append((K.im2col_gpu, "", (e(C, H, W, N),) + geo + (e(C * 9, H * W * N),), {}))
    out.append((K.col2im_gpu, "", (e(C * 9, H * W * N),) + geo, dict(size=C * H * W * N)))
    out.append((K.col2im_gpu, "groups=2", (e(2, C * 9 // 2, H * W * N),) + geo, dict(size=C * H * W * N)))
    out.append((K.relu_backward, "", (x2, e(C, M)), {}))                        # batch norm's residual gate
    out.append((K.relu_backward, "NCHW dy", (chwn(e(N, C, H, W)), e(C, H, W, N)), {}))   # ReLU.backward
    out.append((K.gelu, "", (e(C, H, W, N),), {}))                              # GELU.forward, 4-d
    out.append((K.gelu, "2-d", (e(N, C * H * W),), {}))
    for label, ok in (("ok=True", True), ("ok=device", ok0)):
        out.append((OK.sgd_update, label, (e(100), 0.1, 0.9, 5e-4, False, ok, e(100), e(100)), {}))
        out.append((OK.adam_update, label, (e(100), 1e-3, 0.9, 0.999, 0.5, 1e-8, 0.0, 1.0, ok) + (e(100),) * 3, {}))
    return out if dt != np.float16 else [c for c in out if c[0].name in HALF]


def source(k, args, kwargs, idx32):
    args = [Arr.of(a) if isinstance(a, np.ndarray) else a for a in args]
    kern = getattr(cupy, k.kind)(*k.args, name=k.name, **k.options)
    if k.kind == "ReductionKernel":
        return reduction_source(kern, args, kwargs.get("axis"), kwargs.get("keepdims", False), idx32)
    return elementwise_source(kern, args, kwargs.get("size"), idx32)


def nvrtc_compile(name, code, options=()):
    """core.compile_with_cache's NVRTC compile, without its device queries, disk cache and module load."""
    src = "".join(f"#include <{h}>\n" for h in core._cupy_header_list) + code
    opts = core.assemble_cupy_compiler_options(options) + ("-ftz=true", f"-arch=sm_{ARCH}",
                                                           "--device-as-default-execution-space")
    compiler._NVRTCProgram(src, name + ".cu", method="cubin").compile(opts)


def main() -> int:
    from cupy_backends.cuda.libs import nvrtc
    print(f"NVRTC {'.'.join(map(str, nvrtc.getVersion()))}, CuPy {cupy.__version__}, sm_{ARCH}")
    missing = set(REFERENCES) - {c[0].name for c in calls(np.float32)}     # every kernel declared
    for name in sorted(missing):
        print(f"FAIL  {name}: declared in kernels.py but has no call in this script's calls()")
    failed, total = len(missing), len(missing)
    for dt in DTYPES:
        for k, label, args, kwargs in calls(dt):
            for idx32 in (True, False):
                tag = f"{k.name}{f' [{label}]' if label else ''} {np.dtype(dt).name}, {32 if idx32 else 64}-bit index"
                total += 1
                try:
                    nvrtc_compile(k.name, *source(k, args, kwargs, idx32))
                    print(f"OK    {tag}")
                except compiler.CompileException as exc:
                    failed += 1
                    print(f"FAIL  {tag}\n{exc.get_message().rstrip()}")
                    if "--dump" in sys.argv:             # the numbered source NVRTC's line numbers refer to
                        exc.dump(sys.stdout)
                except Exception as exc:                 # CuPy refusing the call (types, shapes) before compiling
                    failed += 1
                    print(f"FAIL  {tag}: {type(exc).__name__}: {exc}")
    print(f"{total - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
