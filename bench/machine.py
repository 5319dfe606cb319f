"""The machine side of the benchmarks: the alternating-repetition timer and medians, the machine
description (CPU/GPU, library versions, other processes' load), the measured matmul peak, and the
process's memory probes (RSS, peak RSS). Device-agnostic; see bench/README.md for the method.
"""
from __future__ import annotations

import os
import platform
import re
import statistics
import time
from pathlib import Path

import torch


# --------------------------------------------------------------------------- statistics and timing

def median(xs):
    xs = list(xs)
    if not xs:
        raise ValueError("median of nothing")
    return statistics.median(xs)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def alternate(fns: dict, reps: int, device="cpu", before=None) -> dict[str, list[float]]:
    """Run every callable once per repetition, in the given order (a, b, a, b, ...), and return each
    one's wall times in seconds. `before(name)` runs untimed before each call (e.g. reset a counter)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            if before is not None:
                before(name)
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t)
    return times


def ratio_str(a: float, b: float, digits: int = 2) -> str:
    return f"{a / b:.{digits}f}×" if b else "n/a"


# --------------------------------------------------------------------------- machine

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device="cpu") -> dict:
    info = {"cpu": cpu_model(), "logical_cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version()}
    try:
        import transformers, peft
        info["transformers"], info["peft"] = transformers.__version__, peft.__version__
    except Exception:
        pass
    try:
        info["load_avg_1m"] = os.getloadavg()[0]
    except OSError:
        pass
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


class OtherLoad:
    """How many cores other processes kept busy while this one (and its waited-for children) ran: the
    machine's busy time from /proc/stat minus our own CPU time, divided by the wall time."""

    def __init__(self):
        self.t0, self.busy0, self.own0 = time.time(), self._busy(), self._own()

    @staticmethod
    def _busy() -> float | None:
        try:
            f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        except (OSError, ValueError, IndexError):
            return None
        return (sum(f[:8]) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")   # all but idle and iowait

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def cores(self) -> float:
        busy = self._busy()
        if busy is None or self.busy0 is None:
            return float("nan")
        return max(0.0, (busy - self.busy0) - (self._own() - self.own0)) / max(time.time() - self.t0, 1e-9)


def matmul_peak(device="cpu", dtype=torch.float32, n: int = 2048, reps: int = 5, inner: int = 3) -> float:
    """Best achieved FLOP/s of an n×n @ n×n matmul (best over `reps` timings of `inner` back-to-back mms)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=c)  # warm-up
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b, out=c)
        sync(device)
        best = min(best, (time.perf_counter() - t) / inner)
    return 2 * n ** 3 / best


# --------------------------------------------------------------------------- memory (CPU: the process's RSS)

def _status_kb(field: str) -> int:
    m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(m.group(1)) if m else 0


def rss_mb() -> float:
    return _status_kb("VmRSS") / 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak RSS since the last reset_peak_rss() (or since the start: ru_maxrss where /proc is absent)."""
    kb = _status_kb("VmHWM")
    if not kb:
        import resource
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024
