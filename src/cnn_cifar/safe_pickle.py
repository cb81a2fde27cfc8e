"""Pickle loading that refuses anything but plain data and NumPy arrays.

Both the CIFAR batch files and our checkpoints are pickles; a pickle can name any callable and so
run code on load. This unpickler resolves only the few NumPy globals that arrays, dtypes and
scalars need (and OrderedDict); everything else raises UnsafePickleError.
"""
from __future__ import annotations

import io
import pickle
from typing import Any, BinaryIO

ALLOWED_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),        # protocol-2 pickles written by Python 3 encode bytes with it
}


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside the allowed list."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose find_class resolves only ALLOWED_GLOBALS."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            if module.startswith("numpy"):
                import numpy  # noqa: PLC0415 - resolved lazily, host-side only
                if name == "_reconstruct":
                    return numpy.ndarray.__reduce__(numpy.zeros(0))[0]
                if name == "scalar":
                    return numpy.float64(0).__reduce__()[0]
                return getattr(numpy, name)
            return super().find_class(module, name)
        raise UnsafePickleError(f"refusing to load global '{module}.{name}'")


def load(f: BinaryIO, encoding: str = "ASCII") -> Any:
    """pickle.load through the restricted unpickler."""
    return RestrictedUnpickler(f, encoding=encoding).load()


def loads(data: bytes, encoding: str = "ASCII") -> Any:
    return load(io.BytesIO(data), encoding=encoding)
