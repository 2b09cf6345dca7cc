"""Models: built-in networks by name, a user's own factory by import or file path."""

from autoprune.models import _builtin  # noqa: F401  (register the built-in models)
from autoprune.models._checkpoint import load_checkpoint
from autoprune.models._registry import (
    ModelSpec,
    canonical_name,
    create_model,
    factory_source_hash,
    is_user_model,
    list_models,
    model_fingerprint,
    register_model,
    resolve_factory,
)

__all__ = [
    "ModelSpec",
    "canonical_name",
    "create_model",
    "factory_source_hash",
    "model_fingerprint",
    "is_user_model",
    "list_models",
    "load_checkpoint",
    "register_model",
    "resolve_factory",
]
