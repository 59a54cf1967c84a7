"""Model registry: `models.build(name, **overrides)`, `models.names()`, `models.get(name)`."""
from ecformer_jax.models.registry import build, generate, get, init, name_of, names, register

# importing a model file registers it
from ecformer_jax.models import (  # noqa: E402,F401
    backbones, discriminators, dstt, e2fgvi, ecformer, fuseformer, i3d, mixers, spynet, sttn, vsr_transformer,
)

__all__ = ["build", "generate", "get", "init", "name_of", "names", "register"]
