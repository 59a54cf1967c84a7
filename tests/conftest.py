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

# The huge-page tunable the commands restart with (ecformer_jax/huge_pages.py), for the xdist workers and the
# subprocesses the tests start (they inherit it; this process itself started without it)
from ecformer_jax import huge_pages  # noqa: E402

_HUGE_PAGES = huge_pages.environment()
if _HUGE_PAGES:
    os.environ["GLIBC_TUNABLES"] = _HUGE_PAGES["GLIBC_TUNABLES"]


# One persistent XLA compilation cache per test run, shared by both xdist workers (they inherit this process's
# environment) and by every subprocess the tests start (a resumed or restarted run compiles the same programs
# again). New for each run and removed at its end: nothing outlives the run, and a run measures what CI measures.
_CACHE_OWNER = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _CACHE_OWNER:
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="ecformer-jax-test-xla-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# LLVM at -O1 instead of XLA's default -O2: the tests are mostly compile-bound and compile ~10 % faster, while the
# run-bound ones (the E2FGVI-HQ protocol fixture, the parity runs) measured no slower; same float semantics
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=1").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
# Most tests in this process compile far longer than they run: their programs are built with XLA's "most
# optimizations off" (LLVM -O0, no expensive passes). The e2fgvi_hq training step's compile + first run: 53 -> 34 s;
# its later steps run 3x slower, so tests that run many steps or real-size frames are marked `optimized` and get
# the -O1 build above (at -O0 the ProPainter learner took 306 s instead of 65, the 2-process run 183 instead of
# 122). The subprocesses the tests start (training runs of several steps) keep the -O1 build.
if "JAX_DISABLE_MOST_OPTIMIZATIONS" not in os.environ:
    jax.config.update("jax_disable_most_optimizations", True)

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


# The longest tests (measured with --durations; seconds on the 2-core CI machine), longest first. xdist's
# worksteal hands each of the two workers one contiguous half of the collection; the long tests open both
# halves, alternately, so they start early on both workers instead of ending the run on one of them.
LONGEST = (
    "tests/test_protocol_fixture.py::test_e2fgvi_hq_matches_official_test_py",  # 90 (one window since session 27)
    "tests/training/test_resume_multiprocess.py::test_two_processes_match_one_and_resume_after_sigkill",  # 140
    "tests/training/test_faults.py::test_train_command_killed_while_saving_and_stopped_by_sigterm_ends_bit_identical",
    "tests/training/test_propainter_training.py::test_propainter_loss_goes_down_on_a_fixed_clip",  # 110
    "tests/training/test_step.py::test_train_step_runs_for_generator[e2fgvi_hq]",  # 66
    "tests/training/test_propainter_training.py::test_flow_completion_loss_goes_down_on_a_fixed_clip",  # 53
    "tests/test_aot_compile.py::test_train_step_compiles_for_a_v5e_topology",  # 52
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST)}
    longest = sorted((it for it in items if it.nodeid in rank), key=lambda it: rank[it.nodeid])
    rest = [it for it in items if it.nodeid not in rank]
    first, second = longest[0::2], longest[1::2]
    half = len(items) // 2 - len(first)
    items[:] = first + rest[:half] + second + rest[half:]


@pytest.fixture(autouse=True)
def _optimized_build(request):
    """`@pytest.mark.optimized`: this test's programs get the optimising (-O1) build."""
    if request.node.get_closest_marker("optimized") is None:
        yield
        return
    saved = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", saved)


def pytest_unconfigure(config):
    if _CACHE_OWNER:
        import shutil

        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
