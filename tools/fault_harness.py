"""Kill a tiny training run at seeded random moments; check that every restart resumes from the newest committed
checkpoint and that the run ends with exactly the numbers of an uninterrupted run.

    python tools/fault_harness.py --points 20 --seed 0                   # 20 SIGKILLs, JSON on stdout
    python tools/fault_harness.py --points 2 --sigterm 1 --steps 6 --checkpoint-every 2
    python tools/fault_harness.py --config sttn:tiny --set data.num_frames=2 --points 5

It runs `python -m ecformer_jax.train` (default config: STTN tiny, 32 channels, one block, the FuseFormer
discriminator, 2-frame clips, batch 1, async checkpoints, a loss row per step) once uninterrupted (the reference)
and once under faults: each kill point waits for its moment in a fresh process (a logged step, plus a random
delay; a checkpoint being written, plus a random delay; the data iterator's state of a checkpoint being written:
its item folder created, or committed while the step is not), sends SIGKILL
(or SIGTERM), looks at what is committed, and restarts with the same workdir until the run completes. Prints JSON:
the kill points (what was being written, the newest committed step, the step the restart resumed from, the steps
lost), the maximum absolute difference of every logged loss against the reference (after a restart the replayed
steps' rows win) and whether the final train states are bit-identical.

Restarts share a persistent JAX compilation cache (<out>/jax_cache; --no-cache to compile every time) so that a
restart costs seconds. On the CPU the faulted run is bit-identical to the reference.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TMP = ".orbax-checkpoint-tmp"
COMPARED = ("g_loss", "d_loss", "hole_l1", "valid_l1", "g_adv", "g_grad_norm", "d_grad_norm", "lr", "psnr", "loss")

TINY = """from ecformer_jax import configs


def get_config():
    c = configs.get_config("sttn:micro")
    c.batch_size = 1
    c.num_steps = {steps}
    c.checkpoint_every = {checkpoint_every}
    c.keep_checkpoints = {keep}
    c.log_every = 1
    c.image_every = 0
    c.async_checkpoints = True
    c.seed = 7
    return c
"""


# --- the workdir, seen from outside ------------------------------------------------------------------------------
class Metrics:
    """metrics.jsonl read incrementally; a torn last line (a kill mid-write) is left for later or counted."""

    def __init__(self, workdir: Path):
        self.path, self.offset, self.rows, self.torn = Path(workdir) / "metrics.jsonl", 0, [], 0

    def poll(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        complete = data[:data.rfind(b"\n") + 1]
        self.offset += len(complete)
        new = []
        for line in complete.decode().splitlines():
            try:
                new.append(json.loads(line))
            except ValueError:
                self.torn += 1
        self.rows += new
        return new


def committed(workdir: Path) -> list[int]:
    folder = Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def in_progress(workdir: Path) -> list[Path]:
    """Checkpoints being written (orbax's temporary folders), oldest step first."""
    folder = Path(workdir) / "checkpoints"
    found = [p for p in folder.iterdir() if TMP in p.name] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split(".")[0]))


def data_item(tmp: Path) -> str:
    """How far the data iterator's state is in a checkpoint being written: absent, started (its temporary item
    folder), written (the JSON inside) or committed (the item renamed; the step not yet)."""
    if (tmp / "data").exists():
        return "committed"
    item = tmp / f"data{TMP}"
    if not item.exists():
        return "absent"
    return "written" if any(item.glob("process_*.json")) else "started"


def last_rows(rows: list[dict]) -> dict[int, dict]:
    return {r["step"]: r for r in rows}  # a replayed step's last row wins


# --- runs ----------------------------------------------------------------------------------------------------------
def command(config: str, workdir: Path, overrides=()) -> list[str]:
    return [sys.executable, "-m", "ecformer_jax.train", "--config", config, "--workdir", str(workdir),
            *(f"--config.{o}" for o in overrides)]


def environment(cache: Path | None) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    env.setdefault("JAX_PLATFORMS", "cpu")
    if cache is not None:
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


def run_reference(cmd: list[str], env: dict, log: Path, timeout: float = 1800) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as out:
        rc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, timeout=timeout).returncode
    if rc != 0:
        raise RuntimeError(f"the reference run failed (exit {rc}); see {log}")
    return time.perf_counter() - t0


def plan(points: int, seed: int, steps: int, checkpoint_every: int, sigterm: int = 0) -> list[dict]:
    """Seeded kill points in the order they fire: phase 'step' (after a logged step + a delay), 'save' (while a
    checkpoint is written: its temporary folder exists, + a delay) or 'data' (its data/ item appears); SIGTERM
    points are 'step' points."""
    rng = random.Random(seed)
    saves = sorted({s for s in range(checkpoint_every, steps + 1, checkpoint_every)} | {steps})
    out = []
    for i in range(points + sigterm):
        phase = "step" if i >= points else rng.choices(["step", "save", "data"], [0.4, 0.4, 0.2])[0]
        target = rng.randint(1, steps - 1) if phase == "step" else rng.choice(saves)
        delay = round(rng.uniform(0, 0.5 if phase == "step" else 0.2), 3) if phase != "data" else 0.0
        out.append({"signal": "SIGTERM" if i >= points else "SIGKILL", "phase": phase, "target": target,
                    "delay_s": delay})
    rng.shuffle(out)  # SIGTERM points anywhere in the sequence
    return sorted(out, key=lambda p: p["target"])


def _moment(point: dict, workdir: Path, metrics: Metrics, first_row: int, stale: set, proc) -> bool:
    """Wait for the point's moment in this attempt (rows from `first_row` on; temporary folders of this attempt:
    those in `stale`, left by a killed attempt, count only once they have gone and come back); False if the
    process ended first."""
    while proc.poll() is None:
        writing = in_progress(workdir)
        stale &= {p.name for p in writing}  # cleaned up by the restart: a folder of that name is new
        if point["phase"] == "step":
            metrics.poll()
            if any(r["step"] >= point["target"] for r in metrics.rows[first_row:]):
                return True
        else:
            for tmp in writing:
                if (int(tmp.name.split(".")[0]) >= point["target"] and tmp.name not in stale
                        and (point["phase"] == "save" or data_item(tmp) != "absent")):
                    return True
        time.sleep(0.002)
    return False


def run_with_faults(cmd: list[str], workdir: Path, points: list[dict], env: dict, logs: Path,
                    timeout: float = 1800) -> dict:
    """Run `cmd` to completion through the kill points (one per attempt); returns {'kills': [...], ...}."""
    workdir, logs = Path(workdir), Path(logs)
    logs.mkdir(parents=True, exist_ok=True)
    metrics, kills, pending = Metrics(workdir), [], list(points)
    deadline = time.time() + timeout
    for attempt in range(len(points) + 1):
        point = pending.pop(0) if pending else None
        first_row, before = len(metrics.rows), (committed(workdir) or [0])[-1]
        stale = {p.name for p in in_progress(workdir)}
        with open(logs / f"attempt_{attempt:02d}.log", "w") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                    start_new_session=True)
            fired = point is not None and _moment(point, workdir, metrics, first_row, stale, proc)
            if fired:
                time.sleep(point["delay_s"])
                writing = [p.name for p in in_progress(workdir) if p.name not in stale]
                os.killpg(proc.pid, getattr(signal, point["signal"]))
            try:
                rc = proc.wait(timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                raise RuntimeError(f"attempt {attempt} did not finish in time; see {logs}") from None
        metrics.poll()
        new = [r["step"] for r in metrics.rows[first_row:]]
        if kills:  # this attempt restarted after the previous kill: from which step?
            k = kills[-1]
            k["resumed_from"] = new[0] - 1 if new else before
            k["steps_lost"] = k["last_logged"] - k["resumed_from"]
            k["resumed_from_newest_committed"] = k["resumed_from"] == k["newest_committed"]
        if not fired:
            if rc != 0:
                raise RuntimeError(f"attempt {attempt} failed (exit {rc}) without a kill; see {logs}")
            return {"kills": kills, "restarts": attempt, "unused_points": ([point] if point else []) + pending,
                    "torn_metric_lines": metrics.torn}
        moment = "checkpoint being written" if writing else "training" if new else "startup (restore, compile)"
        kills.append({**point, "attempt": attempt, "exit": rc, "moment": moment,
                      "last_logged": max(new, default=before), "writing": writing,
                      "data_item": [data_item(workdir / "checkpoints" / n) for n in writing],
                      "newest_committed": (committed(workdir) or [0])[-1]})
    raise AssertionError("unreachable")


def compare(reference: Path, faulted: Path) -> dict:
    """Every step's logged numbers (last write wins) of the faulted run against the reference."""
    ref, got = Metrics(reference), Metrics(faulted)
    ref.poll()
    got.poll()
    ref, got = last_rows(ref.rows), last_rows(got.rows)
    diffs = {k: abs(got[s][k] - ref[s][k]) for s in ref if s in got for k in COMPARED if k in ref[s]}
    worst = max(diffs.values(), default=0.0)
    return {"steps_compared": sorted(set(ref) & set(got)) == sorted(ref) and len(ref),
            "missing_steps": sorted(set(ref) - set(got)), "max_abs_loss_diff": worst,
            "losses_bit_identical": worst == 0.0 and sorted(got) == sorted(ref)}


def final_state_identical(reference: Path, faulted: Path, step: int) -> bool:
    """The train states of checkpoint `step` of both runs, array by array, bit for bit."""
    import jax
    import numpy as np
    import orbax.checkpoint as ocp
    from absl import logging

    def load(workdir):
        path = Path(workdir).absolute() / "checkpoints" / str(step) / "state"
        checkpointer = ocp.PyTreeCheckpointer()
        tree = checkpointer.metadata(path).item_metadata
        as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
        return jax.tree_util.tree_flatten_with_path(restored)[0]

    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)  # orbax's notes on metadata it does not need; restored after
    try:
        a, b = load(reference), load(faulted)
    finally:
        logging.set_verbosity(verbosity)
    return [k for k, _ in a] == [k for k, _ in b] and all(np.array_equal(x, y) for (_, x), (_, y) in zip(a, b))


def summary(kills: list[dict]) -> dict:
    lost = [k["steps_lost"] for k in kills if k.get("steps_lost") is not None]
    moments = [k["moment"] for k in kills]
    items = [d for k in kills for d in k["data_item"]]  # started: the data item's folder made, its JSON not yet
    return {"kills_fired": len(kills), "kill_moments": {m: moments.count(m) for m in sorted(set(moments))},
            "killed_while_a_checkpoint_was_written": sum(bool(k["writing"]) for k in kills),
            "data_item_at_kill": {d: items.count(d) for d in sorted(set(items))},
            "every_restart_resumed_from_the_newest_committed": all(k.get("resumed_from_newest_committed", True)
                                                                  for k in kills),
            "steps_lost": lost, "steps_lost_max": max(lost, default=0),
            "steps_lost_mean": round(sum(lost) / len(lost), 3) if lost else 0.0,
            "sigterm_exit_codes": [k["exit"] for k in kills if k["signal"] == "SIGTERM"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--points", type=int, default=20, help="SIGKILL points")
    p.add_argument("--sigterm", type=int, default=0, help="SIGTERM points (expect exit 0 and no step lost)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--checkpoint-every", type=int, default=3)
    p.add_argument("--keep", type=int, default=3)
    p.add_argument("--config", default="", help="a preset or config file (default: the tiny STTN above); its "
                   "num_steps / checkpoint_every / log_every are overridden")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="more config overrides")
    p.add_argument("--out", default="", help="folder for the two workdirs and the logs (default: a new temp dir)")
    p.add_argument("--reference", default="", help="reuse this uninterrupted workdir (same config)")
    p.add_argument("--no-cache", action="store_true", help="no persistent compilation cache")
    args = p.parse_args(argv)

    import tempfile

    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # this process only reads checkpoints back
    out = Path(args.out or tempfile.mkdtemp(prefix="fault_harness_")).absolute()
    out.mkdir(parents=True, exist_ok=True)
    if args.config:
        config, overrides = args.config, [f"num_steps={args.steps}", f"checkpoint_every={args.checkpoint_every}",
                                          f"keep_checkpoints={args.keep}", "log_every=1", *args.set]
    else:
        config, overrides = str(out / "tiny_config.py"), list(args.set)
        Path(config).write_text(TINY.format(steps=args.steps, checkpoint_every=args.checkpoint_every, keep=args.keep))
    env = environment(None if args.no_cache else out / "jax_cache")
    t0 = time.perf_counter()
    reference = Path(args.reference).absolute() if args.reference else out / "reference"
    ref_s = None
    if not args.reference:
        ref_s = run_reference(command(config, reference, overrides), env, out / "reference.log")
    faulted = out / "faulted"
    points = plan(args.points, args.seed, args.steps, args.checkpoint_every, args.sigterm)
    result = run_with_faults(command(config, faulted, overrides), faulted, points, env, out / "logs")
    report = {"config": config, "overrides": overrides, "steps": args.steps, "checkpoint_every": args.checkpoint_every,
              "seed": args.seed, **summary(result["kills"]), **compare(reference, faulted),
              "final_state_bit_identical": final_state_identical(reference, faulted, args.steps),
              "restarts": result["restarts"], "unused_points": result["unused_points"],
              "torn_metric_lines": result["torn_metric_lines"], "reference_s": ref_s,
              "wall_s": round(time.perf_counter() - t0, 1), "out": str(out), "kills": result["kills"]}
    print(json.dumps(report, indent=1))
    ok = (report["losses_bit_identical"] and report["final_state_bit_identical"]
          and report["every_restart_resumed_from_the_newest_committed"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
