"""Shared fixtures. Parity fixtures live in ../shared/parity (or $ECFORMER_PARITY_DIR); outside CI a
missing folder skips the parity tests with the reason, in CI (CI=true) it fails them."""
from __future__ import annotations

import os
from pathlib import Path

# CPU tests, also where libtpu is installed (the tpu extra, for the AOT test): no probing for a TPU VM in this
# process or in the subprocesses the tests start
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # two test workers may both compile for a TPU topology

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def shared_dir(sub: str, env: str) -> Path:
    return Path(os.environ[env]) if os.environ.get(env) else ROOT.parent / "shared" / sub


def require(path: Path, what: str) -> Path:
    if not path.exists():
        msg = f"{what} not found at {path}"
        if IN_CI:
            pytest.fail(msg + " (CI=true: missing fixtures fail)")
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    return require(shared_dir("parity", "ECFORMER_PARITY_DIR"), "parity fixture folder")


@pytest.fixture(scope="session")
def tennis_dir() -> Path:
    return require(shared_dir("data", "ECFORMER_DATA_DIR") / "tennis", "example clip ../shared/data/tennis")
