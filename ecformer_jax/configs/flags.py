"""The --config flag of the commands and tools: a preset NAME[:VARIANT] or FILE.py[:VARIANT], plus
ml_collections' --config.FIELD=VALUE overrides."""
from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from ecformer_jax import configs


class PresetConfigParser(flags.ArgumentParser):
    """--config NAME[:VARIANT] (a preset of ecformer_jax.configs) or FILE.py[:VARIANT], then ml_collections'
    config-file parser (`file_parser`)."""

    def __init__(self, file_parser):
        self.file_parser = file_parser

    def parse(self, argument):
        return self.file_parser.parse(configs.resolve(argument))

    def flag_type(self):
        return self.file_parser.flag_type()


def define_config_flag(flag_values=flags.FLAGS, **kwargs):
    """ml_collections' --config flag (with its --config.FIELD=VALUE overrides) that also takes preset names."""
    holder = config_flags.DEFINE_config_file(
        "config", None, f"preset NAME[:VARIANT] ({', '.join(configs.names())}) or FILE.py[:VARIANT]",
        flag_values=flag_values, lock_config=True, **kwargs)
    flag = flag_values["config"]
    flag.parser = PresetConfigParser(flag.parser)
    return holder
