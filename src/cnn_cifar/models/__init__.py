"""Models by name: the registry (builder + recipe per model) and the networks that register in it."""
from __future__ import annotations

from .registry import ModelEntry, Recipe, build_model, get_entry, list_models, options_of, recipe, register, unregister

# The import order is the registration order: the order of --model's choices and of the help's recipe values.
# isort: off
from .simple_cnn import SimpleCNN            # registers "cnn"
from .resnet import ResNet                   # registers "resnet8" ... "resnet110"
from .net_basic import NetBasic              # registers "net-basic"
from .net_dilated import NetDilated          # registers "net-dilated"
from .cifarnet import CIFARNet               # registers "cifarnet"
from .senet import SENet                     # registers "senet"
from .airbench import Airbench94             # registers "airbench94"
# isort: on

__all__ = ["Airbench94", "CIFARNet", "ModelEntry", "NetBasic", "NetDilated", "Recipe", "ResNet", "SENet", "SimpleCNN",
           "build_model", "get_entry", "list_models", "options_of", "recipe", "register", "unregister"]
