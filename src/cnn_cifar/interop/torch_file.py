"""PyTorch checkpoint files read without torch: pure Python + NumPy (writing: torch_write.py).

Two formats exist (torch/serialization.py is the specification):

* **zip** (``torch.save`` since 1.6): ``<archive>/data.pkl`` is a protocol-2 pickle of the object in which
  each tensor is ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` and each storage a
  persistent id ``('storage', torch.<Type>Storage, key, location, numel)``; the storage's raw bytes are
  the record ``<archive>/data/<key>``, in the byte order of ``<archive>/byteorder`` (little when absent).
* **legacy** (before 1.6, or ``_use_new_zipfile_serialization=False``): five pickles in a row (magic
  number, protocol version, system info, the object with persistent ids ``('storage', type, key, location,
  numel, view_metadata)``, the sorted storage keys), then for each key an int64 element count and the raw
  bytes.

Tensors come back as NumPy arrays built from (storage, offset, size, stride) in elements, so views of one
storage and non-contiguous tensors read exactly; bfloat16 is widened to float32 (NumPy has no bfloat16);
storages on ``cuda:N`` load to the host. Unpickling goes through an allow-list: a file that names any other
global is refused with TorchFileError and nothing in it runs.
"""
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

from .. import safe_pickle

# torch.<Name>Storage -> element dtype (bfloat16 is read as raw uint16 and widened).
STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16, "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
DTYPE_STORAGES = {np.dtype(np.float64): "DoubleStorage", np.dtype(np.float32): "FloatStorage",
                  np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage",
                  np.dtype(np.int32): "IntStorage", np.dtype(np.int16): "ShortStorage",
                  np.dtype(np.int8): "CharStorage", np.dtype(np.uint8): "ByteStorage",
                  np.dtype(np.bool_): "BoolStorage"}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


class TorchFileError(ValueError):
    """Not a PyTorch file we can read, a malformed one, or one that names a global outside the allow-list."""


# ------------------------------------------------------------------------------------------------ reading
class _StorageType:
    """Stands for torch.<Name>Storage while unpickling."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name])


class _Storage:
    """A storage's elements (filled when its bytes are read), or a view into another storage (legacy)."""

    def __init__(self, stype: _StorageType, numel: int, base: "_Storage | None" = None, offset: int = 0):
        self.stype, self.numel, self.base, self.offset = stype, int(numel), base, int(offset)
        self.data: np.ndarray | None = None

    def elements(self) -> np.ndarray:
        if self.base is not None:
            return self.base.elements()[self.offset:self.offset + self.numel]
        if self.data is None:
            raise TorchFileError("a tensor refers to a storage whose bytes are missing from the file")
        return self.data


class _Tensor:
    """A tensor waiting for its storage's bytes (legacy files put them after the pickle)."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        if not isinstance(storage, _Storage):
            raise TorchFileError("malformed tensor: its storage is not a storage")
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(int(v) for v in size), tuple(int(v) for v in stride)

    def array(self) -> np.ndarray:
        flat = self.storage.elements()
        if len(self.size) != len(self.stride) or min(self.stride, default=0) < 0 or self.offset < 0:
            raise TorchFileError(f"malformed tensor: size {self.size}, stride {self.stride}, offset {self.offset}")
        if 0 in self.size:
            out = np.empty(self.size, dtype=flat.dtype)
        else:
            last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
            if last >= len(flat):
                raise TorchFileError(f"tensor of size {self.size} (stride {self.stride}, offset {self.offset}) "
                                     f"runs past its storage of {len(flat)} elements")
            view = np.lib.stride_tricks.as_strided(flat[self.offset:], self.size,
                                                   [s * flat.itemsize for s in self.stride], writeable=False)
            out = np.array(view)                    # an independent, contiguous copy
        if self.storage.stype.name == "BFloat16Storage":
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data


_TORCH_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): tuple,
    ("collections", "OrderedDict"): OrderedDict,
}
_TORCH_GLOBALS.update({("torch", name): _StorageType(name) for name in STORAGE_DTYPES})


class _Unpickler(safe_pickle.RestrictedUnpickler):
    """The checkpoint allow-list (plain data, NumPy arrays) plus the few torch names a state dict needs."""

    def __init__(self, f: BinaryIO, storage: Any):
        super().__init__(f, encoding="latin1")
        self._storage = storage

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _TORCH_GLOBALS:
            return _TORCH_GLOBALS[(module, name)]
        try:
            return super().find_class(module, name)
        except safe_pickle.UnsafePickleError:
            raise TorchFileError(f"refusing to load global '{module}.{name}': not part of a tensor state dict "
                                 f"(nothing in the file was run)") from None

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise TorchFileError(f"unexpected persistent id {str(pid)[:80]}")
        return self._storage(pid)


def _resolve(obj: Any) -> Any:
    """Replace every pending tensor in a loaded object by its NumPy array."""
    if isinstance(obj, _Tensor):
        return obj.array()
    if isinstance(obj, dict):
        out = type(obj)() if isinstance(obj, OrderedDict) else {}
        for k, v in obj.items():
            out[k] = _resolve(v)
        return out
    if isinstance(obj, list):
        return [_resolve(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_resolve(v) for v in obj)
    return obj


def _load_zip(f: BinaryIO) -> Any:
    with zipfile.ZipFile(f) as z:
        names = z.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise TorchFileError("zip file without a single <archive>/data.pkl: not a torch.save file")
        prefix = pkl[0][:-len("data.pkl")]
        order = z.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in names else "little"
        if order not in ("little", "big"):
            raise TorchFileError(f"unknown byte order {order!r}")
        cache: dict[str, _Storage] = {}

        def storage(pid: tuple) -> _Storage:
            _, stype, key, _location, numel = pid[:5]
            key = str(key)
            if key not in cache:
                record = f"{prefix}data/{key}"
                if record not in names:
                    raise TorchFileError(f"storage {key} is missing from the archive")
                raw = z.read(record)
                dtype = stype.dtype.newbyteorder("<" if order == "little" else ">")
                if len(raw) % dtype.itemsize:
                    raise TorchFileError(f"storage {key} has {len(raw)} bytes, not a whole number of elements")
                st = cache[key] = _Storage(stype, len(raw) // dtype.itemsize)
                st.data = np.frombuffer(raw, dtype=dtype).astype(stype.dtype)
            return cache[key]
        obj = _Unpickler(io.BytesIO(z.read(pkl[0])), storage).load()
    return _resolve(obj)


def _load_legacy(f: BinaryIO) -> Any:
    def header() -> Any:
        return _Unpickler(f, None).load()
    if header() != LEGACY_MAGIC:
        raise TorchFileError("not a PyTorch file (no zip archive, no legacy magic number)")
    if header() != LEGACY_PROTOCOL:
        raise TorchFileError("unsupported legacy PyTorch protocol version")
    info = header()
    little = bool(info.get("little_endian", True)) if isinstance(info, dict) else True
    roots: dict[str, _Storage] = {}
    views: dict[str, _Storage] = {}

    def storage(pid: tuple) -> _Storage:
        _, stype, key, _location, numel = pid[:5]
        view = pid[5] if len(pid) > 5 else None
        key = str(key)
        root = roots.setdefault(key, _Storage(stype, numel))
        if view is None:
            return root
        view_key, offset, view_size = view
        return views.setdefault(str(view_key), _Storage(stype, view_size, root, offset))
    obj = _Unpickler(f, storage).load()
    keys = header()
    for key in keys:
        st = roots.get(str(key))
        if st is None:
            raise TorchFileError(f"storage {key} is listed but never used")
        (count,) = struct.unpack("<q" if little else ">q", _read_exact(f, 8))
        dtype = st.stype.dtype.newbyteorder("<" if little else ">")
        st.data = np.frombuffer(_read_exact(f, count * dtype.itemsize), dtype=dtype).astype(st.stype.dtype)
        st.numel = count
    return _resolve(obj)


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise TorchFileError("file ends inside a storage: truncated")
    return data


def load(path: str | os.PathLike) -> Any:
    """Read a PyTorch checkpoint file (either format) into plain Python objects with NumPy arrays."""
    path = Path(path)
    if not path.is_file():
        raise TorchFileError(f"file not found: {path}")
    try:
        with open(path, "rb") as f:
            if zipfile.is_zipfile(f):
                f.seek(0)
                return _load_zip(f)
            f.seek(0)
            return _load_legacy(f)
    except TorchFileError as exc:
        raise TorchFileError(f"{path}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, KeyError, ValueError, TypeError,
            AttributeError, IndexError, struct.error, UnicodeDecodeError) as exc:
        raise TorchFileError(f"{path} is not a readable PyTorch file ({type(exc).__name__}: {exc})") from None
