"""The package's layering (dependencies point down), read from the source with ast: every import of ours,
at module level or inside a function, goes to a package at or below the importer's level, and nothing
imports a command module.

    errors -> paths -> huge_pages -> run_once -> layers -> models -> convert -> data -> training -> inference -> tasks
    -> configs -> evaluation -> commands (train.py, inpaint.py, upscale.py, evaluate.py, convert/__main__.py)
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ecformer_jax"
# bottom to top; a module may import its own package and the packages before it
LEVELS = ("errors", "paths", "huge_pages", "run_once", "layers", "models", "convert", "data", "training", "inference",
          "tasks", "configs", "evaluation", "commands")
COMMANDS = {"ecformer_jax.train", "ecformer_jax.inpaint", "ecformer_jax.upscale", "ecformer_jax.evaluate",
            "ecformer_jax.convert.__main__"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def level(module: str) -> str:
    """The layer of one of our modules ('root' for ecformer_jax/__init__.py)."""
    if module in COMMANDS:
        return "commands"
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    if parts[1] not in LEVELS:
        raise AssertionError(f"{module}: not in any layer of {LEVELS}; place it in LEVELS / COMMANDS")
    return parts[1]


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import of ours in the file; `from pkg import name` counts as pkg.name
    when that is a module of ours (a submodule or a command), else as pkg."""
    module = module_name(path)
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "ecformer_jax"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_pkg else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "ecformer_jax":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                known = sub in COMMANDS or (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists() or (
                    PACKAGE.parent / sub.replace(".", "/")).is_dir()
                out.append((node.lineno, sub if known else target))
    return out


def edges():
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, target in imports_of(path):
            yield path.relative_to(PACKAGE.parent), line, module_name(path), target


def violation(importer: str, target: str) -> str | None:
    src, dst = level(importer), level(target)
    if dst == "commands":
        return "imports a command module"
    if src == "commands" or src == dst:
        return None
    if src == "root":
        return "the package root imports nothing of ours eagerly"
    if dst == "root":
        return None
    if LEVELS.index(dst) > LEVELS.index(src):
        return f"{src} imports {dst}, which sits above it"
    return None


def test_classifier():
    assert level("ecformer_jax.models.e2fgvi") == "models" and level("ecformer_jax.convert.__main__") == "commands"
    assert violation("ecformer_jax.models.e2fgvi", "ecformer_jax.convert.state_dict")
    assert violation("ecformer_jax.convert", "ecformer_jax.models") is None
    assert violation("ecformer_jax.tasks.inpainting", "ecformer_jax.inpaint") == "imports a command module"
    assert violation("ecformer_jax.inpaint", "ecformer_jax.evaluation.metrics") is None
    assert len(list(edges())) > 100


@pytest.mark.parametrize("package", [lv for lv in LEVELS if lv != "commands"] + ["commands", "root"])
def test_layering(package):
    bad = [f"{path}:{line}: {importer} -> {target}: {why}"
           for path, line, importer, target in edges() if level(importer) == package
           for why in [violation(importer, target)] if why]
    assert not bad, "layering violations:\n" + "\n".join(bad)


def test_training_imports_no_model_by_name():
    """The one loop knows models only through the registry (`ecformer_jax.models`), never a model file."""
    allowed = {"ecformer_jax.models", "ecformer_jax.models.registry"}
    bad = [f"{path}:{line}: {importer} -> {target}" for path, line, importer, target in edges()
           if level(importer) == "training" and level(target) == "models" and target not in allowed]
    assert not bad, "training imports model files:\n" + "\n".join(bad)
