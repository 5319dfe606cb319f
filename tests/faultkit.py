"""Fault injection for the reliability tests: a training CLI killed with SIGKILL at chosen or random moments.

Run as a script, this file is `tinyrm.cli` with one fault armed by TINYRM_TEST_FAULT (a test-only hook that
lives here, not in the package); the kill is a real SIGKILL of the process, so nothing in it gets to clean up:
  start:FOLDER:N     as the N-th save_checkpoint of FOLDER (last, best, or any) begins
  tmp:FOLDER:N       after the N-th checkpoint's adapter is in its .tmp folder, before trainer.pt is written
  old:FOLDER:N       between the two renames of the N-th swap that replaces a folder (FOLDER -> FOLDER.old done)
  new:FOLDER:N       after the N-th swap's second rename, before FOLDER.old is removed
  step:S:MS          MS milliseconds after optimiser step S (0-based) returns, from a timer thread: lands
                     wherever the main thread is then (metrics write, validation, a save, the next step)
  setup:MS           MS milliseconds after the run folder is set up (before the first checkpoint of a new run)
The tests drive it with `attempt`, check every checkpoint left behind with `check_checkpoints`, and compare
finished runs with `same_result`.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("tokens_per_s", "elapsed", "seconds", "peak_rss_mb")     # metrics that differ between equal runs


def _die(*_):
    os.kill(os.getpid(), signal.SIGKILL)


def _counter(n: int):
    seen = [0]

    def hit() -> bool:
        seen[0] += 1
        return seen[0] == n
    return hit


def _arm(spec: str) -> None:
    """Install the fault `spec` (see the module docstring) into this process."""
    import tinyrm.checkpoint as ck
    import tinyrm.train as tr
    kind, *rest = spec.split(":")
    if kind in ("start", "tmp", "old", "new"):
        folder, hit = rest[0], _counter(int(rest[1]))
        match = lambda p: folder == "any" or Path(p).name.split(".")[0] == folder  # noqa: E731
        if kind == "start":
            real_save = tr.save_checkpoint

            def save(path, *a, **k):
                if match(path) and hit():
                    _die()
                return real_save(path, *a, **k)
            tr.save_checkpoint = save
        elif kind == "tmp":
            real_adapter = ck.save_adapter

            def adapter(model, path, *a, **k):
                out = real_adapter(model, path, *a, **k)
                if match(Path(path).parent) and hit():
                    _die()
                return out
            ck.save_adapter = adapter
        else:
            real_replace = os.replace

            def replace(src, dst, *a, **k):
                real_replace(src, dst, *a, **k)
                s, d = Path(src), Path(dst)
                swap = d.name.endswith(".old") if kind == "old" else (s.name.endswith(".tmp") and d.is_dir())
                if swap and match(d) and hit():
                    _die()
            os.replace = replace
    elif kind == "step":
        target, ms = int(rest[0]), int(rest[1])
        real_step = tr.train_step

        def step(run, i):
            row = real_step(run, i)
            if i == target:
                threading.Timer(ms / 1000, _die).start()
            return row
        tr.train_step = step
    elif kind == "setup":
        ms, real_setup = int(rest[0]), tr.setup

        def setup(*a, **k):
            run = real_setup(*a, **k)
            threading.Timer(ms / 1000, _die).start()
            return run
        tr.setup = setup
    else:
        raise ValueError(f"unknown fault {spec!r}")


def attempt(args: list[str], cwd: Path, fault: str | None = None, kill_after_s: float | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `tinyrm ARGS` in a fresh process (this file as the entry point when a fault is armed, else
    `python -m tinyrm.cli`); `kill_after_s`: SIGKILL it from outside after that many seconds."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    env.pop("TINYRM_TEST_FAULT", None)
    if fault:
        env["TINYRM_TEST_FAULT"] = fault
        cmd = [sys.executable, __file__, *args]
    else:
        cmd = [sys.executable, "-m", "tinyrm.cli", *args]
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if kill_after_s is not None:
        t0 = time.monotonic()
        while p.poll() is None and time.monotonic() - t0 < kill_after_s:
            time.sleep(0.01)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
    out, err = p.communicate(timeout=timeout)
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_checkpoints(run_dir: Path) -> dict:
    """Every checkpoint folder a reader could open (last, last.old, best, best.old) is whole: its sidecar
    parses, the adapter file matches the sidecar's sha256 and loads, trainer.pt loads (weights_only).
    Returns what was there: {folder name: step}, plus "tmp": the .tmp/.del folders the kill left (never read)."""
    from safetensors.torch import load_file

    from tinyrm.adapters import read_sidecar
    from tinyrm.checkpoint import find_resumable, load_trainer_state

    seen = {}
    for name in ("last", "last.old", "best", "best.old"):
        c = run_dir / name
        if not c.exists():
            continue
        info = read_sidecar(c / "adapter.safetensors")
        assert sha256(c / "adapter.safetensors") == info["sha256"], f"{c}: adapter does not match its sidecar"
        assert load_file(c / "adapter.safetensors"), c
        if name.startswith("last"):
            st = load_trainer_state(c)
            assert st["step"] == info["step"], f"{c}: trainer.pt and adapter.json disagree on the step"
        seen[name] = info["step"]
    find_resumable(run_dir)                      # raises on an incomplete checkpoint
    seen["tmp"] = sorted(p.name for p in [*run_dir.glob("*.tmp"), *run_dir.glob("*.del")])
    return seen


def metric_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def same_result(run: Path, ref: Path) -> None:
    """last/ and best/ of `run` are byte-identical to those of the uninterrupted `ref` (adapter and
    sidecar; trainer.pt's tensors), its metrics rows are the same (timings aside), no .tmp folder is left."""
    import torch
    for name in ("last", "best"):
        for f in ("adapter.safetensors", "adapter.json"):
            assert (run / name / f).read_bytes() == (ref / name / f).read_bytes(), f"{name}/{f} differs"
    a, b = (torch.load(d / "last" / "trainer.pt", weights_only=True) for d in (run, ref))
    assert a["step"] == b["step"] and a["best"] == b["best"]
    for s, t in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(s[k], t[k]) for k in s)
    # no temporary folder; an .old/.del one only beside its complete folder (a kill after the run's very
    # last swap leaves it: no later save of that folder comes to remove it, and no reader looks at it)
    assert not list(run.glob("*.tmp"))
    for left in [*run.glob("*.old"), *run.glob("*.del")]:
        assert (run / left.name.split(".")[0] / "adapter.json").is_file(), left
    # resume dropped every row a dead attempt wrote after its checkpoint: the rows are the reference's
    assert metric_rows(run) == metric_rows(ref)


if __name__ == "__main__":
    _arm(os.environ["TINYRM_TEST_FAULT"])
    from tinyrm.cli import main
    sys.exit(main(sys.argv[1:]))
