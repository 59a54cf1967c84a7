"""RAFT beyond the parity fixture: the correlation lookup (official grid_sample semantics, chunked == dense),
the checkpoint converter (norm3 / downsample.1 aliases, prefixes, wrong networks), the parameter count, input
checks and the bidirectional call."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecformer_jax import convert, models
from ecformer_jax.convert.weight_rule import state_dict_from_fixture
from ecformer_jax.errors import CheckpointError
from ecformer_jax.layers import correlation
from ecformer_jax.layers.flow import grid_sample
from ecformer_jax.models import raft


def test_registered_as_a_flow_network_with_the_official_parameter_count():
    entry = models.get("raft")
    assert entry.kind == "flow" and entry.task is None and entry.protocol is None
    shapes = jax.eval_shape(lambda: models.init(models.build("raft"), "raft"))
    count = lambda tree: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))
    assert count(shapes["params"]) == 5_257_536  # spec: fnet 1,066,848 + cnet 1,069,728 + update_block 3,120,960
    assert count(shapes["params"]["fnet"]) == 1_066_848 and count(shapes["params"]["update_block"]) == 3_120_960


# --- correlation lookup ----------------------------------------------------------------------------
def _features_and_coords(h, w, b=2, c=16, seed=0):
    rng = np.random.default_rng(seed)
    f1 = rng.standard_normal((b, h, w, c)).astype(np.float32)
    f2 = rng.standard_normal((b, h, w, c)).astype(np.float32)
    grid = np.asarray(correlation.coords_grid(b, h, w))
    coords = grid + rng.uniform(-6, 6, grid.shape).astype(np.float32)
    coords[0, :2] = grid[0, :2] + rng.integers(-3, 4, grid[0, :2].shape)  # integer positions
    coords[1, 0, :3] = [[-40.5, 2.25], [3.0, 70.0], [1e3, -1e3]]  # windows partly / entirely outside
    return f1, f2, coords


def _official_lookup(pyramid, coords, radius=4):
    """What RAFT's CorrBlock computes, written with our grid_sample: per query pixel, its level-l map sampled
    (bilinear, zeros, align_corners=True) at coords / 2^l + (dx, dy), the window's FIRST axis moving x."""
    b, h, w, _ = coords.shape
    d = np.arange(-radius, radius + 1, dtype=np.float32)
    out = []
    for level, corr in enumerate(pyramid):
        hl, wl = corr.shape[-2:]
        maps = jnp.asarray(corr).reshape(b * h * w, hl, wl, 1)
        c = np.asarray(coords).reshape(b * h * w, 1, 1, 2) / np.float32(2 ** level)
        x = c[..., 0] + d[:, None]  # (N, 9, 9): [i, j] -> x offset d[i]
        y = c[..., 1] + d[None, :]  # y offset d[j]
        x, y = np.broadcast_arrays(x, y)
        grid = np.stack([2 * x / np.float32(wl - 1) - 1, 2 * y / np.float32(hl - 1) - 1], axis=-1)
        out.append(grid_sample(maps, jnp.asarray(grid), align_corners=True).reshape(b, h, w, -1))
    return np.concatenate([np.asarray(o) for o in out], axis=-1)


def test_dense_lookup_is_the_official_window():
    f1, f2, coords = _features_and_coords(16, 24)  # levels 16x24, 8x12, 4x6, 2x3
    pyramid = jax.jit(correlation.corr_pyramid)(jnp.asarray(f1), jnp.asarray(f2))
    assert [p.shape for p in pyramid] == [(2, 384, 16, 24), (2, 384, 8, 12), (2, 384, 4, 6), (2, 384, 2, 3)]
    lookup = jax.jit(correlation.lookup_dense)  # one compile, not one per operation
    ours = np.asarray(lookup(pyramid, jnp.asarray(coords)))
    assert ours.shape == (2, 16, 24, 4 * 81)
    np.testing.assert_allclose(ours, _official_lookup(pyramid, coords), rtol=0, atol=1e-6)
    # the first window axis moves x: at the pixel grid, tap (i, j) of level 0 is corr[y + j - 4, x + i - 4]
    grid = np.asarray(lookup(pyramid, correlation.coords_grid(2, 16, 24)))
    vol = np.asarray(pyramid[0]).reshape(2, 16, 24, 16, 24)
    assert grid[1, 5, 7, 2 * 9 + 6] == vol[1, 5, 7, 5 + 2, 7 - 2]


@pytest.mark.parametrize("h, w, chunk", [(16, 24, 100), (16, 24, 7), (8, 12, 10_000), (8, 12, 1)])
def test_chunked_lookup_equals_dense(h, w, chunk):
    """Pooling the features instead of the volume, window by window and chunk by chunk, gives the dense
    lookup (up to float32 rounding); (8, 12) has a 1x1 last level, sampled at p directly by both."""
    f1, f2, coords = _features_and_coords(h, w, seed=h + chunk)
    pyramid = jax.jit(correlation.corr_pyramid)(jnp.asarray(f1), jnp.asarray(f2))
    dense = np.asarray(jax.jit(correlation.lookup_dense)(pyramid, jnp.asarray(coords)))
    lookup = jax.jit(functools.partial(correlation.lookup_chunked, chunk=chunk))
    features = jax.jit(correlation.feature_pyramid)(jnp.asarray(f2))
    chunked = np.asarray(lookup(jnp.asarray(f1), features, jnp.asarray(coords)))
    assert np.isfinite(dense).all() and np.abs(dense).max() > 1
    np.testing.assert_allclose(chunked, dense, rtol=0, atol=2e-6 * np.abs(dense).max())
    assert (chunked[1, 0, 2, :81] == 0).all() and (dense[1, 0, 2, :81] == 0).all()  # window entirely outside


def test_auto_mode_switches_to_groups_then_chunked_for_large_volumes():
    model = models.build("raft")
    assert model.corr_mode(1, 240, 432) == "dense" and model.corr_mode(1, 1080, 1920) == "chunked"
    assert models.build("raft", corr="dense").corr_mode(1, 1080, 1920) == "dense"
    # 720p: one pair's pyramid (830 MB) fits, eight do not: dense one pair at a time
    assert model.corr_group(8, 720, 1280) == 1 and model.corr_group(6, 240, 432) == 6
    assert models.build("raft", corr="chunked").corr_group(1, 64, 64) == 0


@pytest.mark.slow
def test_dense_pairs_in_groups_equal_one_dense_call(monkeypatch):
    """2 clips x 2 pairs of 64x64 with room for 1 pyramid per clip at a time: two steps of one pair of each clip
    (the clips' rows stay apart, as a batch sharded by clip needs), the same flows as one dense call."""
    model = models.build("raft")
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.uniform(-1, 1, (4, 64, 64, 3)), jnp.float32)
    b = jnp.roll(a, 2, axis=2)
    variables = models.init(model, "raft")
    run = lambda m: np.asarray(jax.jit(lambda v: m.apply(v, a, b, 3, clips=2)[1])(variables))  # noqa: E731
    whole = run(model)
    monkeypatch.setattr(raft, "DENSE_LIMIT_BYTES", 64 * 64 * 4)
    assert model.corr_group(2, 64, 64) == 1
    np.testing.assert_allclose(run(models.build("raft")), whole, rtol=0, atol=1e-5 * np.abs(whole).max())
    with pytest.raises(ValueError, match="clips must divide"):
        model.apply(variables, a, b, 3, clips=3)


# --- converter ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fixture_sd(parity_dir):
    return state_dict_from_fixture(np.load(parity_dir / "raft.npz"))


def _same(a, b):
    return jax.tree.all(jax.tree.map(lambda x, y: np.array_equal(x, y), a, b))


BLOCK3 = ("cnet.layer2.0", "cnet.layer3.0")


def test_norm3_and_downsample_aliases(fixture_sd):
    full = convert.from_torch("raft", fixture_sd)
    for layer in BLOCK3:  # the fixture, like a real checkpoint, holds the same values under both names
        for e in ("weight", "bias", "running_mean", "running_var"):
            assert np.array_equal(fixture_sd[f"{layer}.norm3.{e}"], fixture_sd[f"{layer}.downsample.1.{e}"])
    for name in ("norm3", "downsample.1"):  # either name alone is enough
        sd = {k: v for k, v in fixture_sd.items() if not any(k.startswith(f"{layer}.{name}.") for layer in BLOCK3)}
        assert len(sd) == len(fixture_sd) - 10
        assert _same(convert.from_torch("raft", sd), full)
    sd = {k: v for k, v in fixture_sd.items() if not k.endswith("num_batches_tracked")}  # old checkpoints
    assert _same(convert.from_torch("raft", sd), full)
    bad = dict(fixture_sd)
    bad["cnet.layer3.0.downsample.1.running_var"] = bad["cnet.layer3.0.downsample.1.running_var"] + 1e-3
    with pytest.raises(CheckpointError, match=r"cnet\.layer3\.0\.norm3\.running_var and "
                                              r"cnet\.layer3\.0\.downsample\.1\.running_var name the same norm"):
        convert.from_torch("raft", bad)
    sd = {k: v for k, v in fixture_sd.items() if not k.startswith("cnet.layer2.0.")}
    with pytest.raises(CheckpointError, match=r"missing keys .*cnet\.layer2\.0\.norm3\.weight"):
        convert.from_torch("raft", sd)


def test_wrappers_and_prefixes(fixture_sd, tmp_path):
    full = convert.from_torch("raft", fixture_sd)
    torch = pytest.importorskip("torch")
    path = tmp_path / "raft-things.pth"  # as released: a DataParallel state_dict saved with torch.save
    torch.save({f"module.{k}": torch.from_numpy(np.asarray(v)) for k, v in fixture_sd.items()}, path)
    loaded = convert.resolve(path, model="raft", expect="flow")
    assert loaded.name == "raft" and _same(loaded.variables, full)
    for wrapped in ({f"module.{k}": v for k, v in fixture_sd.items()},  # raft-things.pth (DataParallel)
                    {"state_dict": {f"module.{k}": v for k, v in fixture_sd.items()}},
                    {f"fix_raft.{k}": v for k, v in fixture_sd.items()}):  # inside a larger model
        assert _same(convert.from_torch("raft", wrapped), full)
    two = {**{f"a.{k}": v for k, v in fixture_sd.items()}, **{f"b.{k}": v for k, v in fixture_sd.items()}}
    with pytest.raises(CheckpointError, match="several RAFT networks"):
        convert.from_torch("raft", two)
    extra = {**fixture_sd, "update_block.extra.weight": np.zeros(3, np.float32)}
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): update_block\.extra\.weight"):
        convert.from_torch("raft", extra)


def test_wrong_networks_are_refused(parity_dir, fixture_sd):
    other = state_dict_from_fixture(np.load(parity_dir / "recurrent_flow_completion.npz"))
    with pytest.raises(CheckpointError, match="does not match model 'raft': not a RAFT state_dict"):
        convert.from_torch("raft", other)
    small = {"fnet.conv1.weight": np.zeros((32, 3, 7, 7), np.float32), "fnet.layer1.0.conv3.weight": np.zeros(1),
             "update_block.gru.convz.weight": np.zeros(1), "update_block.encoder.convc1.weight": np.zeros(1)}
    with pytest.raises(CheckpointError, match="RAFT-small"):
        convert.from_torch("raft", small)
    with pytest.raises(CheckpointError, match="does not match model 'spynet'"):
        convert.from_torch("spynet", fixture_sd)


# --- the network ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def variables(fixture_sd):
    return convert.from_torch("raft", fixture_sd)  # rule weights: realistic magnitudes, unlike the init


@pytest.fixture(scope="module")
def clip(parity_dir):
    """Three 64x96 frames in [-1, 1]: the fixture's two tennis frames cropped, and the second shifted."""
    u8 = np.load(parity_dir / "raft.npz")["input/frames_u8"][0, :, 80:144, 160:256]
    frames = u8.astype(np.float32) / 255 * 2 - 1
    return np.stack([frames[0], frames[1], np.roll(frames[1], 3, axis=1)])[None]


def test_input_checks():
    model = models.build("raft")
    x = jnp.zeros((1, 64, 64, 3))
    for bad, match in ((jnp.zeros((1, 60, 64, 3)), "multiples of 8 and at least 64"),
                       (jnp.zeros((1, 56, 64, 3)), "at least 64"), (jnp.zeros((1, 3, 64, 64)), "channels-last")):
        with pytest.raises(ValueError, match=match):
            jax.eval_shape(lambda a, bad=bad: model.init(jax.random.key(0), a, a), bad)
    with pytest.raises(ValueError, match="must have the same shape"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), x, jnp.zeros((1, 64, 72, 3))))
    with pytest.raises(ValueError, match="iters must be >= 1"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), x, x, iters=0))
    with pytest.raises(ValueError, match="corr must be one of"):
        jax.eval_shape(lambda: models.build("raft", corr="sparse").init(jax.random.key(0), x, x))


@pytest.mark.slow
def test_small_frames_dense_chunked_and_bidirectional(variables, clip):
    """64x96 (a 1x1 last level, where the official code divides by zero): finite flows, chunked == dense, and
    `bidirectional` == one call per direction."""
    iters = 3
    dense = models.build("raft", corr="dense")
    low, up = jax.jit(functools.partial(dense.apply, iters=iters))(variables, clip[:, 0], clip[:, 1])
    assert low.shape == (1, 8, 12, 2) and up.shape == (1, 64, 96, 2) and up.dtype == jnp.float32
    assert np.isfinite(np.asarray(up)).all() and np.abs(np.asarray(low)).max() > 0.1
    chunked = models.build("raft", corr="chunked", corr_chunk=40)
    low_c, up_c = jax.jit(functools.partial(chunked.apply, iters=iters))(variables, clip[:, 0], clip[:, 1])
    scale = max(1.0, float(np.abs(np.asarray(up)).max()))
    np.testing.assert_allclose(np.asarray(up_c), np.asarray(up), rtol=0, atol=2e-5 * scale)
    np.testing.assert_allclose(np.asarray(low_c), np.asarray(low), rtol=0, atol=2e-5 * scale)

    forward, backward = jax.jit(functools.partial(dense.apply, iters=iters, method="bidirectional"))(variables, clip)
    assert forward.shape == backward.shape == (1, 2, 64, 96, 2)
    _, back0 = jax.jit(functools.partial(dense.apply, iters=iters))(variables, clip[:, 1], clip[:, 0])
    np.testing.assert_allclose(np.asarray(forward[:, 0]), np.asarray(up), rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(np.asarray(backward[:, 0]), np.asarray(back0), rtol=0, atol=1e-5 * scale)
