"""Interoperability: PyTorch checkpoint files read and written without torch, state dicts converted to and
from our checkpoints, and models exported to ONNX (the ``onnx`` package is needed only for that, and imported
only when exporting)."""
from .convert import KEY_STYLES, find_state_dict, from_torch, to_torch
from .onnx_export import OPSET, OnnxExportError, model_to_onnx, save_onnx, to_onnx
from .torch_file import TorchFileError, load
from .torch_write import save

__all__ = ["KEY_STYLES", "OPSET", "OnnxExportError", "TorchFileError", "find_state_dict", "from_torch", "load",
           "model_to_onnx", "save", "save_onnx", "to_onnx", "to_torch"]
