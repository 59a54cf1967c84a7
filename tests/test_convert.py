"""Converter: wrappers, strictness, error messages, the command line (`python -m ecformer_jax.convert`) on a
real .pth and on a training workdir, orbax round trip, and the one loader `convert.resolve`."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch

from ecformer_jax import convert, models
from ecformer_jax.convert.__main__ import main as convert_main
from ecformer_jax.convert.weight_rule import state_dict_from_fixture
from tests import parity
from tests.conftest import ROOT

TINY_FUSEFORMER = {"num_blocks": 1, "resize_embeddings": True}


@pytest.fixture(scope="module")
def disc_fixture(parity_dir):
    return parity.load(parity_dir, "fuseformer_discriminator")


@pytest.fixture(scope="module")
def disc_sd(disc_fixture):
    return {k: torch.from_numpy(v) for k, v in state_dict_from_fixture(disc_fixture[0]).items()}


def _logits(variables, npz):
    frames, _ = parity.inputs(npz)
    return np.asarray(models.build("fuseformer_discriminator").apply(variables, frames))


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"netD": sd},
    lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
    lambda sd: {"params": sd, "epoch": 3},
])
def test_wrapped_layouts_convert_identically(disc_sd, wrap):
    ref = convert.from_torch("fuseformer_discriminator", disc_sd)
    got = convert.from_torch("fuseformer_discriminator", wrap(dict(disc_sd)))
    chex.assert_trees_all_equal(ref, got)


def test_missing_and_unexpected_keys_are_listed(disc_sd):
    sd = dict(disc_sd)
    del sd["conv.4.weight_orig"]
    sd["conv.99.weight"] = torch.zeros(3)
    with pytest.raises(convert.CheckpointError) as e:
        convert.from_torch("fuseformer_discriminator", sd)
    msg = str(e.value)
    assert "missing keys (1): conv.4.weight_orig" in msg
    assert "unexpected keys (1): conv.99.weight" in msg


def test_wrong_shape_names_the_key(disc_sd):
    sd = dict(disc_sd)
    sd["conv.10.bias"] = torch.zeros(7)
    with pytest.raises(convert.CheckpointError,
                       match=r"conv\.10\.bias -> params/conv5/bias: checkpoint gives shape \(7,\)"):
        convert.from_torch("fuseformer_discriminator", sd)


def test_wrong_model_is_refused(disc_sd):
    with pytest.raises(convert.CheckpointError, match="does not match model 'sttn'"):
        convert.from_torch("sttn", disc_sd)


def test_unknown_model_and_option():
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        models.build("nope")
    with pytest.raises(TypeError, match="has no option"):
        models.build("sttn", heads=3)


def test_no_state_dict_inside():
    with pytest.raises(convert.CheckpointError, match="could not find a state_dict"):
        convert.from_torch("fuseformer_discriminator", {"optimizer": {"lr": 1.0}})


@pytest.mark.slow
def test_cli_converts_a_real_pth_and_loads_back(tmp_path, disc_sd, disc_fixture):
    npz, _ = disc_fixture
    pth = tmp_path / "dis_00001.pth"
    torch.save({"netD": disc_sd}, pth)
    out = tmp_path / "converted"
    cmd = [sys.executable, "-m", "ecformer_jax.convert", "--model", "fuseformer_discriminator",
           "--checkpoint", str(pth), "--output", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert "converted fuseformer_discriminator: 4,461,728 parameters" in res.stdout
    name, overrides, variables = convert.load(out)
    assert name == "fuseformer_discriminator" and overrides == {}
    ref = convert.from_torch("fuseformer_discriminator", disc_sd)
    np.testing.assert_array_equal(_logits(variables, npz), _logits(ref, npz))
    # a second run does not overwrite without --overwrite
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2 and "exists" in res.stderr
    # a checkpoint of another model fails naming the mismatching keys
    bad = subprocess.run(cmd[:4] + ["sttn_discriminator"] + cmd[5:-1] + [str(tmp_path / "x")],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "conv.0.weight_orig -> params/conv0/kernel: checkpoint gives shape" in bad.stderr


# --- training workdirs and the one loader -------------------------------------------------------------------
def random_params(name, overrides, seed=0):
    """{'params': random numpy arrays} of the model's shapes, without running its initialisers."""
    model = models.build(name, **overrides)
    shapes = jax.eval_shape(lambda: models.init(model, name, jax.random.key(0)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: (0.02 * rng.standard_normal(a.shape)).astype(a.dtype), shapes)


def fake_workdir(root, name, overrides, params_by_step):
    """A training workdir as `python -m ecformer_jax.train` leaves it (config.json, checkpoints/<step>/state
    with the train state's g_params), without training: {step: {'params': ...}}."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"model": {"name": name, "overrides": overrides, "remat": False},
                                                  "seed": 0, "num_steps": max(params_by_step)}))
    checkpointer = ocp.StandardCheckpointer()
    for step, variables in params_by_step.items():
        params = variables["params"]
        state = {"step": np.int32(step), "g_params": params, "g_opt": {"mu": jax.tree.map(np.zeros_like, params)},
                 "bad_step": np.int32(-1)}
        checkpointer.save((root / "checkpoints" / str(step) / "state").absolute(), state)
    checkpointer.wait_until_finished()
    return root


@pytest.fixture(scope="module")
def tiny_workdir(tmp_path_factory):
    """A fuseformer workdir with checkpoints of steps 1 and 3 (different parameters)."""
    steps = {1: random_params("fuseformer", TINY_FUSEFORMER, seed=1), 3: random_params("fuseformer", TINY_FUSEFORMER)}
    root = fake_workdir(tmp_path_factory.mktemp("run") / "run", "fuseformer", dict(TINY_FUSEFORMER), steps)
    return root, steps


def _equal(a, b):
    return all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))


def test_resolve_pth_converted_folder_and_workdir(tmp_path, disc_sd, tiny_workdir):
    pth = tmp_path / "dis.pth"
    torch.save({"netD": disc_sd}, pth)
    ref = convert.from_torch("fuseformer_discriminator", disc_sd)
    got = convert.resolve(pth, model="fuseformer_discriminator", expect="discriminator")
    assert got.name == "fuseformer_discriminator" and got.source == str(pth) and _equal(got.variables, ref)
    folder = convert.save(tmp_path / "converted", "fuseformer_discriminator", ref)
    got = convert.resolve(folder, dtype="bfloat16")
    assert got.name == "fuseformer_discriminator" and got.source == folder and _equal(got.variables, ref)
    assert got.model.dtype == np.dtype("bfloat16")

    root, steps = tiny_workdir
    latest = convert.resolve(root, expect="inpainting")
    assert latest.name == "fuseformer" and latest.source.endswith("checkpoints/3")
    assert latest.model.num_blocks == 1 and latest.model.resize_embeddings  # the config's overrides
    assert _equal(latest.variables, steps[3]) and set(latest.variables) == {"params"}
    assert _equal(convert.resolve(root, model="fuseformer", step=1).variables, steps[1])


def test_resolve_errors_name_the_file_and_the_problem(tmp_path, disc_sd, tiny_workdir):
    root, _ = tiny_workdir
    pth = tmp_path / "dis.pth"
    torch.save(disc_sd, pth)
    folder = convert.save(tmp_path / "spynet", "spynet", random_params("spynet", {}))
    cases = [
        (dict(path=tmp_path / "none.pth", model="sttn"), convert.CheckpointError, "checkpoint not found: .*none.pth"),
        (dict(path=pth), ValueError, "--model is required with a .pth checkpoint"),
        (dict(path=pth, model="nope"), ValueError, "unknown model 'nope'"),
        (dict(path=pth, model="fuseformer_discriminator", expect="inpainting"), ValueError,
         "model 'fuseformer_discriminator' is not an inpainting model \\(its kind is 'discriminator'\\)"),
        (dict(path=pth, model="sttn_discriminator"), convert.CheckpointError, "does not match model"),
        (dict(path=pth, model="fuseformer_discriminator", step=2), ValueError, "applies to a training workdir"),
        (dict(path=folder, model="i3d"), convert.CheckpointError,
         "spynet holds a converted 'spynet' checkpoint, not 'i3d'"),
        (dict(path=folder, expect="super_resolution"), ValueError, "'spynet' is not a super-resolution model"),
        (dict(path=tmp_path), convert.CheckpointError,
         "is a folder but not a converted checkpoint .* nor a training workdir"),
        (dict(path=root, model="sttn"), convert.CheckpointError, "holds a trained 'fuseformer' checkpoint, not 'sttn'"),
        (dict(path=root, step=2), convert.CheckpointError, r"no checkpoint of step 2 in .*; available: \[1, 3\]"),
    ]
    for kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            convert.resolve(**kwargs)
    empty = tmp_path / "empty_run"
    (empty / "checkpoints").mkdir(parents=True)
    shutil.copy(root / "config.json", empty / "config.json")
    with pytest.raises(convert.CheckpointError, match="no checkpoints in"):
        convert.resolve(empty)
    # a workdir whose parameters do not fit its config: every key and shape is checked
    odd = fake_workdir(tmp_path / "odd_run", "fuseformer", {"num_blocks": 2, "resize_embeddings": True},
                       {1: random_params("fuseformer", TINY_FUSEFORMER)})
    with pytest.raises(convert.CheckpointError, match="does not match model 'fuseformer'.*no value for"):
        convert.resolve(odd)


def test_check_variables_is_public():
    expected = {"params": {"a": jax.ShapeDtypeStruct((2, 3), np.float32)}}
    convert.check_variables("x", expected, {"params": {"a": np.zeros((2, 3))}})
    with pytest.raises(convert.CheckpointError, match=r"w -> params/a: checkpoint gives shape \(3, 2\)"):
        got = np.zeros((3, 2))
        convert.check_variables("x", expected, {"params": {"a": got}}, {id(got): "w"})
    with pytest.raises(convert.CheckpointError, match=r"no value for \['params/a'\].*does not have: \['params/b'\]"):
        convert.check_variables("x", expected, {"params": {"b": np.zeros((2, 3))}})


def test_cli_exports_a_training_workdir(tiny_workdir, tmp_path, capsys):
    root, steps = tiny_workdir
    assert convert_main(["--checkpoint", str(root), "--output", str(tmp_path / "latest")]) == 0
    assert "converted fuseformer:" in capsys.readouterr().out
    name, overrides, variables = convert.load(tmp_path / "latest")
    assert name == "fuseformer" and overrides == TINY_FUSEFORMER and _equal(variables, steps[3])
    meta = json.loads((tmp_path / "latest" / convert.META).read_text())
    assert meta["source"].endswith("checkpoints/3")
    assert convert_main(["--checkpoint", str(root), "--step", "1", "--model", "fuseformer",
                         "--output", str(tmp_path / "first")]) == 0
    assert _equal(convert.resolve(tmp_path / "first").variables, steps[1])
    # the exported folder loads like the workdir itself
    a, b = convert.resolve(tmp_path / "latest"), convert.resolve(root)
    assert a.model == b.model and _equal(a.variables, b.variables)
    capsys.readouterr()
    for args, message in ((["--output", str(tmp_path / "latest")], "exists"),
                          (["--output", str(tmp_path / "x"), "--model", "sttn"], "not 'sttn'"),
                          (["--output", str(tmp_path / "x"), "--option", "num_blocks=2"], "not from --option"),
                          (["--output", str(tmp_path / "x"), "--step", "7"], "available: [1, 3]")):
        assert convert_main(["--checkpoint", str(root), *args]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert convert_main(["--checkpoint", str(root), "--output", str(tmp_path / "x"), "--option", "depth"]) == 2
    assert "--option expects KEY=VALUE" in capsys.readouterr().err


def test_parse_overrides():
    assert convert.parse_overrides(["a=1", "b=true", "c=[[2, 3], [1, 1]]", "d=name"]) == {
        "a": 1, "b": True, "c": ((2, 3), (1, 1)), "d": "name"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        convert.parse_overrides(["x"])
