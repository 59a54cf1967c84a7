"""Model registry: `models.build(name, **overrides)`, `models.names()`, `models.get(name)` (the entry that owns
a model's facts: kind, task, call convention, size rule, protocol defaults, discriminator, extra losses)."""
# importing a model file registers it
from ecformer_jax.models import (  # noqa: F401
    backbones,
    discriminators,
    dstt,
    e2fgvi,
    ecformer,
    flow_completion,
    fuseformer,
    i3d,
    mixers,
    propainter,
    raft,
    spynet,
    sttn,
    vsr_transformer,
)
from ecformer_jax.models.registry import (
    Kind,
    ModelEntry,
    ProtocolDefaults,
    SizeRule,
    build,
    generate,
    get,
    init,
    name_of,
    names,
    register,
)

__all__ = ["Kind", "ModelEntry", "ProtocolDefaults", "SizeRule", "build", "generate", "get", "init", "name_of",
           "names", "register"]
