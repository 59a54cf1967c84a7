"""ProPainter's inference pipeline (ecformer_jax.inference.propainter, the official inference_propainter.py):
the RAFT chunks, flow-completion / propagation windows, generator windows and references against values worked
out by hand from the official loops; the compositing arithmetic; the inpaint command end to end on tennis frames
(fixture RAFT and flow-completion weights as official .pth files, a small random generator as a converted
folder); the checkpoint errors. The comparison with the official script itself is
tools/propainter_vs_official.py (full-size networks, minutes on a CPU)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from ecformer_jax import convert, models
from ecformer_jax.data import video_io
from ecformer_jax.data.masks import dilate
from ecformer_jax.inference import propainter as pp
from ecformer_jax.inpaint import main as inpaint_main
from tests.test_bad_input import call, fails
from tests.test_inpaint import random_variables

SMALL = {"hidden": 64, "heads": 2, "num_blocks": 2, "ffn_hidden": 72, "kernel": 3, "stride": 2, "padding": 1}
N_TENNIS, SIZE = 14, (72, 128)  # (H, W): 14 frames -> two RAFT chunks, three generator windows
RAFT_ITER = 2


# --- the schedule ------------------------------------------------------------------------------------------
def test_raft_chunks_follow_the_width_rule_and_overlap_by_one_frame():
    assert [pp.raft_chunk_length(w) for w in (432, 640, 641, 720, 1280, 1281, 1920)] == [12, 12, 8, 8, 4, 2, 2]
    # official: for f in range(0, T, L): frames [f, f + L), from f - 1 after the first chunk
    assert pp.raft_chunks(25, 432) == [(0, 12), (11, 24), (23, 25)]
    assert pp.raft_chunks(12, 432) == [(0, 12)]  # T <= L: one call on everything
    assert pp.raft_chunks(13, 432) == [(0, 12), (11, 13)]
    assert pp.raft_chunks(20, 720) == [(0, 8), (7, 16), (15, 20)]
    assert pp.raft_chunks(5, 1920) == [(0, 2), (1, 4), (3, 5)]
    for n, w in ((25, 432), (100, 1280), (37, 700), (3, 2000)):
        chunks = pp.raft_chunks(n, w)
        flows = [i for s, e in chunks for i in range(s, e - 1)]  # chunk [s, e) gives flows s .. e - 2
        assert flows == list(range(n - 1)), (n, w)
        assert max(e - s for s, e in chunks) <= pp.raft_chunk_length(w) + 1


def test_completion_and_propagation_windows():
    # flow completion: 80 flows + 5 of context each side, only when there are more than 80 flows
    assert pp.completion_windows(79) == [(0, 79, 0, 79)]
    assert pp.completion_windows(80) == [(0, 80, 0, 80)]
    assert pp.completion_windows(81) == [(0, 81, 0, 80), (75, 81, 80, 81)]
    assert pp.completion_windows(200) == [(0, 85, 0, 80), (75, 165, 80, 160), (155, 200, 160, 200)]
    # image propagation: min(100, subvideo) frames + 10 of context
    assert pp.propagation_windows(80) == [(0, 80, 0, 80)]
    assert pp.propagation_windows(250) == [(0, 90, 0, 80), (70, 170, 80, 160), (150, 250, 160, 240),
                                           (230, 250, 240, 250)]
    assert pp.propagation_windows(150, subvideo_length=200) == [(0, 110, 0, 100), (90, 150, 100, 150)]
    for n, sub in ((81, 80), (250, 80), (1000, 80), (33, 7)):
        for windows in (pp.completion_windows(n, sub), pp.propagation_windows(n, sub)):
            kept = [i for s, e, ks, ke in windows for i in range(ks, ke)]
            assert kept == list(range(n))
            assert all(0 <= s <= ks < ke <= e <= n for s, e, ks, ke in windows)


def test_generator_windows_and_references():
    # T <= subvideo_length: every multiple of 10 that is not local
    w = pp.generator_windows(25)
    assert [x.center for x in w] == [0, 5, 10, 15, 20]
    assert w[0].neighbors == tuple(range(0, 6)) and w[0].refs == (10, 20)
    assert w[1].neighbors == tuple(range(0, 11)) and w[1].refs == (20,)
    assert w[2].neighbors == tuple(range(5, 16)) and w[2].refs == (0, 20)
    assert w[4].neighbors == tuple(range(15, 25)) and w[4].refs == (0, 10)
    # T > subvideo_length (ref_num 8): f - 40, f - 30, ... below f + 40, not local, not aligned to 10
    w = {x.center: x for x in pp.generator_windows(200)}
    assert w[100].neighbors == tuple(range(95, 106)) and w[100].refs == (60, 70, 80, 90, 110, 120, 130)
    assert w[0].refs == (10, 20, 30) and w[5].refs == (20, 30, 40)
    assert w[195].neighbors == tuple(range(190, 200)) and w[195].refs == (155, 165, 175, 185)
    assert w[45].refs == (5, 15, 25, 35, 55, 65, 75)
    assert pp.reference_ids(100, range(95, 106), 200, 10, 8) == (60, 70, 80, 90, 110, 120, 130)
    assert pp.reference_ids(7, range(2, 13), 30, 3, -1) == (0, 15, 18, 21, 24, 27)
    # neighbour length 6 -> stride 3; reference stride 4
    w = pp.generator_windows(11, neighbor_length=6, ref_stride=4)
    assert [(x.center, x.neighbors, x.refs) for x in w] == [
        (0, (0, 1, 2, 3), (4, 8)), (3, (0, 1, 2, 3, 4, 5, 6), (8,)), (6, (3, 4, 5, 6, 7, 8, 9), (0,)),
        (9, (6, 7, 8, 9, 10), (0, 4))]


def test_processing_size_rounds_down_to_multiples_of_8():
    assert pp.process_size((240, 432)) == (240, 432)
    assert pp.process_size((250, 437)) == (248, 432)
    assert pp.process_size((240, 432), resize=(100, 130)) == (96, 128)
    assert pp.process_size((480, 864), resize_ratio=0.5) == (240, 432)
    assert pp.process_size((241, 433), resize_ratio=0.5) == (120, 216)  # int(120.5), int(216.5)
    assert pp.process_size((70, 200)) == (64, 200)
    with pytest.raises(ValueError, match="at least 64x64"):
        pp.process_size((60, 200))


# --- compositing -------------------------------------------------------------------------------------------
def test_compositing_truncates_and_blends_like_the_script():
    out = np.array([-1.0, 1.0, 0.0, 0.5, 0.99, -0.99999994, 2 * (200.999 / 255) - 1], np.float32)
    # (out + 1) / 2 * 255 in float32, truncated
    expected = ((out + 1) / 2 * np.float32(255)).astype(np.uint8)
    assert list(expected) == [0, 255, 127, 191, 253, 0, 200]
    np.testing.assert_array_equal(np.asarray(pp.to_u8(out)), expected)
    pred = np.full((2, 3, 3), 50, np.uint8)
    frame = np.full((2, 3, 3), 9, np.uint8)
    mask = np.zeros((2, 3), bool)
    mask[1, 2] = True
    comp = pp.composite(pred, mask, frame)
    assert comp.dtype == np.uint8 and comp[1, 2, 0] == 50 and (comp[~mask] == 9).all()
    # blends: 0.5 old + 0.5 new in float32, truncated each time; the first write is kept as is
    a = np.array([200, 201, 7], np.uint8)
    assert pp.blend(None, a) is a
    b = pp.blend(a, np.array([100, 100, 8], np.uint8))
    np.testing.assert_array_equal(b, [150, 150, 7])
    np.testing.assert_array_equal(pp.blend(b, np.array([11, 12, 8], np.uint8)), [80, 81, 7])


# --- checkpoints -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def weights(parity_dir, tmp_path_factory):
    """The fixture RAFT and flow-completion weights as official .pth files (RAFT with DataParallel's 'module.'
    keys) and a small random generator as a converted folder, in one folder."""
    import torch

    from ecformer_jax.convert.weight_rule import state_dict_from_fixture

    root = tmp_path_factory.mktemp("weights")
    for name, prefix in (("raft", "module."), ("recurrent_flow_completion", "")):
        sd = state_dict_from_fixture(np.load(parity_dir / f"{name}.npz"))
        torch.save({prefix + k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()},
                   root / pp.FILES[name])
    model = models.build("propainter", **SMALL)
    variables = random_variables(model, models.get("propainter").example_inputs(model))
    convert.save(root / "generator", "propainter", variables, SMALL)
    return root


def test_summary_stats_are_json():
    import collections
    import json

    stats = {"shapes": {"raft": collections.Counter({(5, 72, 128): 2}), "generator": collections.Counter()},
             "seconds": 1.5, "processing_size": (72, 128)}
    assert json.loads(json.dumps(pp.jsonable_stats(stats)))["shapes"]["raft"] == {"(5, 72, 128)": 2}


def test_checkpoint_folder_comma_list_and_missing_files(weights, tmp_path):
    found = pp.locate(weights)
    assert found == {"propainter": weights / "generator", "recurrent_flow_completion": weights /
                     "recurrent_flow_completion.pth", "raft": weights / "raft-things.pth"}
    # the three paths comma-separated, in any order; a .pth under another name is recognised by its keys
    shutil.copy(weights / "raft-things.pth", tmp_path / "my_raft.pth")
    listed = f"{weights / 'generator'},{tmp_path / 'my_raft.pth'},{weights / 'recurrent_flow_completion.pth'}"
    assert pp.locate(listed)["raft"] == tmp_path / "my_raft.pth"
    assert pp.wants_pipeline(listed, None) and pp.wants_pipeline("x", "propainter")
    assert not pp.wants_pipeline(weights, None) and not pp.wants_pipeline("x", "sttn")
    entry = models.get("propainter")
    assert entry.pipeline == "propainter" and entry.kind == "block" and "propainter" not in models.names("inpainting")

    # a missing network: one line naming the file, exit status 2, before the video is read
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(weights / "recurrent_flow_completion.pth", partial)
    shutil.copytree(weights / "generator", partial / "generator")
    args = ["--video", tmp_path / "no_video", "--mask", tmp_path / "no_mask", "--output", tmp_path / "out.mp4"]
    fails(call(inpaint_main, "--model", "propainter", "--checkpoint", partial, *args), partial, "no raft-things.pth",
          "ProPainter needs")
    two = f"{weights / 'generator'},{weights / 'raft-things.pth'}"
    fails(call(inpaint_main, "--model", "propainter", "--checkpoint", two, *args), "no recurrent_flow_completion.pth")
    fails(call(inpaint_main, "--checkpoint", f"{two},{tmp_path / 'nothing.pth'}", *args), "checkpoint not found",
          "nothing.pth")
    fails(call(inpaint_main, "--model", "propainter", "--checkpoint", weights / "raft-things.pth", *args),
          "raft-things.pth", "needs three checkpoints")
    fails(call(inpaint_main, "--model", "propainter", "--checkpoint", tmp_path / "none", *args), "not found")
    fails(call(inpaint_main, "--model", "propainter", "--checkpoint", f"{two},{weights / 'raft-things.pth'}",
               *args), "both raft checkpoints")
    fails(call(inpaint_main, "--model", "sttn", "--checkpoint", weights / "raft-things.pth", "--raft-iter", 3,
               "--video", tmp_path, "--mask", tmp_path, "--output", tmp_path / "o.mp4"), "--raft-iter")


# --- end to end --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tennis_small(tennis_dir, tmp_path_factory):
    """The first 14 tennis frames and masks, resized to 128x72 (frames bicubic, masks nearest)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("tennis")
    for sub, resample in (("frames", Image.BICUBIC), ("masks", Image.NEAREST)):
        (root / sub).mkdir()
        for f in sorted((tennis_dir / sub).glob("*.png"))[:N_TENNIS]:
            Image.open(f).resize((SIZE[1], SIZE[0]), resample).save(root / sub / f.name)
    return root


@pytest.mark.slow
def test_inpaint_command_end_to_end(weights, tennis_small, tmp_path, capsys):
    out = tmp_path / "result"
    rc = inpaint_main(["--model", "propainter", "--checkpoint", str(weights), "--video",
                       str(tennis_small / "frames"), "--mask", str(tennis_small / "masks"), "--output", str(out),
                       "--raft-iter", str(RAFT_ITER), "--quiet"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert f"{N_TENNIS} frames 128x72 inpainted" in cap.out and "3 windows" in cap.out
    assert "2 RAFT call(s) of up to 12 frames" in cap.err and "processed at 128x72" in cap.err
    assert (tmp_path / "result_side_by_side.mp4").is_file()
    original = video_io.read_frames(tennis_small / "frames")
    result = video_io.read_frames(out)
    assert result.shape == original.shape == (N_TENNIS, *SIZE, 3)
    holes = dilate(video_io.read_masks(tennis_small / "masks", N_TENNIS), pp.MASK_DILATION)
    np.testing.assert_array_equal(result[~holes], original[~holes])  # outside the dilated holes: the input
    assert (result[holes] != original[holes]).mean() > 0.5  # inside: inpainted


@pytest.mark.slow
def test_chunked_flows_equal_one_raft_call_and_resized_videos_keep_the_outside(weights, tennis_small):
    networks = pp.load_networks(weights)
    frames = video_io.read_frames(tennis_small / "frames")
    painter = pp.ProPainter(networks, raft_iter=RAFT_ITER)
    flows_f, flows_b = painter.flows(frames)  # chunks [0, 12) and [11, 14), the second padded to 12 frames
    whole_f, whole_b = pp.raft_flows(painter._variables["raft"], frames, model=networks.raft.model, iters=RAFT_ITER)
    np.testing.assert_allclose(flows_f, np.asarray(whole_f), atol=1e-4)
    np.testing.assert_allclose(flows_b, np.asarray(whole_b), atol=1e-4)
    assert np.abs(flows_f).max() > 0.1

    # a size that is no multiple of 8: processed at 128x72 (the shapes compiled above), resized back, the input
    # kept outside the dilated holes
    big = np.pad(frames, ((0, 0), (0, 3), (0, 2), (0, 0)), mode="edge")
    masks = np.pad(video_io.read_masks(tennis_small / "masks", N_TENNIS), ((0, 0), (0, 3), (0, 2)))
    result = painter(big, masks)
    assert result.geometry.size == SIZE and result.geometry.original == (75, 130)
    assert result.frames.shape == big.shape
    holes = dilate(masks, pp.MASK_DILATION)
    assert (result.masks >= holes).all()
    np.testing.assert_array_equal(result.frames[~result.masks], big[~result.masks])
    assert (result.frames[holes] != big[holes]).mean() > 0.5
