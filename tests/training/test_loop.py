"""The one loop knows no task and no model; presets resolve inside the package; the command's flags."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ecformer_jax
from ecformer_jax import configs, tasks
from ecformer_jax.training import loop

PACKAGE = Path(ecformer_jax.__file__).parent


def _imports(path: Path) -> set[str]:
    """Every module a file imports (`import a.b` -> a.b; `from a import b` -> a and a.b)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


@pytest.mark.parametrize("name", ["loop.py", "state.py", "checkpoints.py", "metrics.py", "sharding.py", "config.py"])
def test_training_imports_no_model_and_no_task(name):
    imported = _imports(PACKAGE / "training" / name)
    bad = sorted(m for m in imported if m.startswith(("ecformer_jax.models", "ecformer_jax.tasks",
                                                       "ecformer_jax.layers")))
    assert not bad, f"training/{name} imports {bad}"
    assert "ecformer_jax.models" not in imported and "ecformer_jax.tasks" not in imported


def test_loop_has_no_task_branches():
    source = (PACKAGE / "training" / "loop.py").read_text()
    for word in ("inpainting", "super_resolution", "\"sr\"", "discriminator", "spynet"):
        assert word not in source, word


def test_data_does_not_import_training():
    for path in (PACKAGE / "data").rglob("*.py"):
        bad = sorted(m for m in _imports(path) if m.startswith("ecformer_jax.training"))
        assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"
    # one direction between the sources and the TFDS builder: tfds imports datasets, never the reverse
    assert not any(m.startswith("ecformer_jax.data.tfds") for m in _imports(PACKAGE / "data" / "datasets.py"))


def test_preset_names_resolve_inside_the_package(tmp_path):
    path, _, variant = configs.resolve("sttn:tiny").partition(":")
    assert Path(path) == PACKAGE / "configs" / "sttn.py" and variant == "tiny"
    assert configs.resolve("sttn") == str(PACKAGE / "configs" / "sttn.py")
    assert configs.resolve("configs/sttn.py:tiny") == "configs/sttn.py:tiny"  # a path stays a path
    assert "sttn" in configs.names() and "vsr_transformer" in configs.names() and "_mixers" not in configs.names()
    c = configs.get_config("sttn:tiny")
    assert c.model.name == "sttn" and c.data.width == 96 and c.batch_size == 2
    assert configs.get_config("sttn").data.width == 432
    with pytest.raises(ValueError, match="unknown config preset 'nope'"):
        configs.resolve("nope:tiny")
    own = tmp_path / "mine.py"
    own.write_text("from ecformer_jax import configs\n\ndef get_config(arg=None):\n"
                   "    c = configs.get_config('swin:' + (arg or ''))\n    c.seed = 5\n    return c\n")
    c = configs.get_config(f"{own}:tiny")
    assert c.model.name == "swin" and c.seed == 5 and c.batch_size == 2


def test_the_train_command_flag_takes_presets_files_and_overrides(tmp_path):
    from absl import flags

    from ecformer_jax import train

    argv = ["x", "--config", "sttn:tiny", "--config.seed=3"]
    values = flags.FlagValues()
    holder = train.define_config_flag(values, sys_argv=argv)
    values(argv)
    assert holder.value.model.name == "sttn" and holder.value.data.width == 96 and holder.value.seed == 3
    assert tasks.for_config(holder.value) is tasks.get("inpainting")
    argv = ["x", f"--config={PACKAGE / 'configs' / 'vsr_transformer.py'}:tiny", "--config.optim.lr=0.01"]
    values = flags.FlagValues()
    holder = train.define_config_flag(values, sys_argv=argv)
    values(argv)
    assert holder.value.optim.lr == 0.01 and tasks.for_config(holder.value) is tasks.get("super_resolution")
    values = flags.FlagValues()
    train.define_config_flag(values, sys_argv=["x", "--config=nope"])
    with pytest.raises(flags.IllegalFlagValueError, match="unknown config preset 'nope'"):
        values(["x", "--config=nope"])


def test_tasks_registry():
    assert set(tasks.TASKS) == {"inpainting", "super_resolution", "flow_completion"}
    c = configs.get_config("sttn:tiny")
    c.model.name = "sttn_discriminator"
    with pytest.raises(ValueError, match="no task trains it"):
        tasks.for_config(c)
    assert loop.train.__code__.co_varnames[:3] == ("config", "workdir", "task")


@pytest.mark.slow
def test_train_command_runs_a_preset_from_another_folder_quietly(tmp_path):
    """`python -m ecformer_jax.train --config sttn:micro` outside the checkout: the workdir layout, and no
    backend probing / font-cache noise on stderr by default."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "JAX_PLATFORMS": "", "PYTHONPATH": str(PACKAGE.parent)}
    cmd = [sys.executable, "-m", "ecformer_jax.train", "--config", "sttn:micro", "--workdir", "runs/x",
           "--config.num_steps=1", "--config.image_every=0"]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    run = tmp_path / "runs" / "x"
    assert (run / "config.json").is_file() and (run / "checkpoints" / "1" / "state").is_dir()
    assert (run / "checkpoints" / "1" / "data").is_dir() and (run / "metrics.jsonl").is_file()
    for noise in ("Unable to initialize backend", "font cache", "Initializing backend", "orbax"):
        assert noise not in res.stderr, (noise, res.stderr[-2000:])
    res = subprocess.run(cmd[:3] + ["--config", "nope"] + cmd[5:], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode != 0 and "unknown config preset 'nope'" in res.stderr
