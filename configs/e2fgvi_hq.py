"""E2FGVI-HQ (MCG-NKU/E2FGVI configs/train_e2fgvi_hq.json): the E2FGVI recipe with the HQ generator.
`configs/e2fgvi_hq.py[:tiny]`."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2fgvi  # noqa: E402  (configs/e2fgvi.py)


def get_config(arg=None):
    return e2fgvi.get_config(arg, model="e2fgvi_hq")
