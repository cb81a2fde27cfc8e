"""Interoperability with PyTorch: its checkpoint files read and written without torch, and state dicts
converted to and from our checkpoints."""
from .convert import KEY_STYLES, find_state_dict, from_torch, to_torch
from .torch_file import TorchFileError, load
from .torch_write import save

__all__ = ["KEY_STYLES", "TorchFileError", "find_state_dict", "from_torch", "load", "save", "to_torch"]
