"""ecformer_jax: video inpainting and video super-resolution transformers in JAX/Flax."""
__version__ = "0.1.0"


def __getattr__(name):  # lazy: `from ecformer_jax import models, convert`
    import importlib

    if name in ("models", "convert", "layers", "data"):
        return importlib.import_module(f"ecformer_jax.{name}")
    raise AttributeError(name)
