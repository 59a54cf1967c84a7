"""TFDS (tensorflow-datasets, no TensorFlow) storage of training videos: the `video_inpainting` builder.

Optional: `pip install tensorflow-datasets importlib_resources`. `build(...)` converts any layout that
`ecformer_jax.data.datasets.open_source` reads into ArrayRecord files under `data_dir`;
`layout="tfds"` with `path=data_dir` in the data config then feeds them to the grain pipeline.
"""
from __future__ import annotations

import os
from pathlib import Path

from ecformer_jax.data.video_io import VideoError

DATASET_NAME = "video_inpainting"


def _tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError("the TFDS layout needs `pip install tensorflow-datasets importlib_resources` "
                          "(TensorFlow is not needed)") from e
    return tfds


def build(source: str | os.PathLike, data_dir: str | os.PathLike, width: int = 432, height: int = 240,
          layout: str = "auto", split_json: str = "", skip_bad: bool = False) -> Path:
    """Write the frames of every video of `source` (resized to width x height) as the `train` split of
    `video_inpainting/<width>x<height>` under data_dir; returns the dataset folder."""
    _tfds()
    from ecformer_jax.data.tfds.video_inpainting.video_inpainting_dataset_builder import Builder, config_for

    config = config_for(width, height)
    if config.name in Builder.builder_configs:  # a predefined config is named, a custom one passed whole
        config = config.name
    builder = Builder(source=str(source), layout=layout, split_json=split_json, skip_bad=skip_bad,
                      config=config, data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare()
    return Path(builder.data_dir)


def find_dataset_dir(data_dir: str | os.PathLike, width: int, height: int) -> Path:
    """The generated dataset folder under a TFDS data dir: `<data_dir>/video_inpainting/<W>x<H>/<version>`,
    or `data_dir` itself when it holds dataset_info.json; the config matching width x height is preferred,
    else the only one there."""
    root = Path(data_dir)
    if (root / "dataset_info.json").exists():
        return root
    found = sorted(p.parent for p in root.glob(f"{DATASET_NAME}/*/*/dataset_info.json"))
    if not found:
        found = sorted(p.parent for p in root.glob("*/*/dataset_info.json"))  # data_dir/video_inpainting
    if not found:
        raise VideoError(f"no {DATASET_NAME} TFDS data set under {root} (build one with "
                         "ecformer_jax.data.tfds.build)")
    match = [p for p in found if p.parent.name == f"{width}x{height}"]
    if match:
        return match[-1]  # newest version
    configs = sorted({p.parent.name for p in found})
    if len(configs) == 1:
        return found[-1]
    raise VideoError(f"TFDS data dir {root} holds configs {configs}, none for {width}x{height}")


def open_data_source(dataset_dir: str | os.PathLike, split: str = "train"):
    tfds = _tfds()
    builder = tfds.builder_from_directory(str(dataset_dir))
    return builder.as_data_source(split=split)


def load_frame_source(data_dir: str | os.PathLike, width: int, height: int, split: str = "train"):
    """(random-access records, {"names", "starts", "counts"}, dataset folder) of a built data set."""
    tfds = _tfds()
    ddir = find_dataset_dir(data_dir, width, height)
    builder = tfds.builder_from_directory(str(ddir))
    meta = dict(builder.info.metadata or {})
    if not all(k in meta for k in ("names", "starts", "counts")):
        raise VideoError(f"{ddir} was not written by the {DATASET_NAME} builder (metadata lacks video names)")
    if split not in builder.info.splits:
        raise VideoError(f"{ddir} has no split {split!r}; it has {list(builder.info.splits)}")
    return builder.as_data_source(split=split), meta, ddir


__all__ = ["build", "find_dataset_dir", "open_data_source", "load_frame_source", "DATASET_NAME"]
