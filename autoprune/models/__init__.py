"""Models: built-in networks by name, a user's own factory by import or file path."""

from autoprune.models import _builtin  # noqa: F401  (register the built-in models)
from autoprune.models._checkpoint import load_checkpoint
from autoprune.models._registry import (
    ModelSpec,
    create_model,
    is_user_model,
    list_models,
    model_fingerprint,
    register_model,
)

__all__ = [
    "ModelSpec",
    "create_model",
    "model_fingerprint",
    "is_user_model",
    "list_models",
    "load_checkpoint",
    "register_model",
]
