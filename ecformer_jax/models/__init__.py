"""Model registry: `models.build(name, **overrides)`, `models.names()`, `models.get(name)`."""
from ecformer_jax.models.registry import build, get, init, name_of, names, register

# importing a model file registers it
from ecformer_jax.models import discriminators, fuseformer, sttn  # noqa: E402,F401

__all__ = ["build", "get", "init", "name_of", "names", "register"]
