"""Model zoo: build classifiers by name; helpers for what state is shared."""

from . import convnet, lenet, mlp, resnet18  # noqa: F401  (register models)
from .errors import ModelError
from .lenet import init_uniform
from .normalize import Normalize, input_statistics
from .registry import available_models, build_model, register_model
from .state import bn_layers, bn_state_keys, shared_state_keys

__all__ = [
    "ModelError",
    "Normalize",
    "available_models",
    "bn_layers",
    "bn_state_keys",
    "build_model",
    "init_uniform",
    "input_statistics",
    "register_model",
    "shared_state_keys",
]
