"""tools/aot_compile.py: the trainer's own step compiled for a real TPU topology (v5e 2x2) on this CPU host
with libtpu (the tpu extra), and its report. One compile of a tiny STTN, at the TPU compiler's lowest
optimisation effort (JAX_EXEC_TIME_OPTIMIZATION_EFFORT=-1: 20 s instead of 55 s on one core; the program is the
same step, scheduled with less search, so its memory figures are higher than the tool's default)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ecformer_jax.training import aot
from tests.conftest import IN_CI, ROOT

TOOL = ROOT / "tools" / "aot_compile.py"


def test_collectives_are_read_from_the_hlo_text():
    hlo = """
  %all-reduce.1 = (f32[10,4]{1,0}, bf16[8]{0}) all-reduce(f32[10,4]{1,0} %a, bf16[8]{0} %b), replica_groups={}
  %ag = bf16[16,128]{1,0} all-gather-start(bf16[1,128]{1,0} %c), dimensions={0}
  %fusion.3 = f32[10]{0} fusion(f32[10]{0} %all-reduce.1), kind=kLoop
"""
    assert aot.collectives(hlo) == {"all-reduce": {"count": 1, "bytes": 10 * 4 * 4 + 8 * 2},
                                     "all-gather": {"count": 1, "bytes": 16 * 128 * 2}}
    hlo += ('  %cp = f32[4]{0} collective-permute(f32[4]{0} %d), source_target_pairs={{0,1}}, '
            'metadata={op_name="jit(step)/jvp(E2FGVI)/concatenate" source_file="x.py"}\n')
    assert aot.collective_sources(hlo) == {"all-gather": {"?": 1}, "collective-permute": {"jvp(E2FGVI)/concatenate": 1}}


def test_a_program_refused_for_lack_of_hbm_is_reported_not_raised():
    """What tools/aot_compile.py prints when the TPU compiler refuses a step (DSTT with 10 clips per v5e chip)."""
    err = RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
                       "(16.12G) exceeds available HBM (15.75G).\nMore details")
    out = aot.refused(err, "v5e", 16, {"model": "dstt", "batch": 160}, 13.71)
    assert out["fits"] is False and out["model"] == "dstt" and out["devices"] == 16 and out["hbm_GiB"] == 16.0
    assert out["temporary_GiB"] == 16.12 and out["usable_GiB"] == 15.75 and out["compile_s"] == 13.7
    assert out["refused"].startswith("RESOURCE_EXHAUSTED") and "\n" not in out["refused"]
    assert aot.refused(RuntimeError("INVALID_ARGUMENT: something else"), "v5e", 16, {}, 1.0) is None


@pytest.mark.slow
def test_train_step_compiles_for_a_v5e_topology():
    if not IN_CI:  # in CI the tpu extra is installed (.ci/run): a missing libtpu fails there
        pytest.importorskip("libtpu", reason="the tpu extra (libtpu) is not installed")
    res = subprocess.run([sys.executable, str(TOOL), "--config", "sttn:micro", "--topology", "v5e:2x2",
                          "--dtype", "bfloat16"], capture_output=True, text=True, cwd=ROOT, timeout=900,
                         env={**os.environ, "JAX_EXEC_TIME_OPTIMIZATION_EFFORT": "-1"})
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["device_kind"].startswith("TPU v5") and report["devices"] == 4
    assert report["batch"] == 4 and report["per_chip_batch"] == 1  # the config's 2 raised to one clip per chip
    assert report["dtype"] == "bfloat16" and report["clip"] == [2, 32, 64]
    mem = report["per_chip_bytes"]
    # the state is donated: the updated state reuses the input buffers
    assert mem["aliased"] > 0.95 * mem["outputs"] and mem["temporary"] > 0
    assert report["fits"] and report["hbm_GiB"] == 16.0 and 0 < report["per_chip_GiB"] < 1
    assert report["flops_per_step"] == pytest.approx(4 * report["flops_per_chip"]) and report["flops_per_chip"] > 1e9
    # data parallel: the gradients are summed over the chips, nothing else is communicated
    assert set(report["collectives"]) == {"all-reduce"}


def test_v4_is_one_device_per_chip_and_a_bad_topology_is_one_line():
    """A v4 pod runs each chip's two TensorCores as one device (megacore): v4:2x2x4 is v4-32, 16 devices of
    32 GiB. libtpu's default compile-only v4 topology has a device per core, which JAX's mesh refuses."""
    if not IN_CI:
        pytest.importorskip("libtpu", reason="the tpu extra (libtpu) is not installed")
    script = ("import sys; sys.path.insert(0, 'tools'); from absl import app; import aot_compile as t\n"
              "gen, devices = t.topology_devices('v4:2x2x4')\n"
              "print(gen, len(devices), devices[0].device_kind, devices[0].num_cores)\n"
              "try:\n    t.topology_devices('v4:3x3x3')\nexcept app.UsageError as e:\n    print('USAGE', e)\n")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.strip().splitlines()
    assert lines[0] == "v4 16 TPU v4 2"
    assert lines[1].startswith("USAGE --topology 'v4:3x3x3': libtpu has no such topology (") and len(lines) == 2
    assert aot.CHIPS["v4"] == (32 * aot.GiB, 275e12)
