"""Where time and memory go, stage by stage.

CPU: resident set size sampled by a light background thread (tracemalloc cannot see tensors). Device: the CUDA
caching allocator's own counters (peak allocated / reserved) of the run's own device, reset at each stage boundary.
On CUDA every stage boundary synchronises the device, so a stage's time is the time its kernels ran, not the time
it took to launch them. Stages can repeat
(e.g. `vision encode` once per batch): their time adds up, their peaks are the maximum over all occurrences.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

MB = 1024 * 1024
GIB = 1024**3


def proc_kib_field(path: str, key: str) -> int | None:
    """A "Key:  N kB" field of a /proc file, in bytes (None off Linux or when absent)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    """Resident set size now (Linux /proc; elsewhere the peak from getrusage)."""
    value = proc_kib_field("/proc/self/status", "VmRSS")
    if value is not None:
        return value
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RssSampler:
    """Samples RSS (and, on CUDA, allocated device memory) every `interval_s` in a daemon thread."""

    def __init__(self, interval_s: float = 0.05, cuda_device: str | None = None):
        self.interval_s = interval_s
        self.cuda_device = cuda_device
        self.samples: list[tuple[float, int, int]] = []  # (monotonic time, RSS, device bytes); thinned, below
        self._peak = 0
        self._window_peak = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="vidmini-rss", daemon=True)

    def start(self) -> "RssSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def sample(self) -> int:
        value = rss_bytes()
        device = 0
        if self.cuda_device is not None:
            import torch

            device = torch.cuda.memory_allocated(self.cuda_device)
        with self._lock:
            self._peak = max(self._peak, value)
            self._window_peak = max(self._window_peak, value)
            self.samples.append((time.monotonic(), value, device))
            if len(self.samples) > 20000:  # keep memory flat on long runs: drop every other sample
                self.samples = self.samples[::2]
        return value

    def take_window_peak(self) -> int:
        """Peak since the last call (and now), then start a new window."""
        now = self.sample()
        with self._lock:
            peak, self._window_peak = max(self._window_peak, now), now
        return peak

    @property
    def peak(self) -> int:
        return max(self._peak, rss_bytes())


@dataclass
class StageStats:
    seconds: float = 0.0
    calls: int = 0
    cpu_rss_peak: int = 0
    device_allocated_peak: int = 0
    device_reserved_peak: int = 0


@dataclass
class Recorder:
    """Per-stage timings always; memory peaks when `memory` is on (CUDA figures only on a CUDA device)."""

    memory: bool = False
    device: str = "cpu"
    interval_s: float = 0.05
    stages: dict[str, StageStats] = field(default_factory=dict)
    timeline: list[tuple[str, float, float]] = field(default_factory=list)  # (stage, start, end), for plots
    sampler: RssSampler | None = None

    def __post_init__(self):
        self.t0 = time.monotonic()
        if self.memory:
            self.sampler = RssSampler(self.interval_s, self.device if self.on_cuda else None).start()

    @property
    def on_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def cuda(self) -> bool:
        """Device memory figures are recorded (a CUDA run with memory profiling on)."""
        return self.memory and self.on_cuda

    @contextmanager
    def stage(self, name: str):
        import torch

        stats = self.stages.setdefault(name, StageStats())
        if self.on_cuda:
            torch.cuda.synchronize(self.device)
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        if self.sampler:
            self.sampler.take_window_peak()
        start = time.monotonic()
        try:
            yield stats
        finally:
            if self.on_cuda:
                torch.cuda.synchronize(self.device)
            if self.cuda:
                stats.device_allocated_peak = max(stats.device_allocated_peak,
                                                  torch.cuda.max_memory_allocated(self.device))
                stats.device_reserved_peak = max(stats.device_reserved_peak, torch.cuda.max_memory_reserved(self.device))
            if self.sampler:
                stats.cpu_rss_peak = max(stats.cpu_rss_peak, self.sampler.take_window_peak())
            end = time.monotonic()
            stats.seconds += end - start
            stats.calls += 1
            if len(self.timeline) < 5000 and (not self.timeline or self.timeline[-1][0] != name):
                self.timeline.append((name, start - self.t0, end - self.t0))
            elif self.timeline and self.timeline[-1][0] == name:
                self.timeline[-1] = (name, self.timeline[-1][1], end - self.t0)

    def timings(self) -> dict[str, float]:
        return {name: round(s.seconds, 4) for name, s in self.stages.items()}

    def close(self) -> None:
        if self.sampler:
            self.sampler.stop()
