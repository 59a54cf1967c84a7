"""tools/benchmark.py: the pure-JAX JSON on a tiny STTN, the --against-official argument checks (no official
checkout is needed to test them), the clip inputs, and the stand-ins of tools/official_shims.py."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


sys.path.insert(0, str(ROOT / "tools"))  # official_compare imports its helpers from benchmark
benchmark = _load("benchmark")
official_compare = _load("official_compare")
official_shims = _load("official_shims")


def test_pure_jax_infer_json(tmp_path, capsys):
    out_file = tmp_path / "bench.json"
    rc = benchmark.main(["--model", "sttn", "--frames", "1", "--height", "60", "--width", "108", "--iters", "2",
                         "--option", "channels=32", "--option", "num_blocks=1",
                         "--option", "patch_sizes=[[15,27],[5,9]]", "--output", str(out_file)])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out_file.read_text())
    for key in ("trace_s", "compile_s", "step_s", "frames_per_s", "peak_host_bytes", "params", "backend"):
        assert key in printed, key
    assert printed["model"] == "sttn" and printed["mode"] == "infer" and len(printed["step_s_all"]) == 2
    assert printed["options"] == {"channels": 32, "num_blocks": 1, "patch_sizes": [[15, 27], [5, 9]]}
    assert printed["step_s"] > 0 and printed["frames_per_s"] > 0 and printed["params"] > 0
    assert "speed_ratio" not in printed  # the official comparison only with --against-official


def test_against_official_names_missing_files(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "sttn.py").write_text("")
    with pytest.raises(SystemExit) as e:
        benchmark.main(["--model", "sttn", "--against-official", str(tmp_path)])
    msg = str(e.value)
    assert "researchmm/STTN" in msg and "core/spectral_norm.py" in msg and "model/sttn.py" not in msg
    with pytest.raises(SystemExit, match=r"model/e2fgvi_hq\.py.*tfocal_transformer_hq\.py.*feat_prop\.py"):
        benchmark.main(["--model", "e2fgvi_hq", "--against-official", str(tmp_path)])
    with pytest.raises(SystemExit, match="no such directory"):
        benchmark.main(["--model", "dstt", "--against-official", str(tmp_path / "absent")])
    with pytest.raises(SystemExit, match="supports --model sttn, fuseformer, dstt, e2fgvi, e2fgvi_hq"):
        benchmark.main(["--model", "poolformer", "--against-official", str(tmp_path)])


def test_against_official_is_float32_only(tmp_path):
    for f in official_compare.OFFICIAL["dstt"]["files"]:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("")
    with pytest.raises(SystemExit, match="float32"):
        benchmark.main(["--model", "dstt", "--dtype", "bfloat16", "--against-official", str(tmp_path)])


def test_inputs_from_a_clip_folder_and_random(tmp_path):
    from PIL import Image

    for sub in ("frames", "masks"):
        (tmp_path / sub).mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)).save(tmp_path / "frames" / f"{i:05d}.png")
        Image.fromarray((rng.uniform(size=(12, 20)) > 0.5).astype(np.uint8) * 255).save(
            tmp_path / "masks" / f"{i:05d}.png")
    args = benchmark.parse_args(["--model", "sttn", "--batch", "2", "--frames", "2", "--height", "6", "--width", "10",
                                 "--video", str(tmp_path)])
    frames, masks, described = benchmark.make_inputs(args)
    assert frames.shape == (2, 2, 6, 10, 3) and masks.shape == (2, 2, 6, 10, 1)
    assert frames.dtype == np.float32 and -1 <= frames.min() and frames.max() <= 1
    assert set(np.unique(masks)) <= {0.0, 1.0} and "first 4 frames" in described
    args.video = "random"
    frames, masks, described = benchmark.make_inputs(args)
    assert frames.shape == (2, 2, 6, 10, 3) and "random" in described
    args.frames = 3
    args.video = str(tmp_path)
    with pytest.raises(SystemExit, match="needs 6 frames"):
        benchmark.make_inputs(args)


def test_deform_conv_stand_in_matches_mmcv_reference():
    torch = pytest.importorskip("torch")
    from tests.layers.test_deform import mdcn_reference

    rng = np.random.default_rng(0)
    # n, cin, cout, h, w, k, stride, padding, dilation, groups, deform_groups
    for n, cin, cout, h, w, k, s, p, d, g, dg in [(2, 8, 6, 7, 9, 3, 1, 1, 1, 1, 2), (1, 8, 4, 6, 5, 3, 2, 1, 2, 2, 4)]:
        ho, wo = (h + 2 * p - d * (k - 1) - 1) // s + 1, (w + 2 * p - d * (k - 1) - 1) // s + 1
        x = rng.standard_normal((n, cin, h, w))
        offset = rng.standard_normal((n, dg * 2 * k * k, ho, wo)) * 3
        offset[..., :2, :2] = np.round(offset[..., :2, :2])  # integer positions, samples on the border
        mask = rng.uniform(size=(n, dg * k * k, ho, wo))
        weight, bias = rng.standard_normal((cout, cin // g, k, k)), rng.standard_normal(cout)
        ref = mdcn_reference(x, offset, mask, weight, bias, s, p, d, g, dg)
        t = torch.tensor
        out = official_shims.modulated_deform_conv2d(t(x), t(offset), t(mask), t(weight), t(bias), s, p, d, g, dg)
        np.testing.assert_allclose(out.numpy(), ref, atol=1e-10)


def test_shims_install_mmcv_and_torchvision_stand_ins(tmp_path):
    pytest.importorskip("torch")
    code = f"""
import sys
sys.path.insert(0, {str(ROOT / 'tools')!r})
import torch, official_shims
used = official_shims.install({str(tmp_path)!r}, mmcv=True)
assert sys.path[0] == {str(tmp_path)!r}
import torchvision.models
from mmcv.ops import ModulatedDeformConv2d, modulated_deform_conv2d
from mmcv.cnn import ConvModule, constant_init
from mmcv.runner import load_checkpoint
m = ModulatedDeformConv2d(8, 4, 3, padding=1, deform_groups=2)
x = torch.randn(1, 8, 5, 6)
y = m(x, torch.zeros(1, 2 * 2 * 9, 5, 6), torch.ones(1, 2 * 9, 5, 6))
ref = torch.nn.functional.conv2d(x, m.weight, m.bias, padding=1)  # zero offsets, unit mask: a plain conv
assert torch.allclose(y, ref, atol=1e-5), (y - ref).abs().max()
if torchvision.__doc__ == "stand-in from tools/official_shims.py":  # ProPainter's torchvision.ops / transforms
    from torchvision.ops import deform_conv2d
    from torchvision.transforms import Compose
    y = deform_conv2d(x, torch.zeros(1, 2 * 2 * 9, 5, 6), m.weight, m.bias, (1, 1), (1, 1), (1, 1),
                      torch.ones(1, 2 * 9, 5, 6))
    assert torch.allclose(y, ref, atol=1e-5), (y - ref).abs().max()
    assert Compose([lambda v: v + 1, lambda v: v * 2])(3) == 8
c = ConvModule(8, 2, 7, padding=3, norm_cfg=None, act_cfg=dict(type='ReLU'))
assert sorted(c.state_dict()) == ['conv.bias', 'conv.weight'] and (c(x) >= 0).all()
constant_init(c.conv, val=0, bias=0)
assert float(c.conv.weight.abs().sum()) == 0.0
assert load_checkpoint(c, 'https://example.invalid/x.pth') == {{}}
print(len(used))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.split()[-1]) >= 1


def test_bfloat16_against_float32_reports_psnr(capsys):
    rc = benchmark.main(["--model", "sttn", "--frames", "1", "--height", "60", "--width", "108", "--iters", "1",
                         "--option", "channels=32", "--option", "num_blocks=1", "--video", "random",
                         "--option", "patch_sizes=[[15,27],[5,9]]", "--dtype", "bfloat16", "--compare-float32"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["dtype"] == "bfloat16"
    assert 20 < printed["psnr_vs_float32_db"] < 120  # close, not identical: bfloat16 did run
    with pytest.raises(SystemExit, match="add --dtype bfloat16"):
        benchmark.main(["--model", "sttn", "--compare-float32"])


def test_plot_from_side_by_side_results(tmp_path):
    plot = _load("plot_benchmarks")
    paths = []
    for frames, height in ((5, 240), (10, 240), (8, 240), (8, 480)):
        side = lambda s, f=frames, h=height: {"step_s": s * f * h / 240, "peak_host_bytes": 2**30 * f}  # noqa: E731
        d = {"model": "e2fgvi_hq", "frames": frames, "height": height, "cpus": 2, "jax": side(1.0),
             "torch": side(1.5)}
        paths.append(tmp_path / f"r{frames}_{height}.json")
        paths[-1].write_text(json.dumps(d))
    out = tmp_path / "plot.png"
    assert plot.main([*map(str, paths), "--output", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit, match="not a --against-official result"):
        plot.main([str(tmp_path / "bad.json"), "--output", str(out)])


def test_infer_pads_like_the_inpaint_command():
    """E2FGVI-HQ at 1280x720 is benchmarked as the inpaint command runs it: mirror-padded to 1296x720."""
    assert benchmark.padded_size("e2fgvi_hq", {}, (720, 1280)) == (720, 1296)
    assert benchmark.padded_size("e2fgvi_hq", {}, (240, 432)) == (240, 432)


@pytest.mark.slow
@pytest.mark.optimized
def test_against_official_train_side_times_the_trainers_step():
    """The JAX side of --against-official --mode train runs tasks.inpainting's step (not a copy) with the
    comparison's settings, from given generator and discriminator weights."""
    import jax

    from ecformer_jax import models

    args = benchmark.parse_args(["--model", "sttn", "--frames", "2", "--height", "60", "--width", "108", "--iters", "1",
                                 "--mode", "train", "--video", "random"])
    spec, opts = official_compare.OFFICIAL["sttn"], {"channels": 32, "num_blocks": 1, "patch_sizes": ((15, 27), (5, 9))}
    task, c = official_compare.train_config(args, spec, opts)
    assert task.name == "inpainting" and c.model.discriminator == "sttn_discriminator" and c.model.disc_joint_clip
    assert (c.loss.adversarial_weight, c.loss.gan_type, c.loss.flow_weight) == (0.01, "hinge", 0.0)
    assert (c.optim.lr, c.optim.b1, c.optim.b2, c.optim.grad_clip) == (1e-4, 0.0, 0.99, 0.0)
    frames, masks, _ = benchmark.make_inputs(args)
    np.testing.assert_array_equal(np.round((frames + 1) * 127.5) / 127.5 - 1, frames)  # uint8 levels, as trained
    g = models.init(models.build("sttn", **opts), "sttn", jax.random.key(0))
    d = models.init(models.build("sttn_discriminator"), "sttn_discriminator", jax.random.key(1))
    timing, losses = official_compare._jax_train(args, spec, opts, g, frames, masks, None, d)
    assert set(losses) == {"d_loss", "g_loss", "d_loss_step2", "g_loss_step2"}
    assert all(np.isfinite(float(v)) for v in losses.values()) and losses["d_loss_step2"] != losses["d_loss"]
    assert timing["step_s"] > 0 and len(timing["step_s_all"]) == 1
