"""I3D: the 'same' padding rule, the converter (official key layout, round trip, strictness) and the forward
against a PyTorch transcription of the pytorch-i3d port (Unit3D, MaxPool3dSamePadding, InceptionModule,
the whole end-point stack) written here from its description."""
from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ecformer_jax import convert, models
from ecformer_jax.convert.weight_rule import rule_value
from ecformer_jax.evaluation.i3d import I3DFeatures, load_i3d_variables
from ecformer_jax.models import i3d as i3d_model

# --- a PyTorch transcription (NCTHW) ---------------------------------------------------------------
MIXED = {  # in channels, branch widths
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)), "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)), "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)), "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)), "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


def torch_same_pad(x, kernel, stride):
    """Zero-pad an NCTHW tensor with the port's rule: total = k - s if s | n else k - n % s (>= 0),
    front = total // 2."""
    pads = []
    for n, k, s in zip(x.shape[2:], kernel, stride):
        total = max(k - s, 0) if n % s == 0 else max(k - n % s, 0)
        pads.append((total // 2, total - total // 2))
    (tf, tb), (hf, hb), (wf, wb) = pads
    return F.pad(x, (wf, wb, hf, hb, tf, tb))


class TUnit(torch.nn.Module):
    def __init__(self, cin, cout, kernel=(1, 1, 1), stride=(1, 1, 1), bn=True, bias=False, relu=True):
        super().__init__()
        self.kernel, self.stride, self.relu = kernel, stride, relu
        self.conv3d = torch.nn.Conv3d(cin, cout, kernel, stride, padding=0, bias=bias)
        self.bn = torch.nn.BatchNorm3d(cout, eps=1e-3) if bn else None

    def forward(self, x):
        x = self.conv3d(torch_same_pad(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class TPool(torch.nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x):
        return F.max_pool3d(torch_same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class TMixed(torch.nn.Module):
    def __init__(self, cin, w):
        super().__init__()
        self.b0 = TUnit(cin, w[0])
        self.b1a, self.b1b = TUnit(cin, w[1]), TUnit(w[1], w[2], (3, 3, 3))
        self.b2a, self.b2b = TUnit(cin, w[3]), TUnit(w[3], w[4], (3, 3, 3))
        self.b3a, self.b3b = TPool((3, 3, 3), (1, 1, 1)), TUnit(cin, w[5])

    def forward(self, x):
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


class TI3D(torch.nn.Module):
    def __init__(self, num_classes=400):
        super().__init__()
        self.order = []

        def add(name, module):
            self.add_module(name, module)
            self.order.append(name)

        add("Conv3d_1a_7x7", TUnit(3, 64, (7, 7, 7), (2, 2, 2)))
        add("MaxPool3d_2a_3x3", TPool((1, 3, 3), (1, 2, 2)))
        add("Conv3d_2b_1x1", TUnit(64, 64))
        add("Conv3d_2c_3x3", TUnit(64, 192, (3, 3, 3)))
        add("MaxPool3d_3a_3x3", TPool((1, 3, 3), (1, 2, 2)))
        for name in ("Mixed_3b", "Mixed_3c"):
            add(name, TMixed(*MIXED[name]))
        add("MaxPool3d_4a_3x3", TPool((3, 3, 3), (2, 2, 2)))
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            add(name, TMixed(*MIXED[name]))
        add("MaxPool3d_5a_2x2", TPool((2, 2, 2), (2, 2, 2)))
        for name in ("Mixed_5b", "Mixed_5c"):
            add(name, TMixed(*MIXED[name]))
        self.logits = TUnit(1024, num_classes, bn=False, bias=True, relu=False)

    def forward(self, x):
        ends = {}
        for name in self.order:
            x = getattr(self, name)(x)
            ends[name] = x
        return x.mean(4).mean(3).mean(2), ends


def random_state_dict(salt="i3d", counters=True):
    """A state_dict in the official layout with weight-rule values (BN running_var > 0)."""
    sd = {}
    for name, t in TI3D().state_dict().items():
        if name.endswith("num_batches_tracked"):
            if counters:
                sd[name] = torch.tensor(7)
            continue
        sd[name] = torch.from_numpy(rule_value(name, t.shape, salt))
    return sd


def torch_reference(sd):
    net = TI3D()
    net.load_state_dict(sd, strict=True)  # checks that the layout above is the one the converter reads
    return net.eval()


@functools.cache
def _converted(counters=True):
    return convert.from_torch("i3d", random_state_dict(counters=counters))


# --- tests -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,k,s,expected", [(8, 7, 2, (2, 3)), (9, 7, 2, (3, 3)), (5, 3, 2, (1, 1)),
                                            (6, 3, 2, (0, 1)), (4, 2, 2, (0, 0)), (5, 2, 2, (0, 1)),
                                            (10, 3, 1, (1, 1)), (3, 1, 1, (0, 0))])
def test_same_padding_rule(n, k, s, expected):
    assert i3d_model.same_padding(n, k, s) == expected


def test_converter_round_trip_official_layout():
    sd = random_state_dict()
    variables = _converted()
    assert set(variables) == {"params", "batch_stats"}
    # invert the mapping by hand and compare every tensor
    seen = set()
    for key, value in sd.items():
        if key.endswith("num_batches_tracked"):
            continue
        module, _, leaf = key.rpartition(".")
        parts = module.split(".")
        if parts[-1] == "conv3d":
            node = functools.reduce(lambda d, p: d[p], parts[:-1], variables["params"])
            ours = np.moveaxis(node["kernel"], (-1, -2), (0, 1)) if leaf == "weight" else node["bias"]
        else:  # bn
            coll = "params" if leaf in ("weight", "bias") else "batch_stats"
            node = functools.reduce(lambda d, p: d[p], parts, variables[coll])
            ours = node[{"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}[leaf]]
        np.testing.assert_array_equal(np.asarray(ours), value.numpy(), err_msg=key)
        seen.add(key)
    n_ours = sum(np.size(a) for a in jax.tree.leaves(variables))
    n_torch = sum(v.numel() for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    assert n_ours == n_torch == 12_697_264 + sum(v.numel() for k, v in sd.items() if "running" in k)
    # old checkpoints (i3d_rgb_imagenet.pt predates num_batches_tracked) convert too, to the same values
    old = _converted(counters=False)
    chex_equal = jax.tree.map(lambda a, b: np.array_equal(a, b), variables, old)
    assert all(jax.tree.leaves(chex_equal))


def test_converter_is_strict():
    sd = random_state_dict(counters=False)
    del sd["Mixed_4c.b1b.bn.running_var"]
    sd["extra.weight"] = torch.zeros(3)
    with pytest.raises(convert.CheckpointError, match=r"Mixed_4c\.b1b\.bn\.running_var.*extra\.weight"):
        convert.from_torch("i3d", sd)
    sd = random_state_dict(counters=False)
    sd["logits.conv3d.weight"] = torch.zeros(157, 1024, 1, 1, 1)  # a Charades head
    with pytest.raises(convert.CheckpointError, match=r"logits\.conv3d\.weight.*\(1, 1, 1, 1024, 157\).*400"):
        convert.from_torch("i3d", sd)


def test_unit_pool_and_inception_block_match_torch():
    """One Unit3D (7x7x7, stride 2, odd sizes -> asymmetric padding), the zero-padded max pool and one
    Inception block against the transcription."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (2, 5, 11, 14, 3)).astype(np.float32)
    tx = torch.from_numpy(np.moveaxis(x, -1, 1).copy())

    unit = TUnit(3, 8, (7, 7, 7), (2, 2, 2)).eval()
    with torch.no_grad():
        unit.bn.running_mean.uniform_(-0.5, 0.5)
        unit.bn.running_var.uniform_(0.5, 2)
        unit.bn.weight.uniform_(0.5, 1.5)
        unit.bn.bias.uniform_(-0.5, 0.5)
        ref = np.moveaxis(unit(tx).numpy(), 1, -1)
    sd = convert.TorchStateDict({f"u.{k}": v for k, v in unit.state_dict().items()})
    params, stats = i3d_model._unit_from_torch(sd, "u")
    ours = i3d_model.Unit3D(8, (7, 7, 7), (2, 2, 2)).apply({"params": params, "batch_stats": stats}, x)
    assert ours.shape == ref.shape == (2, 3, 6, 7, 8)
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-5, atol=1e-5)

    for kernel, stride in (((1, 3, 3), (1, 2, 2)), ((3, 3, 3), (2, 2, 2)), ((2, 2, 2), (2, 2, 2))):
        y = x - 0.5  # negative values: the zero padding shows in the max
        ref = np.moveaxis(TPool(kernel, stride)(torch.from_numpy(np.moveaxis(y, -1, 1).copy())).numpy(), 1, -1)
        ours = np.asarray(i3d_model.max_pool_same(y, kernel, stride))
        assert ours.shape == ref.shape
        np.testing.assert_array_equal(ours, ref)

    block = TMixed(3, (4, 3, 5, 2, 6, 7)).eval()
    with torch.no_grad():
        ref = np.moveaxis(block(tx).numpy(), 1, -1)
    sd = convert.TorchStateDict({f"Mixed_3b.{k}": v for k, v in block.state_dict().items()})
    params, stats = {}, {}
    for b in ("b0", "b1a", "b1b", "b2a", "b2b", "b3b"):
        params[b], stats[b] = i3d_model._unit_from_torch(sd, f"Mixed_3b.{b}")
    ours = i3d_model.InceptionBlock((4, 3, 5, 2, 6, 7)).apply({"params": params, "batch_stats": stats}, x)
    assert ours.shape == ref.shape == (2, 5, 11, 14, 4 + 5 + 6 + 7)
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-5, atol=1e-5)


def test_whole_network_features_match_torch():
    """All end points and the VFID feature (Mixed_5c mean) on an odd-sized clip, converted weights."""
    sd = random_state_dict()
    net = torch_reference(sd)
    rng = np.random.default_rng(1)
    video = rng.uniform(0, 1, (1, 9, 37, 45, 3)).astype(np.float32)
    with torch.no_grad():
        ref_feat, ref_ends = net(torch.from_numpy(np.moveaxis(video, -1, 1).copy()))
    model = models.build("i3d")
    feat, state = jax.jit(functools.partial(model.apply, mutable=["intermediates"]))(_converted(), video)
    ends = state["intermediates"]
    assert feat.shape == (1, 1024) and feat.dtype == np.float32
    for name in ("Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2c_3x3", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4f",
                 "Mixed_5c"):
        ref = np.moveaxis(ref_ends[name].numpy(), 1, -1)
        ours = np.asarray(ends[f"end_points.{name}"][0])
        assert ours.shape == ref.shape, name
        scale = max(1.0, float(np.abs(ref).max()))
        assert float(np.abs(ours - ref).max()) <= 1e-4 * scale, name
    ref_feat = ref_feat.numpy()
    assert float(np.abs(ref_feat).max()) > 1e-3
    np.testing.assert_allclose(np.asarray(feat), ref_feat, rtol=0, atol=1e-4 * max(1.0, float(np.abs(ref_feat).max())))

    # the evaluation wrapper: uint8 frames / 255, one video -> float64 vector
    frames = (video[0] * 255).round().astype(np.uint8)
    extractor = I3DFeatures(_converted())
    got = extractor(frames)
    assert got.shape == (1024,) and got.dtype == np.float64
    with torch.no_grad():
        ref2, _ = net(torch.from_numpy(np.moveaxis(frames.astype(np.float32) / 255, -1, 0)[None].copy()))
    np.testing.assert_allclose(got, ref2.numpy()[0], rtol=0, atol=1e-4)


def test_bad_inputs_and_outputs():
    model = models.build("i3d")
    abstract = jax.eval_shape(lambda: _converted())
    with pytest.raises(ValueError, match="must have 3 channel"):
        jax.eval_shape(model.apply, abstract, jax.ShapeDtypeStruct((1, 3, 8, 32, 32), np.float32))
    with pytest.raises(ValueError, match="output must be one of"):
        jax.eval_shape(functools.partial(model.apply, output="mixed_5c"), abstract,
                       jax.ShapeDtypeStruct((1, 8, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match=r"Mixed_5c map is 1x2x2.*AvgPool3d\(2, 7, 7\)"):
        jax.eval_shape(functools.partial(model.apply, output="logits"), abstract,
                       jax.ShapeDtypeStruct((1, 8, 64, 64, 3), np.float32))
    out = jax.eval_shape(functools.partial(model.apply, output="logits"), abstract,
                         jax.ShapeDtypeStruct((1, 16, 224, 224, 3), np.float32))
    assert out.shape == (1, 1, 1, 1, 400)  # the official AvgPool3d((2, 7, 7)) head on a 2x7x7 Mixed_5c
    with pytest.raises(ValueError, match=r"frames must be \(T, H, W, 3\)"):
        I3DFeatures(_converted())(np.zeros((4, 3, 32, 32), np.uint8))


def test_loading_weights(tmp_path):
    with pytest.raises(convert.CheckpointError, match="I3D weights not found"):
        load_i3d_variables(tmp_path / "i3d_rgb_imagenet.pt")
    path = tmp_path / "i3d_rgb_imagenet.pt"
    torch.save(random_state_dict(counters=False), path)
    from_pt = load_i3d_variables(path)
    folder = convert.save(tmp_path / "i3d", "i3d", from_pt)
    from_dir = load_i3d_variables(folder)
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, from_pt, from_dir)))
    spynet_dir = convert.save(tmp_path / "not_i3d", "spynet", {"params": {"x": np.zeros(1, np.float32)}})
    with pytest.raises(convert.CheckpointError, match="'spynet' checkpoint, not 'i3d'"):
        load_i3d_variables(spynet_dir)


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params_and_features():
    import jax.numpy as jnp

    video = np.random.default_rng(2).uniform(0, 1, (1, 4, 32, 32, 3)).astype(np.float32)
    f32 = jax.jit(models.build("i3d").apply)(_converted(), video)
    bf16 = jax.jit(models.build("i3d", dtype=jnp.bfloat16).apply)(_converted(), video)
    assert bf16.dtype == jnp.float32 and bf16.shape == (1, 1024)
    scale = float(jnp.abs(f32).max())
    assert scale > 1e-3
    assert float(jnp.abs(bf16 - f32).max()) < 0.05 * scale
    assert float(jnp.abs(bf16 - f32).max()) > 0  # it did compute in bfloat16
