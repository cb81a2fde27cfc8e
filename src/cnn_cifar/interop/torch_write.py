"""PyTorch checkpoint files written without torch: the zip format of torch.save (1.6 and later) that
``torch.load(path, weights_only=True)`` accepts."""
from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..training.atomic import atomic_write
from .torch_file import DTYPE_STORAGES, TorchFileError


class _Global:
    """A global written by name (the module need not be importable here): torch's rebuild function and
    storage types."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args: Any) -> None:      # pickle's save_reduce insists on a callable
        raise TypeError(f"{self.module}.{self.name} is only written, never called here")


class _TensorOut:
    """A tensor to write: reduces to _rebuild_tensor_v2 over its own storage."""

    def __init__(self, key: str, array: np.ndarray):
        self.key, self.array = key, array

    def __reduce__(self):
        a = self.array
        stride = tuple(s // a.itemsize for s in a.strides) if a.ndim else ()
        return (_Global("torch._utils", "_rebuild_tensor_v2"),
                (_StorageOut(self), 0, tuple(a.shape), stride, False, OrderedDict()))


class _StorageOut:
    def __init__(self, tensor: _TensorOut):
        self.tensor = tensor


class _Pickler(pickle._Pickler):          # the pure-Python pickler, whose dispatch table can be extended
    dispatch = pickle._Pickler.dispatch.copy()

    def _save_global_by_name(self, obj: _Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("utf-8"))
    dispatch[_Global] = _save_global_by_name

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _StorageOut):
            t = obj.tensor
            return ("storage", _Global("torch", DTYPE_STORAGES[t.array.dtype]), t.key, "cpu", int(t.array.size))
        return None


def save(path: str | os.PathLike, state: dict, archive: str = "archive") -> Path:
    """Write ``state`` (names -> NumPy arrays, possibly nested in dicts) as a zip-format PyTorch file that
    ``torch.load(path, weights_only=True)`` reads. Written atomically."""
    tensors: list[_TensorOut] = []

    def wrap(obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            if obj.dtype not in DTYPE_STORAGES:
                raise TorchFileError(f"cannot write an array of dtype {obj.dtype} as a torch tensor")
            t = _TensorOut(str(len(tensors)), np.ascontiguousarray(obj).astype(obj.dtype.newbyteorder("<")))
            tensors.append(t)
            return t
        if isinstance(obj, dict):
            out = OrderedDict() if isinstance(obj, OrderedDict) else {}
            for k, v in obj.items():
                out[k] = wrap(v)
            return out
        return obj
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(wrap(state))
    records = [("data.pkl", buf.getvalue()), ("byteorder", b"little")]
    records += [(f"data/{t.key}", t.array.tobytes()) for t in tensors]
    records += [("version", b"3\n"), (".data/version", b"3\n")]

    def write(f: BinaryIO) -> None:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as z:
            for name, data in records:
                _write_aligned(z, f"{archive}/{name}", data)
    return atomic_write(path, write)


def _write_aligned(z: zipfile.ZipFile, name: str, data: bytes, align: int = 64) -> None:
    """Store a record with its data starting on an ``align``-byte boundary, as torch's own writer does (so
    torch can memory-map it), padding the local header's extra field."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    start = z.fp.tell() + 30 + len(name.encode("utf-8"))
    pad = (-(start + 4)) % align
    info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
    z.writestr(info, data)
