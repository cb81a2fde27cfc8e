"""A CuPy stand-in for the test suite: the part of CuPy's API the library uses, backed by NumPy, strict
where CuPy is strict. It lives under tests/ and is put on sys.path by conftest.py only when the real CuPy
cannot run, so that every CuPy code path executes in every CI run. Users never import it.

Strict as CuPy is (see CuPy's "Differences between CuPy and NumPy" and its ndarray reference):
* ``cupy.ndarray`` is not a NumPy array; ``numpy.asarray(x)`` and NumPy functions given one raise
  TypeError ("Implicit conversion to a NumPy array is not allowed"), and ``np_array + x`` does too.
* CuPy functions, operators and ``__setitem__`` reject NumPy arrays ("Unsupported type"); Python and NumPy
  scalars are fine. Reductions return 0-d device arrays, not host scalars.
* Host transfers are explicit: ``asnumpy``, ``.get()``, ``.item()``, ``.tolist()``, ``float()``, ``int()``,
  ``bool()``; each counts as a host synchronisation. ``asarray`` of host data is an upload.
* Functions CuPy lacks are absent (only what is listed here exists).
* ``random.default_rng(seed).random(size, dtype)`` as in CuPy, whose generators have no NumPy-style
  ``bit_generator.state``.
* ``matmul`` counts the copies CuPy makes of operands that are not contiguous.
* ``ElementwiseKernel``/``ReductionKernel`` check their arguments as CuPy does: one dtype per one-letter type
  (``T``) across the array arguments, named types (``int64``) exact, outputs device arrays of the loop's
  (or the reduction's) shape, ``size`` only and always when every array is ``raw``.

``cupy.cuda.nccl`` carries NCCL's in-place sum and broadcast out over MPI on the arrays behind the device
pointers (``ndarray.data.ptr``), so the library's NCCL communicator runs under ``mpirun`` in CI.

It counts device operations (``counters['ops']``), bytes written (``'bytes'``) and host synchronisations
(``'syncs'``); ``reset_counters()`` zeroes them.

``ElementwiseKernel`` and ``ReductionKernel`` run the NumPy reference the library keeps beside each kernel's
CUDA source (``cnn_cifar.fused_kernel.REFERENCES``, by kernel name), as one counted operation.

What it cannot catch: kernel bodies (that a body computes what its reference does: tests/kernel_host.py runs
each body on the host with g++ against its reference, and tools/compile_kernels.py compiles them with NVRTC
in CI, but their threads run only on a GPU), numerical differences of cuBLAS/cuRAND, speed,
memory use and asynchrony, NCCL itself, and two places where it follows NumPy instead of CuPy: out-of-range integer
indices raise (CuPy wraps them around) and float-to-int casts of out-of-range values.
"""
from __future__ import annotations

import types
import weakref

import numpy as _np

counters = {"ops": 0, "syncs": 0, "bytes": 0}
# (Below, ``any``, ``all`` and other NumPy-named functions become this module's CuPy functions: builtins
# with those names are out of reach here.)
_by_ptr: "weakref.WeakValueDictionary[int, _np.ndarray]" = weakref.WeakValueDictionary()


def reset_counters() -> None:
    for k in counters:
        counters[k] = 0


def _op(result=None) -> None:
    counters["ops"] += 1
    if isinstance(result, _np.ndarray):
        counters["bytes"] += result.nbytes


def _sync() -> None:
    counters["syncs"] += 1


def _unsupported(x) -> TypeError:
    return TypeError(f"Unsupported type {type(x)}")


def _in(x):
    """A device array's NumPy data; scalars and shapes pass; host arrays are refused."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, _np.ndarray):
        raise _unsupported(x)
    if isinstance(x, tuple):
        return tuple(_in(v) for v in x)
    if isinstance(x, list):
        return [_in(v) for v in x]
    return x


def _out(r):
    """Results on the device: arrays and NumPy scalars become cupy arrays (reductions give 0-d arrays)."""
    if isinstance(r, _np.ndarray):
        return ndarray._wrap(r)
    if isinstance(r, _np.generic):
        return ndarray._wrap(_np.asarray(r))
    if isinstance(r, tuple):
        return tuple(_out(v) for v in r)
    return r


class _Flags:
    def __init__(self, a):
        self.c_contiguous = a.flags.c_contiguous
        self.f_contiguous = a.flags.f_contiguous


class ndarray:
    """Device array. Holds a NumPy array that user code can only reach through explicit transfers."""

    __array_ufunc__ = None          # NumPy defers binary operators to us (which then refuse host arrays)
    __slots__ = ("_a",)

    def __init__(self, shape, dtype=float):
        self._a = _np.empty(shape, dtype=dtype)
        _op(self._a)

    @classmethod
    def _wrap(cls, a: _np.ndarray) -> "ndarray":
        obj = cls.__new__(cls)
        obj._a = a
        return obj

    # -- no implicit host conversion ----------------------------------------------------------------
    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to "
                        "construct a NumPy array explicitly.")

    def get(self, stream=None, order="C", out=None, blocking=True):
        _sync()
        return _np.array(self._a, order=order)

    def set(self, arr, stream=None):
        """Upload a host array of the same shape and dtype (CuPy's ``ndarray.set``)."""
        if not isinstance(arr, _np.ndarray) or arr.shape != self._a.shape or arr.dtype != self._a.dtype:
            raise ValueError("set needs a NumPy array of the same shape and dtype")
        self._a[...] = arr
        _op()

    @property
    def data(self):
        """The device pointer (``.data.ptr``), which the NCCL stand-in maps back to this array."""
        ptr = self._a.__array_interface__["data"][0]
        _by_ptr[ptr] = self._a
        return types.SimpleNamespace(ptr=ptr)

    def item(self):
        _sync()
        return self._a.item()

    def tolist(self):
        _sync()
        return self._a.tolist()

    def __float__(self):
        _sync()
        return float(self._a)

    def __int__(self):
        _sync()
        return int(self._a)

    def __bool__(self):
        _sync()
        return bool(self._a)

    def __repr__(self):
        _sync()
        return repr(self._a).replace("array(", "array(", 1)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __len__(self):
        return len(self._a)

    # -- attributes -------------------------------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: _Flags(self._a))
    T = property(lambda self: ndarray._wrap(self._a.T))
    device = property(lambda self: cuda.Device(0))

    # -- views and copies -------------------------------------------------------------------------------
    def reshape(self, *shape, order="C"):
        r = self._a.reshape(*shape, order=order)
        if not _np.may_share_memory(r, self._a):
            _op(r)
        return ndarray._wrap(r)

    def transpose(self, *axes):
        return ndarray._wrap(self._a.transpose(*axes))

    def view(self, dtype=None):
        return ndarray._wrap(self._a.view(dtype) if dtype is not None else self._a.view())

    def ravel(self):
        return self.reshape(-1)

    def copy(self, order="C"):
        r = self._a.copy(order=order)
        _op(r)
        return ndarray._wrap(r)

    def astype(self, dtype, copy=True, **kw):
        r = self._a.astype(dtype, copy=copy, **kw)
        if r is not self._a:
            _op(r)
        return ndarray._wrap(r)

    def fill(self, value):
        if isinstance(value, (ndarray, _np.ndarray)):
            raise _unsupported(value)
        self._a.fill(value)
        _op(self._a)

    def __getitem__(self, key):
        r = self._a[_in(key)]
        if not _np.may_share_memory(r, self._a):
            _op(r)
        return _out(r)

    def __setitem__(self, key, value):
        if isinstance(value, _np.ndarray):
            raise _unsupported(value)
        target = self._a
        target[_in(key)] = _in(value)
        _op()


def _method(name):
    def m(self, *args, **kwargs):
        r = getattr(self._a, name)(*_in(args), **{k: _in(v) for k, v in kwargs.items()})
        _op(r if isinstance(r, _np.ndarray) else None)
        return _out(r)
    m.__name__ = name
    return m


for _name in ("sum", "mean", "max", "min", "argmax", "argmin", "any", "all", "var", "std", "dot", "clip",
              "cumsum", "prod", "nonzero", "argsort", "squeeze"):
    setattr(ndarray, _name, _method(_name))


def _binary(name, inplace=False):
    def f(self, other):
        if isinstance(other, _np.ndarray):
            raise _unsupported(other)
        if not isinstance(other, (ndarray, int, float, bool, complex, _np.generic)):
            return NotImplemented
        r = getattr(self._a, name)(_in(other))
        if r is NotImplemented:
            return r
        _op(r if isinstance(r, _np.ndarray) else None)
        return self if inplace else _out(r)
    f.__name__ = name
    return f


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor",
              "lshift", "rshift"):
    setattr(ndarray, f"__{_name}__", _binary(f"__{_name}__"))
    setattr(ndarray, f"__r{_name}__", _binary(f"__r{_name}__"))
    setattr(ndarray, f"__i{_name}__", _binary(f"__i{_name}__", inplace=True))
for _name in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(ndarray, f"__{_name}__", _binary(f"__{_name}__"))
ndarray.__hash__ = None
for _name in ("neg", "pos", "abs", "invert"):
    setattr(ndarray, f"__{_name}__", (lambda n: lambda self: _out(getattr(self._a, n)()))(f"__{_name}__"))


# --------------------------------------------------------------------------------------- module functions
def _function(name):
    fn = getattr(_np, name)

    def f(*args, **kwargs):
        out = kwargs.get("out")
        if out is not None and not isinstance(out, ndarray):
            raise _unsupported(out)
        r = fn(*_in(args), **{k: _in(v) for k, v in kwargs.items()})
        _op(r if isinstance(r, _np.ndarray) else None)
        return out if out is not None else _out(r)
    f.__name__ = name
    return f


for _name in ("add", "subtract", "multiply", "divide", "true_divide", "maximum", "minimum", "exp", "log", "sqrt",
              "square", "abs", "negative", "where", "isfinite", "isnan", "sum", "mean", "max", "min", "argmax",
              "argsort", "einsum", "concatenate", "stack", "clip", "sign", "tanh", "logical_and", "logical_or",
              "ascontiguousarray", "transpose", "reshape", "zeros_like", "ones_like", "empty_like", "full_like",
              "broadcast_to", "expand_dims", "all", "any", "dot", "outer", "power", "greater", "less", "equal",
              "bitwise_and", "pad"):
    globals()[_name] = _function(_name)


def _creator(name):
    fn = getattr(_np, name)

    def f(*args, **kwargs):
        r = fn(*args, **kwargs)
        _op(r)
        return ndarray._wrap(r)
    f.__name__ = name
    return f


for _name in ("empty", "zeros", "ones", "full", "arange", "eye", "linspace"):
    globals()[_name] = _creator(_name)


def asarray(a, dtype=None, order=None):
    """Device array from device data (no copy) or host data (an upload)."""
    if isinstance(a, ndarray):
        return a if dtype is None or a.dtype == dtype else a.astype(dtype)
    r = _np.array(a, dtype=dtype, order=order or "K")
    _op(r)
    return ndarray._wrap(r)


def array(a, dtype=None, copy=True, order="K"):
    r = _np.array(_in(a) if isinstance(a, ndarray) else a, dtype=dtype, order=order)
    _op(r)
    return ndarray._wrap(r)


def asnumpy(a, stream=None, order="C", out=None, blocking=True):
    if isinstance(a, ndarray):
        return a.get(order=order)
    return _np.asarray(a, order=order)


def copyto(dst, src, casting="same_kind", where=True):
    if not isinstance(dst, ndarray) or isinstance(src, _np.ndarray):
        raise _unsupported(dst if not isinstance(dst, ndarray) else src)
    _np.copyto(dst._a, _in(src), casting=casting, where=_in(where))
    _op(dst._a)


def matmul(a, b, out=None):
    """As CuPy: operands that are not contiguous are copied first (counted), then one cuBLAS call."""
    for x in (a, b):
        if not isinstance(x, ndarray):
            raise _unsupported(x)
        if not (x._a.flags.c_contiguous or (x.ndim == 2 and x._a.flags.f_contiguous)):
            _op(x._a)                                           # the copy CuPy makes
    if out is not None and not isinstance(out, ndarray):
        raise _unsupported(out)
    r = _np.matmul(a._a, b._a, out=None if out is None else out._a)
    _op(r)
    return out if out is not None else ndarray._wrap(r)


def shares_memory(a, b, max_work=None):
    return bool(_np.shares_memory(_in(a), _in(b)))


def may_share_memory(a, b, max_work=None):
    return bool(_np.may_share_memory(_in(a), _in(b)))


def get_array_module(*args):
    for a in args:
        if isinstance(a, ndarray):
            return _this
    return _np


def _params(spec: str) -> list[tuple[bool, str, str]]:
    """(raw, type, name) of each parameter of a CuPy kernel signature such as "raw T x, int32 H"."""
    return [("raw" in q.split()[:-2], q.split()[-2], q.split()[-1]) for q in spec.split(",") if q.strip()]


_NAMED_TYPES = {"int64": _np.int64, "int32": _np.int32, "bool": _np.bool_, "float16": _np.float16,
                "float32": _np.float32, "float64": _np.float64}


def _check_types(name, params, nin, args):
    """As CuPy: a one-letter type (``T``) is one dtype across all array arguments, a named type (``int64``)
    must be that dtype, and outputs passed must be device arrays."""
    bound = {}
    for i, ((_, t, pname), a) in enumerate(zip(params, args)):
        if i >= nin and not isinstance(a, ndarray):
            raise TypeError("Output arguments type must be cupy.ndarray")
        if not isinstance(a, ndarray):
            continue
        want = _NAMED_TYPES.get(t) or bound.setdefault(t, a.dtype)
        if a.dtype != _np.dtype(want):
            raise TypeError(f"{name}: Type is mismatched. {pname} {a.dtype} {t} {_np.dtype(want)}")


def _deliver(name, res, given, dt, size=None):
    """A kernel's results: written into the outputs passed (then returned), or as new device arrays of dtype
    ``dt`` (flat, of ``size`` values, where the loop size was given); one array, or a tuple of them."""
    res = res if isinstance(res, tuple) else (res,)
    out = []
    for i, r in enumerate(res):
        r = _np.asarray(r)
        if given:
            given[i]._a[...] = r
            out.append(given[i])
            continue
        if size is not None:
            if r.size != size:
                raise AssertionError(f"{name}: the reference gave {r.size} values for size {size}")
            r = r.reshape(size)
        out.append(ndarray._wrap(_np.ascontiguousarray(r.astype(dt, copy=False))))
    _op(out[0]._a)
    return out[0] if len(out) == 1 else tuple(out)


def _reference(name):
    """The NumPy reference the library keeps beside a kernel's CUDA source (cnn_cifar.fused_kernel)."""
    from cnn_cifar.fused_kernel import REFERENCES
    if name not in REFERENCES:
        raise NotImplementedError(f"the stand-in has no NumPy reference for kernel {name!r}: add one where the "
                                  f"kernel is declared (cnn_cifar.fused_kernel)")
    return REFERENCES[name]


def _kernel_arg(x):
    if isinstance(x, _np.ndarray):
        raise _unsupported(x)
    return _in(x)


class ElementwiseKernel:
    """cupy.ElementwiseKernel: here the kernel's NumPy reference runs instead of its CUDA body, as one
    counted operation. Inputs broadcast; outputs may be passed after the inputs (written in place, and
    their current values given to the reference, as a CUDA body may read them) or are allocated. As in CuPy,
    ``size`` sets the loop size, and the shape (size,) of allocated outputs, only when every array argument
    is ``raw``, and it must be given then."""

    def __init__(self, in_params, out_params, operation, name="kernel", **kwargs):
        self.ins, self.outs, self.operation, self.name = _params(in_params), _params(out_params), operation, name
        self.raw = [raw for raw, _, _ in self.ins + self.outs]

    def __call__(self, *args, size=None, block_size=None):
        if len(args) not in (len(self.ins), len(self.ins) + len(self.outs)):
            raise TypeError(f"{self.name}: wrong number of arguments ({len(args)})")
        nonraw = True in (isinstance(a, ndarray) and not raw for a, raw in zip(args, self.raw))   # outputs too
        if size is not None and nonraw:
            raise ValueError("Specified 'size' can be used only if all of the ndarray are 'raw'.")
        if size is None and not nonraw:
            raise ValueError("Loop size is undecided.")
        _check_types(self.name, self.ins + self.outs, len(self.ins), args)
        given = args[len(self.ins):]
        if given and nonraw:
            shape = _np.broadcast_shapes(*[a.shape for a, raw in zip(args, self.raw) if isinstance(a, ndarray)
                                           and not raw])
            if True in (o.shape != shape for o, raw in zip(given, self.raw[len(self.ins):]) if not raw):
                raise ValueError("Out shape is mismatched")
        vals = [_kernel_arg(a) for a in args]
        dt = _np.result_type(*[v for v in vals if isinstance(v, _np.ndarray)])
        return _deliver(self.name, _reference(self.name)(*vals), given, dt, size)


class ReductionKernel:
    """cupy.ReductionKernel: the kernel's NumPy reference, given ``axis`` and ``keepdims``, as one operation.
    As in CuPy, the outputs are allocated (one, or a tuple), or all of them passed after the inputs (written in
    place; their current values go to the reference after the inputs, as post_map_expr may read them), or one
    passed as ``out``."""

    def __init__(self, in_params, out_params, map_expr, reduce_expr, post_map_expr, identity, name="reduce_kernel",
                 **kwargs):
        self.ins, self.outs, self.name = _params(in_params), _params(out_params), name

    def __call__(self, *args, axis=None, keepdims=False, out=None):
        if len(args) not in (len(self.ins), len(self.ins) + len(self.outs)):
            raise TypeError(f"Wrong number of arguments for {self.name}")
        if out is not None:
            if len(self.outs) != 1 or len(args) != len(self.ins):
                raise ValueError("cannot specify 'out' as both a positional and keyword argument")
            args = (*args, out)
        _check_types(self.name, self.ins + self.outs, len(self.ins), args)
        given = args[len(self.ins):]
        vals = [_kernel_arg(a) for a in args]
        res = _reference(self.name)(*vals, axis=axis, keepdims=keepdims)
        for o, r, (raw, _, _) in zip(given, res if isinstance(res, tuple) else (res,), self.outs):
            if not raw and o.shape != _np.shape(r):
                raise ValueError("Out shape is mismatched")
        dt = _np.result_type(*[v for v in vals[:len(self.ins)] if isinstance(v, _np.ndarray)])
        return _deliver(self.name, res, given, dt)


def fuse(*args, **kwargs):
    """cupy.fuse runs its Python body here (with cupy functions) instead of compiling one kernel."""
    def deco(fn):
        return fn
    return deco(args[0]) if args and callable(args[0]) else deco


# dtypes and constants: CuPy uses NumPy's
dtype = _np.dtype
for _name in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
              "bool_", "inf", "nan", "pi", "newaxis", "integer", "floating"):
    globals()[_name] = getattr(_np, _name)


# ------------------------------------------------------------------------------------------------- random
class _Generator:
    """cupy.random.Generator: device arrays from .random(size, dtype); no host-side state to save."""

    def __init__(self, seed=None):
        self._g = _np.random.default_rng(seed)

    def random(self, size=None, dtype=_np.float64, out=None):
        r = self._g.random(size, dtype=dtype)
        _op(r)
        if out is not None:
            out._a[...] = r
            return out
        return ndarray._wrap(_np.asarray(r))


random = types.ModuleType("cupy.random")
random.default_rng = lambda seed=None: _Generator(seed)
random.Generator = _Generator


# --------------------------------------------------------------------------------------------------- cuda
class _Stream:
    ptr = 0

    def synchronize(self):
        _sync()


class _Device:
    def __init__(self, device=0):
        self.id = int(device)

    def synchronize(self):
        _sync()

    def use(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


cuda = types.ModuleType("cupy.cuda")
cuda.Device = _Device
cuda.Stream = _Stream
cuda.get_current_stream = lambda: _Stream()
cuda.runtime = types.SimpleNamespace(
    getDeviceCount=lambda: 1,
    getDeviceProperties=lambda i: {"name": b"CuPy stand-in (NumPy)", "totalGlobalMem": 1 << 30},
)

__version__ = "0.0-standin"
IS_STANDIN = True
import sys as _sys  # noqa: E402

_this = _sys.modules[__name__]


# --------------------------------------------------------------------------------------------------- nccl
class _NcclCommunicator:
    """NCCL's calls on device pointers, carried out by MPI on the arrays behind them (under mpirun), so the
    library's NCCL communicator runs in CI; NCCL itself (and its speed) is what this cannot check."""

    def __init__(self, ndev, commId, rank):
        from mpi4py import MPI
        self._mpi, self._comm = MPI, MPI.COMM_WORLD
        if (self._comm.Get_size(), self._comm.Get_rank()) != (ndev, rank):
            raise RuntimeError("the NCCL stand-in needs ranks laid out as MPI_COMM_WORLD")
        if self._comm.bcast(commId, root=0) != commId:
            raise RuntimeError("ranks were given different NCCL unique ids")

    def _array(self, ptr, count, datatype):
        a = _by_ptr[ptr].reshape(-1)
        if a.size != count or a.dtype != _nccl_types[datatype]:
            raise ValueError("count or datatype does not match the array")
        return a

    def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
        if op != nccl.NCCL_SUM or sendbuf != recvbuf:
            raise NotImplementedError("the stand-in does in-place sums only")
        self._comm.Allreduce(self._mpi.IN_PLACE, self._array(sendbuf, count, datatype), op=self._mpi.SUM)
        _op()

    def bcast(self, buff, count, datatype, root, stream):
        self._comm.Bcast(self._array(buff, count, datatype), root=root)
        _op()


nccl = types.ModuleType("cupy.cuda.nccl")
nccl.NCCL_INT32, nccl.NCCL_INT64, nccl.NCCL_FLOAT32, nccl.NCCL_FLOAT64 = 2, 4, 7, 8
nccl.NCCL_SUM = 0
_nccl_types = {2: _np.dtype(_np.int32), 4: _np.dtype(_np.int64), 7: _np.dtype(_np.float32), 8: _np.dtype(_np.float64)}
nccl.get_unique_id = lambda: tuple(int(v) for v in _np.random.default_rng().integers(0, 256, 128))
nccl.NcclCommunicator = _NcclCommunicator
cuda.nccl = nccl
_sys.modules[__name__ + ".cuda"] = cuda
_sys.modules[__name__ + ".cuda.nccl"] = nccl


# --------------------------------------------------------------------------------------------------- cublas
def _gemm(transa, transb, a, b, out=None, alpha=1.0, beta=0.0):
    """cupy.cublas.gemm: out = alpha * op(a) @ op(b) + beta * out, in one cuBLAS call, with CuPy's checks
    (2-D operands of one dtype among float32/float64/complex; ``out`` of the result's shape and dtype; without
    ``out``, beta is ignored)."""
    for x in (a, b) + (() if out is None else (out,)):
        if not isinstance(x, ndarray):
            raise _unsupported(x)
    assert a.ndim == b.ndim == 2 and a.dtype == b.dtype
    if a.dtype.char not in "fdFD":
        raise TypeError("invalid dtype")
    op = {"N": lambda x: x, "T": lambda x: x.T, "H": lambda x: x.T.conj()}
    r = alpha * (op[transa](a._a) @ op[transb](b._a))
    if out is None:
        out = ndarray._wrap(_np.asfortranarray(r.astype(a.dtype)))
    else:
        assert out.ndim == 2 and out.shape == r.shape and out.dtype == a.dtype
        out._a[...] = r + beta * out._a
    _op(out._a)
    return out


_cublas = types.ModuleType("cupy.cublas")          # as in CuPy, reached by importing it, not by ``cupy.cublas``
_cublas.gemm = _gemm
_sys.modules[__name__ + ".cublas"] = _cublas
