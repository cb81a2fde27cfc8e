"""Models by name: the registry (builder + recipe per model) and the networks that register in it."""
from __future__ import annotations

from .registry import (ModelEntry, Recipe, build_model, get_entry, list_models, options_of, recipe, register,
                       unregister)
from .simple_cnn import SimpleCNN            # registers "cnn"
from .resnet import ResNet                   # registers "resnet8" ... "resnet110"

__all__ = ["ModelEntry", "Recipe", "ResNet", "SimpleCNN", "build_model", "get_entry", "list_models", "options_of", "recipe",
           "register", "unregister"]
