"""The 'poolformer' token-mixer generator with the FuseFormer recipe: `configs/poolformer.py[:tiny]`."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mixers  # noqa: E402  (configs/mixers.py)


def get_config(arg=None):
    return mixers.recipe("poolformer", arg)
