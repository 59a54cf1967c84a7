"""Orbax checkpoints of the train state plus the data iterator's position, and the workdir's config.

Saves are asynchronous (only the device-to-host copy blocks) and atomic: orbax writes `<step>.orbax-checkpoint-tmp`
and renames it when complete (on GCS: `commit_success.txt` marks a complete step), so a run killed at any moment
restarts from the last committed checkpoint; left-over temporary folders are removed at the next start. The data
iterator state is captured synchronously at save time and stored with grain's per-process checkpoint handler next
to the state.

Resuming (`Checkpointer.restore_latest`) takes the newest checkpoint that reads back completely. One damaged after
its commit (a truncated or deleted array file, an empty step folder, a missing iterator state) is logged and, once an
older one has been restored, renamed to `<step>.unusable` (deleted where the file system cannot rename folders), so
it neither blocks the re-save of that step nor counts towards `keep` (orbax's garbage collection never deletes a
good checkpoint for it). When step folders exist but none is usable, nothing is touched and the run is refused:
training never starts over from step 0 silently. A checkpoint holding a state of other shapes (another model or
model options) is refused as well, and so is a workdir whose config.json names another model (`check_config`).
"""
from __future__ import annotations

import contextlib
import gc
import json
import logging as std_logging
import sys

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from ecformer_jax.errors import CheckpointError
from ecformer_jax.paths import absolute

CONFIG = "config.json"
UNUSABLE = ".unusable"


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (disk full, workdir not writable); the earlier ones are intact."""


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
        # folders made in the calling thread: one that cannot be made is an error at once (made in orbax's
        # background thread, the failure would wait out a 300 s barrier before it surfaced)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, cleanup_tmp_directories=True, enable_async_checkpointing=async_save,
            async_options=ocp.AsyncOptions(create_directories_asynchronously=False))
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()},
        )
        self._pending = None  # the step of a save still being written in the background

    def latest_step(self):
        return self.manager.latest_step()

    def save(self, step: int, state, iterator=None, force: bool = False) -> bool:
        args = {"state": ocp.args.StandardSave(state)}
        if iterator is not None:
            args["data"] = grain.checkpoint.CheckpointSave(_IteratorSnapshot(iterator.get_state()))
        self.wait()  # a failed background save is reported under its own step
        with self._writing(step):
            saved = self.manager.save(step, args=ocp.args.Composite(**args), force=force)
        self._pending = step if saved else None
        return saved

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

    def restore_latest(self, abstract_state, iterator=None, workdir_model: str = "this workdir's model"):
        """(state, step) of the newest usable checkpoint, or (None, None) when there are none.

        Damaged checkpoints are skipped with a warning and set aside once an older one is restored; raises
        CheckpointError when step folders exist but none is usable, or when one holds a state of other shapes
        (`workdir_model` describes what wrote it, for the message)."""
        bad = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            state, reason = None, self._missing_part(step, iterator is not None)
            with _quiet_failed_reads():
                try:
                    saved = None if reason else self.manager.item_metadata(step)["state"]
                    if saved is not None:
                        check_same_shapes(saved, abstract_state, self.directory / str(step), workdir_model)
                        state = self.restore(step, abstract_state, iterator)
                    reason = reason or (None if saved is not None else "no metadata of the train state")
                except CheckpointError:
                    raise
                except Exception as e:  # orbax raises several kinds for a damaged folder
                    reason = _one_line(e)
            if _on_every_process(reason is None):
                for s, why in bad:
                    logging.warning("checkpoint step %d in %s is unusable (%s): set aside as %s; resumed from step "
                                    "%d", s, self.directory, why, self._set_aside(s), step)
                if bad:
                    self.manager.reload()
                return state, step
            bad.append((step, reason or "unreadable on another process"))
        leftovers = sorted(p.name for p in self.directory.glob(f"*{UNUSABLE}*")) if self.directory.exists() else []
        if bad or leftovers:
            found = "; ".join(f"step {s}: {why}" for s, why in bad) or f"only {', '.join(leftovers)}"
            raise CheckpointError(
                f"no usable checkpoint in {self.directory} ({found}); refusing to start over from step 0: move "
                "the checkpoints folder away (or use another workdir) to start a new run")
        return None, None

    def _missing_part(self, step: int, with_data: bool) -> str | None:
        folder = self.directory / str(step)
        if not (folder / "state").exists():
            return "no state/ folder (the train state)"
        if with_data and not (folder / "data").exists():
            return "no data/ folder (the data iterator's position)"
        return None

    def _set_aside(self, step: int) -> str:
        """Rename a damaged step folder to <step>.unusable[.N] (process 0); where folders cannot be renamed
        (object stores), delete it. Returns what became of it."""
        path = self.directory / str(step)
        target = self.directory / f"{step}{UNUSABLE}"
        n = 0
        while target.exists():
            n += 1
            target = self.directory / f"{step}{UNUSABLE}.{n}"
        if jax.process_index() == 0:
            try:
                path.rename(target)
            except Exception:  # e.g. gs:// has no folder rename
                path.rmtree()
                target = None
        _barrier("ecformer-set-aside")
        return target.name if target is not None else "deleted"

    @contextlib.contextmanager
    def _writing(self, step: int | None):
        """Turn a failed write of checkpoint `step` into one CheckpointSaveError (one line)."""
        try:
            yield
        except Exception as e:  # orbax / tensorstore wrap the OS error (ENOSPC, EACCES, ...) in several kinds
            self._pending = None
            latest = self.manager.latest_step()
            kept = f"the checkpoint of step {latest} is intact" if latest is not None else "no earlier checkpoint"
            raise CheckpointSaveError(f"could not save the checkpoint of step {step} in {self.directory}: "
                                      f"{_one_line(e)} ({kept})") from e

    def wait(self):
        with self._writing(self._pending):
            self.manager.wait_until_finished()
        self._pending = None

    def close(self):
        try:
            self.wait()
        finally:
            self.manager.close()


def check_same_shapes(saved, abstract_state, where, workdir_model: str):
    """The checkpoint's tree (orbax metadata) has the leaves, shapes and dtypes of the state to restore."""
    want, got = _leaves(abstract_state), _leaves(saved)
    differ = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
    if differ:
        k = differ[0]
        raise CheckpointError(
            f"{where} holds a train state of other shapes ({len(differ)} array(s) differ, e.g. {k}: "
            f"{_show(got.get(k))} saved, {_show(want.get(k))} now): it was written for {workdir_model}; use "
            "another workdir or the config it was written with")


def _leaves(tree) -> dict:
    """{'a/b/0': (shape, dtype)} for every array of `tree` (PRNG keys as their uint32 key data, as saved)."""
    def entry(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.eval_shape(jax.random.key_data, x)
        return tuple(x.shape), np.dtype(x.dtype).name

    def name(path):
        return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)

    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {name(p): entry(x) for p, x in flat if hasattr(x, "shape")}


def _show(entry) -> str:
    return "absent" if entry is None else f"{entry[1]}{list(entry[0])}"


# --- the workdir's config -------------------------------------------------------------------------------------
def model_of(config) -> dict:
    """What defines the model's parameters: {'name': ..., 'overrides': {...}}, JSON-normalised."""
    model = json.loads(config.to_json_best_effort())["model"]
    return {"name": model["name"], "overrides": model.get("overrides") or {}}


def describe(model: dict) -> str:
    return f"model '{model['name']}' (overrides {json.dumps(model['overrides'], sort_keys=True)})"


def saved_model(workdir: epath.Path) -> dict | None:
    """The model of the workdir's config.json, or None (no config.json yet, or an unreadable one)."""
    path = workdir / CONFIG
    if not path.exists():
        return None
    try:
        model = json.loads(path.read_text())["model"]
        return {"name": model["name"], "overrides": model.get("overrides") or {}}
    except (ValueError, KeyError, TypeError) as e:
        logging.warning("%s is unreadable (%s): not checked against this config", path, e)
        return None


def check_config(workdir: epath.Path, config) -> str:
    """Refuse a workdir whose config.json names another model or other model options; returns a description of
    the workdir's model for later messages."""
    saved, now = saved_model(workdir), model_of(config)
    if saved is not None and saved != now:
        raise CheckpointError(f"workdir {workdir} was written for {describe(saved)}; this config is "
                              f"{describe(now)}: use another workdir or the config it was written with")
    return describe(saved) if saved is not None else "another config (its config.json is missing)"


def write_config(workdir: epath.Path, config):
    """config.json, written whole or not at all (a temporary file renamed)."""
    tmp = workdir / f"{CONFIG}.tmp"
    tmp.write_text(config.to_json_best_effort(indent=1))
    tmp.replace(workdir / CONFIG)


# --- helpers ---------------------------------------------------------------------------------------------------
def abstract_with_shardings(state, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, shardings)


def _one_line(e: BaseException) -> str:
    """The root cause of an error (the OS or TensorStore message) on one short line."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = " ".join(str(e).split()) or type(e).__name__
    if len(text) > 400:  # the head names the operation, the tail the OS error
        text = f"{text[:150]} ... {text[-240:]}"
    return f"{type(e).__name__}: {text}"


def _on_every_process(ok: bool) -> bool:
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def _barrier(name: str):
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def _quiet_failed_reads():
    """A failed orbax restore leaves its other reads running; their errors would print pages of tracebacks
    (asyncio's 'exception never retrieved', 'event loop is closed'). Silence them while trying a checkpoint."""
    hook, aio = sys.unraisablehook, std_logging.getLogger("asyncio")
    level = aio.level
    sys.unraisablehook = lambda _: None
    aio.setLevel(std_logging.CRITICAL)
    try:
        yield
    finally:
        gc.collect()
        sys.unraisablehook = hook
        aio.setLevel(level)
