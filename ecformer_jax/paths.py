"""User paths, local or remote (gs://, s3://: etils.epath), the same way everywhere."""
from __future__ import annotations

import os

from etils import epath


def is_remote(path: epath.PathLike) -> bool:
    """gs://, s3://, ... (an object store read and written through etils.epath: no append, no atomic rename), as
    opposed to a local or mounted folder."""
    return "://" in os.fspath(path)


def absolute(path: epath.PathLike) -> epath.Path:
    """An epath.Path; a relative local one made absolute (orbax renames its temporary folders), `~` expanded; a
    remote one unchanged (never os.path.abspath: it turns gs://b/x into ./gs:/b/x)."""
    path = epath.Path(path)
    if is_remote(path):
        return path
    path = path.expanduser()
    return path if path.is_absolute() else path.resolve()
