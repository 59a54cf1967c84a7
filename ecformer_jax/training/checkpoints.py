"""Orbax checkpoints of the train state plus the data iterator's position.

Saves are asynchronous (only the device-to-host copy blocks) and atomic (orbax writes a temporary
directory and renames it when complete), so a run killed at any moment restarts from the last
complete checkpoint. The data iterator state is captured synchronously at save time and stored with
grain's per-process checkpoint handler next to the state.
"""
from __future__ import annotations

import json

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath


class _IteratorSnapshot:
    """The iterator's state at save time (the real iterator keeps running while orbax writes)."""

    def __init__(self, state=None):
        self.state = state

    def get_state(self) -> bytes:
        return json.dumps(self.state).encode()

    def set_state(self, state: bytes):
        self.state = json.loads(state.decode())

    def start_prefetch(self):
        pass


class Checkpointer:
    """`directory`/<step>/state (orbax StandardCheckpoint of the train state) and <step>/data (the iterator)."""

    def __init__(self, directory: epath.PathLike, keep: int = 3, async_save: bool = True):
        self.directory = absolute(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()},
        )

    def latest_step(self):
        return self.manager.latest_step()

    def save(self, step: int, state, iterator=None, force: bool = False) -> bool:
        args = {"state": ocp.args.StandardSave(state)}
        if iterator is not None:
            args["data"] = grain.checkpoint.CheckpointSave(_IteratorSnapshot(iterator.get_state()))
        return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

    def restore(self, step: int, abstract_state, iterator=None):
        """Restore the state with the shardings of `abstract_state` (ShapeDtypeStructs with .sharding)."""
        args = {"state": ocp.args.StandardRestore(abstract_state)}
        snapshot = _IteratorSnapshot()
        if iterator is not None:
            args["data"] = grain.checkpoint.CheckpointRestore(snapshot)
        restored = self.manager.restore(step, args=ocp.args.Composite(**args))
        if iterator is not None:
            iterator.set_state(snapshot.state)
        return restored["state"]

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def absolute(path: epath.PathLike) -> epath.Path:
    """A relative local path made absolute (orbax renames its temporary folders); other paths (gs://...)
    unchanged."""
    path = epath.Path(path)
    return path if path.is_absolute() else path.resolve()


def abstract_with_shardings(state, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, shardings)
