"""The registry owns every per-model fact: kinds, tasks, call convention, size rules, protocols, discriminators."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from ecformer_jax import convert, errors, models
from ecformer_jax.convert import state_dict
from ecformer_jax.models import Kind, ProtocolDefaults, SizeRule, registry


@pytest.mark.parametrize("name", models.names(Kind.INPAINTING))
def test_every_inpainting_generator_declares_its_facts(name):
    entry = models.get(name)
    assert entry.kind == "inpainting" and entry.task == "inpainting"
    assert isinstance(entry.protocol, ProtocolDefaults)
    assert entry.protocol.local_frames == entry.local_frames
    rule = entry.size_rule(models.build(name))
    assert isinstance(rule, SizeRule) and rule.multiple[0] % 4 == 0 and rule.multiple[1] % 4 == 0
    # every generator here has a discriminator, and it is a registered one
    assert entry.discriminator is not None
    assert models.get(entry.discriminator).kind == Kind.DISCRIMINATOR
    assert entry.wrappers == registry.GENERATOR_WRAPPERS


def test_default_discriminators_and_families():
    disc = {n: models.get(n).discriminator for n in models.names("inpainting")}
    assert disc["sttn"] == "sttn_discriminator" and disc["dstt"] == "dstt_discriminator"
    assert disc["ecformer"] == "ecformer_discriminator"
    for name in ("fuseformer", "e2fgvi", "e2fgvi_hq", "poolformer", "swin", "focal"):
        assert disc[name] == "fuseformer_discriminator", name
    families = {n: models.get(n).protocol.family for n in models.names("inpainting")}
    assert families == {"sttn": "sttn", "fuseformer": "fuseformer", "dstt": "dstt", "e2fgvi": "e2fgvi",
                        "e2fgvi_hq": "e2fgvi", "ecformer": "fuseformer", "poolformer": "fuseformer",
                        "swin": "fuseformer", "focal": "fuseformer"}
    assert models.get("e2fgvi").extra_losses == ("flow",) and models.get("sttn").extra_losses == ()


def test_kinds_tasks_and_models_without_protocol():
    assert {e.value for e in Kind} == {"inpainting", "super_resolution", "discriminator", "flow", "backbone",
                                       "block", "feature"}
    assert {models.get(n).kind for n in models.names()} == set(Kind)
    vsr = models.get("vsr_transformer")
    assert vsr.kind == "super_resolution" and vsr.task == "super_resolution"
    assert vsr.protocol is None and vsr.size_rule(models.build("vsr_transformer")) is None
    for name in ("sttn_discriminator", "spynet", "i3d", "swin_tiny", "swin_block"):
        entry = models.get(name)
        assert entry.task is None and entry.protocol is None and entry.discriminator is None, name
    assert models.get("sttn_discriminator").wrappers == registry.DISCRIMINATOR_WRAPPERS
    assert models.names("flow") == models.names(Kind.FLOW) == ["raft", "recurrent_flow_completion", "spynet"]


def test_register_refuses_unknown_kinds_and_incomplete_generators():
    args = ("nope", models.get("fuseformer").module, None, None)
    with pytest.raises(ValueError, match="unknown kind 'painting'"):
        models.register(*args, kind="painting")
    with pytest.raises(ValueError, match="must declare its size_rule and protocol"):
        models.register(*args, kind="inpainting")
    with pytest.raises(ValueError, match="disagrees with its inputs"):
        models.register(*args, kind="inpainting", size_rule=lambda m: SizeRule(None),
                        protocol=ProtocolDefaults("x", local_frames=True))
    with pytest.raises(ValueError, match="only inpainting generators have a protocol"):
        models.register(*args, kind="flow", protocol=ProtocolDefaults("x"))
    with pytest.raises(ValueError, match="inputs"):
        models.register(*args, kind="flow", inputs=("masks",))
    assert "nope" not in models.names()


def test_call_convention():
    x, m = jnp.zeros((1, 2, 8, 8, 3)), jnp.zeros((1, 2, 8, 8, 1))
    assert models.get("sttn").call_args(x, m, 2) == ((x, m), {})
    assert models.get("fuseformer").call_args(x, m, 2) == ((x,), {})
    assert models.get("e2fgvi_hq").call_args(x, m, 2) == ((x,), {"num_local_frames": 2})
    assert models.get("sttn").takes_masks and not models.get("e2fgvi").takes_masks
    with pytest.raises(ValueError, match="not an inpainting generator"):
        models.generate("spynet", None, {}, x, m)


def test_sttn_size_rule_is_the_lcm_of_its_patch_sizes():
    """The attention tiles the H/4 x W/4 map by every patch size: the multiple is 4 x lcm, not 4 x max; the
    size rule, the size check and the example inputs agree."""
    model = models.build("sttn", channels=16, num_blocks=1, patch_sizes=((4, 5), (5, 4)))
    assert model.size_multiple() == (80, 80)  # 4 x max would be 20x20, which 4x5 patches do not tile
    assert models.get("sttn").size_rule(model) == SizeRule((80, 80), (80, 80))  # 432 is no multiple of 80
    x, _ = models.get("sttn").example_inputs(model)
    assert x.shape[2:4] == (80, 80)
    jax.eval_shape(lambda: models.init(model, "sttn"))
    with pytest.raises(ValueError, match="H must be a multiple of 80 and W of 80"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1, 20, 20, 3)), None)
    official = models.build("sttn")
    assert official.size_multiple() == (240, 432)
    assert models.get("sttn").size_rule(official) == SizeRule((240, 432), (240, 432))


def test_checkpoint_error_is_one_class():
    assert convert.CheckpointError is state_dict.CheckpointError is errors.CheckpointError
    assert issubclass(errors.CheckpointError, ValueError)
    assert state_dict.unwrap({"netG": {"w": jnp.zeros(1)}}).keys() == {"w"}
