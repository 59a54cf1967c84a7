"""The video_inpainting TFDS builder (ArrayRecord, no TensorFlow) feeding the same grain pipeline."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets  # noqa: E402,F401  (in the [test] extra)

from ecformer_jax.data import pipeline  # noqa: E402
from ecformer_jax.data import tfds as etfds  # noqa: E402
from ecformer_jax.data.config import data_config  # noqa: E402
from ecformer_jax.data.datasets import TfdsSource, open_source  # noqa: E402
from ecformer_jax.data.synthetic import synthetic_clip  # noqa: E402
from ecformer_jax.data.video_io import VideoError, write_frames  # noqa: E402

W, H = 96, 48


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    for k, n in enumerate((6, 8, 7)):
        write_frames(root / "src" / "JPEGImages" / f"video{k}", synthetic_clip(n, 40, 64, seed=k), ext=".jpg")
    ddir = etfds.build(root / "src", root / "tfds_data", width=W, height=H)
    return root, ddir


def test_build_and_read_back(built):
    root, ddir = built
    assert ddir.name == "1.0.0" and ddir.parent.name == f"{W}x{H}"
    src = open_source(data_config(path=str(root / "tfds_data"), layout="tfds", width=W, height=H))
    ref = open_source(data_config(path=str(root / "src"), width=W, height=H))
    assert isinstance(src, TfdsSource) and len(src) == 3
    assert [src.name(i) for i in range(3)] == [ref.name(i) for i in range(3)]
    assert [src.num_frames(i) for i in range(3)] == [6, 8, 7]
    np.testing.assert_array_equal(src.read(1, [7, 0, 3]), ref.read(1, [7, 0, 3]))
    # the plain TFDS route gives the records in video order
    import tensorflow_datasets as tfds

    records = tfds.builder_from_directory(str(ddir)).as_data_source(split="train")
    assert len(records) == 21
    r = records[6 + 2]
    assert int(r["video_index"]) == 1 and int(r["frame_index"]) == 2 and r["frame"].shape == (H, W, 3)
    # the only stored size is resized on read when another size is asked for
    small = open_source(data_config(path=str(root / "tfds_data"), layout="tfds", width=64, height=32))
    assert small.read(0, [1]).shape == (1, 32, 64, 3)


def test_several_sizes(built, tmp_path):
    root, _ = built
    etfds.build(root / "src", tmp_path, width=64, height=32)
    etfds.build(root / "src", tmp_path, width=W, height=H)
    assert open_source(data_config(path=str(tmp_path), layout="tfds", width=64, height=32)).dataset_dir.parent.name \
        == "64x32"
    with pytest.raises(VideoError, match=r"holds configs \['64x32', '96x48'\], none for 32x16"):
        open_source(data_config(path=str(tmp_path), layout="tfds", width=32, height=16))


def test_same_batches_as_the_frame_folders(built):
    root, _ = built
    kw = dict(width=W, height=H, num_threads=1)
    a = next(iter(pipeline.make_dataset(data_config(path=str(root / "tfds_data"), layout="tfds", **kw), 2, seed=1)))
    b = next(iter(pipeline.make_dataset(data_config(path=str(root / "src"), **kw), 2, seed=1)))
    np.testing.assert_array_equal(a["frames"], b["frames"])
    np.testing.assert_array_equal(a["masks"], b["masks"])


def test_missing_data_set(tmp_path):
    with pytest.raises(VideoError, match="no video_inpainting TFDS data set"):
        open_source(data_config(path=str(tmp_path), layout="tfds", width=W, height=H))
