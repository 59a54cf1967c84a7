"""TFDS builder for video inpainting training data, readable without TensorFlow.

One record per frame: {"frame": uint8 (height, width, 3), "video_index": int32, "frame_index": int32},
written in video order (shuffling is disabled, so the frames of video v are the consecutive records
starts[v] ... starts[v] + counts[v] - 1). The video names, starts and counts go into the builder's
metadata (metadata.json). The source videos are read with `ecformer_jax.data.datasets.open_source`, so
every layout of the training pipeline (frame folders, official zips + train.json, video files) can be
converted; frames are stored already resized to the config's width x height (PIL bicubic).

Build with `ecformer_jax.data.tfds.build(source, data_dir, width=..., height=...)`; read back with
`layout="tfds"` in the data config (path = the TFDS data dir) or `builder.as_data_source("train")`.
Needs `pip install tensorflow-datasets importlib_resources` (no TensorFlow).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from ecformer_jax.data.config import data_config
from ecformer_jax.data.datasets import open_source
from ecformer_jax.data.video_io import VideoError


@dataclasses.dataclass
class VideoInpaintingConfig(tfds.core.BuilderConfig):
    """name: conventionally f"{width}x{height}"; the frames are stored at this size."""

    width: int = 432
    height: int = 240


def config_for(width: int, height: int) -> VideoInpaintingConfig:
    return VideoInpaintingConfig(name=f"{int(width)}x{int(height)}", width=int(width), height=int(height),
                                 description=f"frames resized to {width}x{height}")


class Builder(tfds.core.GeneratorBasedBuilder):
    """Frames of inpainting training videos (YouTube-VOS, DAVIS or any folder of videos)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "One uint8 record per frame, video order, names in metadata."}
    BUILDER_CONFIGS = [config_for(432, 240), config_for(864, 480), config_for(96, 48)]
    DEFAULT_CONFIG_NAME = "432x240"

    def __init__(self, *, source: str = "", layout: str = "auto", split_json: str = "", skip_bad: bool = False,
                 **kwargs):
        self._source_args = dict(path=str(source), layout=layout, split_json=split_json)
        self._skip_bad = bool(skip_bad)
        self._index: dict | None = None
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "frame": tfds.features.Tensor(shape=(cfg.height, cfg.width, 3), dtype=np.uint8),
                "video_index": tfds.features.Scalar(dtype=np.int32),
                "frame_index": tfds.features.Scalar(dtype=np.int32),
            }),
            supervised_keys=None,
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def _open_source(self):
        if not self._source_args["path"]:
            raise ValueError("building the video_inpainting data set needs source=<data set root or video folder>")
        cfg = self.builder_config
        return open_source(data_config(width=cfg.width, height=cfg.height, **self._source_args))

    def _split_generators(self, dl_manager):
        del dl_manager  # the data are local
        source = self._open_source()
        names, counts = [], []
        for i in range(len(source)):
            try:
                n = source.num_frames(i)
            except VideoError as e:
                if not self._skip_bad:
                    raise
                logging.warning("skipping bad video %r: %s", source.name(i), e)
                continue
            names.append(i)
            counts.append(n)
        self._index = {"source": source, "videos": names, "counts": counts}
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        source = self._index["source"]
        names, starts, counts = [], [], []
        key = 0
        for i, n in zip(self._index["videos"], self._index["counts"]):
            try:
                frames = source.read(i, range(n))
            except VideoError as e:
                if not self._skip_bad:
                    raise
                logging.warning("skipping bad video %r: %s", source.name(i), e)
                continue
            v = len(names)
            names.append(source.name(i))
            starts.append(key)
            counts.append(int(n))
            for t, frame in enumerate(frames):
                yield key, {"frame": frame, "video_index": v, "frame_index": t}
                key += 1
        if not names:
            raise VideoError(f"no readable videos in {source.description}")
        self.info.metadata.update({"names": names, "starts": starts, "counts": counts})
