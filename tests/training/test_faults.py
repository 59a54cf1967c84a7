"""Training under faults (docs/reliability.md): a checkpoint damaged after its commit, a workdir of another model,
a save that fails (disk full, unwritable), and the train command killed with SIGKILL while a checkpoint is written
or stopped with SIGTERM (tools/fault_harness.py, which also makes the 20-point figure)."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from ecformer_jax import tasks
from ecformer_jax.errors import CheckpointError
from ecformer_jax.training import checkpoints, loop
from ecformer_jax.training.checkpoints import Checkpointer, CheckpointSaveError
from tests.conftest import ROOT
from tests.training import helpers

SIDE = 64  # 16 KiB arrays: stored in an OCDBT data file of their own (small values are inlined in the manifest)


def _state(step: int) -> dict:
    """Random (incompressible) values, so that the array file is as big as the array."""
    return {"w": jax.random.normal(jax.random.key(step), (SIDE, SIDE)), "b": jnp.arange(SIDE, dtype=jnp.float32) + step,
            "step": jnp.asarray(step, jnp.int32)}


def _abstract(shape=(SIDE, SIDE)) -> dict:
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return {"w": jax.ShapeDtypeStruct(shape, jnp.float32, sharding=one),
            "b": jax.ShapeDtypeStruct((SIDE,), jnp.float32, sharding=one),
            "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=one)}


class Position:
    """A data iterator's checkpointable position."""

    def __init__(self, at=None):
        self.at = at

    def get_state(self):
        return {"at": self.at}

    def set_state(self, state):
        self.at = state["at"]


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """checkpoints/1, 2, 3 of a small state, each with its data position; copied by each case."""
    folder = tmp_path_factory.mktemp("faults") / "checkpoints"
    ckpt = Checkpointer(folder, keep=3, async_save=False)
    for step in (1, 2, 3):
        ckpt.save(step, _state(step), Position(step))
    ckpt.close()
    return folder


@pytest.fixture
def copy(saved, tmp_path):
    shutil.copytree(saved, tmp_path / "checkpoints")
    return tmp_path / "checkpoints"


def _array_file(step_folder):
    files = [p for p in (step_folder / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    return max(files, key=lambda p: p.stat().st_size)


DAMAGE = {
    "truncated array file": lambda f: os.truncate(_array_file(f), _array_file(f).stat().st_size // 2),
    "deleted array file": lambda f: _array_file(f).unlink(),
    "empty step folder": lambda f: (shutil.rmtree(f), f.mkdir()),
    "missing iterator state": lambda f: shutil.rmtree(f / "data"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_latest_checkpoint_is_set_aside_and_the_previous_one_restored(copy, damage, caplog):
    DAMAGE[damage](copy / "3")
    ckpt = Checkpointer(copy, keep=3, async_save=False)
    position = Position()
    with caplog.at_level(logging.WARNING):
        state, step = ckpt.restore_latest(_abstract(), position)
    assert step == 2 and position.at == 2 and int(state["step"]) == 2
    assert (state["w"] == _state(2)["w"]).all()
    said = " ".join(r.getMessage() for r in caplog.records)
    assert f"checkpoint step 3 in {copy} is unusable" in said and "set aside as 3.unusable" in said, said
    assert "resumed from step 2" in said
    assert _listing(copy) == ["1", "2", "3.unusable"]
    # training goes on: step 3 is saved anew, and keep=3 counts good checkpoints only (1 makes room, not 2)
    for s in (3, 4):
        ckpt.save(s, _state(s), Position(s))
    ckpt.close()
    assert _listing(copy) == ["2", "3", "3.unusable", "4"]
    again = Checkpointer(copy, keep=3, async_save=False)
    assert again.restore_latest(_abstract(), Position())[1] == 4
    again.close()


def test_no_usable_checkpoint_is_refused_and_nothing_is_touched(copy):
    for step in (1, 2, 3):
        shutil.rmtree(copy / str(step) / "data")
    ckpt = Checkpointer(copy, keep=3, async_save=False)
    with pytest.raises(CheckpointError, match="no usable checkpoint in .*step 3: no data/ folder.*refusing to start "
                                              "over from step 0") as e:
        ckpt.restore_latest(_abstract(), Position())
    assert "\n" not in str(e.value)
    ckpt.close()
    assert _listing(copy) == ["1", "2", "3"]
    # only set-aside folders left (the good ones deleted by hand): refused too, not a silent start from 0
    for step in (1, 2, 3):
        shutil.rmtree(copy / str(step))
    (copy / "3.unusable").mkdir()
    with pytest.raises(CheckpointError, match=r"only 3\.unusable"):
        Checkpointer(copy, keep=3, async_save=False).restore_latest(_abstract(), Position())


def test_a_checkpoint_of_other_shapes_is_refused_naming_both(copy):
    ckpt = Checkpointer(copy, keep=3, async_save=False)
    with pytest.raises(CheckpointError, match=r"3 holds a train state of other shapes \(1 array\(s\) differ, e\.g\. "
                                              r"w: float32\[64, 64\] saved, float32\[32, 32\] now\): it was written "
                                              r"for model 'x'") as e:
        ckpt.restore_latest(_abstract((32, 32)), Position(), workdir_model="model 'x'")
    assert "\n" not in str(e.value)
    ckpt.close()
    assert _listing(copy) == ["1", "2", "3"]


def test_a_workdir_of_another_model_or_options_is_refused(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    checkpoints.write_config(workdir, helpers.config("fuseformer"))
    sttn = helpers.config("sttn")
    with pytest.raises(CheckpointError) as e:  # refused before any model is built
        loop.train(sttn, workdir, tasks.for_config(sttn))
    msg = str(e.value)
    assert msg.startswith(f"workdir {workdir} was written for model 'fuseformer' (overrides {{") and "\n" not in msg
    assert "); this config is model 'sttn' (overrides {\"channels\": 32, \"num_blocks\": 1," in msg, msg
    checkpoints.write_config(workdir, sttn)
    wider = helpers.config("sttn")
    wider.model.overrides.channels = 64
    with pytest.raises(CheckpointError, match="was written for model 'sttn' .*\"channels\": 32.*this config is "
                                              "model 'sttn' .*\"channels\": 64"):
        checkpoints.check_config(workdir, wider)
    other_lr = helpers.config("sttn", **{"optim.lr": 1e-5, "num_steps": 99})  # training options may change
    assert checkpoints.check_config(workdir, other_lr).startswith("model 'sttn'")


def test_an_unwritable_workdir_is_one_os_error(tmp_path):
    (tmp_path / "file").write_text("")
    c = helpers.config("sttn")
    with pytest.raises(OSError):  # the train command prints it on one line and exits 2
        loop.train(c, tmp_path / "file" / "run", tasks.for_config(c))


def test_an_unwritable_checkpoints_folder_at_save_time_keeps_the_previous_checkpoint(copy):
    ckpt = Checkpointer(copy, keep=3, async_save=True)
    if os.geteuid() != 0:
        os.chmod(copy, 0o555)
    else:  # root writes through chmod: the folder is replaced by a file instead
        copy.rename(copy.with_name("real"))
        copy.write_text("")
    try:
        with pytest.raises(CheckpointSaveError) as e:
            ckpt.save(4, _state(4), Position(4))
            ckpt.wait()
    finally:
        if os.geteuid() != 0:
            os.chmod(copy, 0o755)
        else:
            copy.unlink()
            copy.with_name("real").rename(copy)
    msg = str(e.value)
    assert msg.startswith(f"could not save the checkpoint of step 4 in {copy}: ") and "\n" not in msg, msg
    assert "(the checkpoint of step 3 is intact)" in msg
    ckpt.close()
    assert [s for s in _listing(copy) if s.isdigit()] == ["1", "2", "3"]
    assert Checkpointer(copy, keep=3).restore_latest(_abstract(), Position())[1] == 3


DISK_FULL = """
import resource, signal, sys
sys.path[:0] = [{root!r}]
from tests.training.test_faults import Checkpointer, Position, _state
ckpt = Checkpointer({folder!r}, keep=3, async_save=True)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))  # files over 4 KiB: EFBIG, as disk full
try:
    ckpt.save(4, _state(4), Position(4))
    ckpt.wait()
except OSError as e:
    print("ERROR:", e)
"""


def test_disk_full_at_save_time_is_one_error_and_keeps_the_previous_checkpoint(copy):
    script = DISK_FULL.format(root=str(ROOT), folder=str(copy))
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    errors = [line for line in res.stdout.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1, res.stdout + res.stderr[-3000:]
    msg = errors[0]
    assert f"could not save the checkpoint of step 4 in {copy}: " in msg and "File too large" in msg, msg
    assert "(the checkpoint of step 3 is intact)" in msg
    ckpt = Checkpointer(copy, keep=3)
    assert ckpt.restore_latest(_abstract(), Position())[1] == 3 and ckpt.manager.all_steps() == [1, 2, 3]
    ckpt.close()


def _harness():
    spec = importlib.util.spec_from_file_location("fault_harness", ROOT / "tools" / "fault_harness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_train_command_killed_while_saving_and_stopped_by_sigterm_ends_bit_identical(tmp_path):
    """One uninterrupted run and one run killed (SIGKILL while the step-4 checkpoint and its data position are
    written), restarted, stopped with SIGTERM after step 4 or 5, restarted to the end: every restart resumes from
    the newest committed checkpoint, SIGTERM exits 0 with a checkpoint of the step it stopped at, and every logged
    loss and the final train state equal the uninterrupted run's bit for bit."""
    fh = _harness()
    config = tmp_path / "tiny.py"
    config.write_text(fh.TINY.format(steps=6, checkpoint_every=2, keep=3))
    env = fh.environment(tmp_path / "jax_cache")
    reference, faulted = tmp_path / "reference", tmp_path / "faulted"
    fh.run_reference(fh.command(str(config), reference), env, tmp_path / "reference.log")
    points = [{"signal": "SIGKILL", "phase": "data", "target": 4, "delay_s": 0.0},
              {"signal": "SIGTERM", "phase": "step", "target": 4, "delay_s": 0.0}]
    result = fh.run_with_faults(fh.command(str(config), faulted), faulted, points, env, tmp_path / "logs")
    kill, term = result["kills"]
    report = json.dumps(result, indent=1)
    assert kill["exit"] == -9 and kill["writing"] == ["4.orbax-checkpoint-tmp"], report
    assert kill["data_item"] != ["absent"] and kill["newest_committed"] == 2 and kill["resumed_from"] == 2, report
    assert term["exit"] == 0 and term["steps_lost"] == 0, report
    assert term["newest_committed"] == term["last_logged"] == term["resumed_from"] >= 4, report
    assert result["restarts"] == 2 and not result["unused_points"], report
    same = fh.compare(reference, faulted)
    assert same["losses_bit_identical"] and same["steps_compared"] == 6, same
    assert fh.final_state_identical(reference, faulted, 6)
