"""A run killed with SIGKILL and restarted continues with the same numbers; 2 processes x 2 devices
train exactly like 1 process x 4 devices."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import ROOT

WORKER = str(ROOT / "tests" / "training" / "worker.py")

CONFIG = """
import runpy
def get_config():
    c = runpy.run_path({configs!r})["get_config"]("tiny")
    c.model.overrides.channels = 32
    c.model.overrides.num_blocks = 1
    c.model.discriminator = "fuseformer_discriminator"
    c.num_steps = {steps}
    c.batch_size = {batch}
    c.log_every = 1
    c.image_every = 0
    c.checkpoint_every = {every}
    c.async_checkpoints = True
    c.data.synthetic_videos = 4
    c.seed = 7
    return c
"""


def _config(tmp_path, steps, batch, every):
    path = tmp_path / "cfg.py"
    path.write_text(CONFIG.format(configs=str(ROOT / "configs" / "sttn.py"), steps=steps, batch=batch, every=every))
    return str(path)


def _env(devices):
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu",
            "PYTHONUNBUFFERED": "1"}


def _metrics(workdir):
    rows = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            rows[r["step"]] = r  # a resumed run logs the replayed steps again; the last write wins
    return rows


def _run(args, devices=1, timeout=600):
    res = subprocess.run([sys.executable, WORKER, *args], env=_env(devices), capture_output=True, text=True,
                         cwd=ROOT, timeout=timeout)
    assert res.returncode == 0 and "WORKER-DONE" in res.stdout, res.stdout[-2000:] + res.stderr[-4000:]
    return res


def test_sigkill_and_resume_gives_the_same_losses(tmp_path):
    cfg = _config(tmp_path, steps=6, batch=2, every=2)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    _run([cfg, a, str(tmp_path / "a.npz")])

    # the same run, killed with SIGKILL right after its step-2 checkpoint is complete, then restarted
    proc = subprocess.Popen([sys.executable, WORKER, cfg, b, str(tmp_path / "b.npz")], env=_env(1), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while not os.path.isdir(os.path.join(b, "checkpoints", "2")):
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.time() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(_metrics(b))
    assert killed_at < 6, "the run finished before it was killed"
    _run([cfg, b, str(tmp_path / "b.npz")])

    ma, mb = _metrics(a), _metrics(b)
    assert sorted(ma) == sorted(mb) == list(range(1, 7))
    for step in range(3, 7):  # steps after the restored checkpoint were recomputed by the resumed run
        for key in ("g_loss", "d_loss", "hole_l1", "valid_l1"):
            assert mb[step][key] == pytest.approx(ma[step][key], rel=1e-5, abs=1e-7), (step, key)
    pa, pb = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    for k in pa.files:
        np.testing.assert_allclose(pb[k], pa[k], rtol=1e-5, atol=1e-7, err_msg=k)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
    cfg = _config(tmp_path, steps=3, batch=4, every=3)
    _run([cfg, str(tmp_path / "one"), str(tmp_path / "one.npz")], devices=4)

    port = _free_port()
    procs = [subprocess.Popen([sys.executable, WORKER, cfg, str(tmp_path / "two"), str(tmp_path / "two.npz"),
                               str(pid), "2", str(port)], env=_env(2), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for pid in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and "WORKER-DONE" in out, out[-2000:] + err[-4000:]
    assert "WORKER-DONE 1 4" in outs[1][0]  # process 1 saw the 4 global devices
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert one.files == two.files
    for k in one.files:
        if k.endswith("key/bias"):  # no effect on attention (softmax is shift invariant): its gradient is noise
            continue
        # the same math; only the all-reduce order differs (gloo across processes vs in-process). Adam with
        # beta1=0 turns a gradient of ~0 into a +-lr step, so an element whose gradient is ~0 may flip: compare
        # each tensor as a whole and allow a handful of such elements.
        diff = np.linalg.norm(two[k] - one[k]) / max(np.linalg.norm(one[k]), 1e-12)
        assert diff < 1e-3, (k, diff)
        assert np.mean(~np.isclose(two[k], one[k], rtol=1e-4, atol=1e-5)) < 1e-2, k
    m1, m2 = _metrics(str(tmp_path / "one")), _metrics(str(tmp_path / "two"))
    assert m2[3]["g_loss"] == pytest.approx(m1[3]["g_loss"], rel=1e-5)
