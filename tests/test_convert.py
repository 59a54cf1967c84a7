"""Converter: wrappers, strictness, error messages, the command-line tool on a real .pth, orbax round trip."""
from __future__ import annotations

import subprocess
import sys

import chex
import numpy as np
import pytest
import torch

from ecformer_jax import convert, models
from ecformer_jax.convert.weight_rule import state_dict_from_fixture
from tests import parity
from tests.conftest import ROOT


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
    with pytest.raises(convert.CheckpointError, match=r"conv\.10\.bias -> params/conv5/bias: checkpoint gives shape \(7,\)"):
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


def test_cli_converts_a_real_pth_and_loads_back(tmp_path, disc_sd, disc_fixture):
    npz, _ = disc_fixture
    pth = tmp_path / "dis_00001.pth"
    torch.save({"netD": disc_sd}, pth)
    out = tmp_path / "converted"
    cmd = [sys.executable, str(ROOT / "tools" / "convert_torch.py"), "--model", "fuseformer_discriminator",
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
    bad = subprocess.run(cmd[:3] + ["sttn_discriminator"] + cmd[4:-1] + [str(tmp_path / "x")],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "conv.0.weight_orig -> params/conv0/kernel: checkpoint gives shape" in bad.stderr
