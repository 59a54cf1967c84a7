"""TFDS (tensorflow-datasets, no TensorFlow) storage of training videos: the `video_inpainting` builder.

Optional: `pip install tensorflow-datasets importlib_resources`. `build(...)` converts any layout that
`ecformer_jax.data.datasets.open_source` reads into ArrayRecord files under `data_dir`;
`layout="tfds"` with `path=data_dir` in the data config then feeds them to the grain pipeline (the reader,
`datasets.TfdsSource`, lives with the other sources: this package imports datasets, never the reverse).
"""
from __future__ import annotations

import os
from pathlib import Path

from ecformer_jax.data.datasets import TFDS_DATASET_NAME as DATASET_NAME
from ecformer_jax.data.datasets import find_dataset_dir, import_tfds, load_frame_source, open_data_source


def build(source: str | os.PathLike, data_dir: str | os.PathLike, width: int = 432, height: int = 240,
          layout: str = "auto", split_json: str = "", skip_bad: bool = False) -> Path:
    """Write the frames of every video of `source` (resized to width x height) as the `train` split of
    `video_inpainting/<width>x<height>` under data_dir; returns the dataset folder."""
    import_tfds()
    from ecformer_jax.data.tfds.video_inpainting.video_inpainting_dataset_builder import Builder, config_for

    config = config_for(width, height)
    if config.name in Builder.builder_configs:  # a predefined config is named, a custom one passed whole
        config = config.name
    builder = Builder(source=str(source), layout=layout, split_json=split_json, skip_bad=skip_bad,
                      config=config, data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare()
    return Path(builder.data_dir)


__all__ = ["build", "find_dataset_dir", "open_data_source", "load_frame_source", "DATASET_NAME"]
