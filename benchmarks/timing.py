"""Timing, peak memory and copy bandwidth, the same way for every implementation.

CPU times come from `torch.utils.benchmark.Timer` with the thread count fixed;
CUDA times from a pair of `torch.cuda.Event`s around every call. Both warm up first and report the
median and the quartiles of many samples, never a single run.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.utils.benchmark as torch_benchmark

Step = Callable[[], object]

# triton.testing.do_bench's warm-up: enough for the GPU clocks to settle and for the caching
# allocator to hold every buffer a step needs.
CUDA_WARMUP_S = 0.025
CUDA_MAX_SAMPLES = 1000
CPU_WARMUP_CALLS = 2
MIN_SAMPLE_S = 1e-3  # a sample of 1 ms or more makes the timer's microsecond overhead negligible


@dataclass(frozen=True)
class Timing:
    median_ms: float
    q25_ms: float
    q75_ms: float
    samples: int


def summarize(times_s: Sequence[float]) -> Timing:
    ms = sorted(t * 1e3 for t in times_s)
    if len(ms) == 1:
        return Timing(ms[0], ms[0], ms[0], 1)
    q25, q50, q75 = statistics.quantiles(ms, n=4, method="inclusive")
    return Timing(q50, q25, q75, len(ms))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cache_bytes(device: torch.device) -> int:
    """Size of the last-level cache that a small benchmark could otherwise live in."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).L2_cache_size
    sizes = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = path.read_text().strip()
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1], 1)
        sizes.append(int(text.rstrip("KMG")) * scale)
    return max(sizes, default=32 * 2**20)


def rotation_count(set_bytes: int, device: torch.device, max_sets: int = 256) -> int:
    """How many input sets to cycle through so that a call finds little of its data in cache."""
    return max(1, min(max_sets, math.ceil(2 * cache_bytes(device) / max(set_bytes, 1))))


def cycle_steps(steps: Sequence[Step]) -> Step:
    """One step that runs the given steps in turn, each on its own input set."""
    turn = itertools.cycle(steps)
    return lambda: next(turn)()


def time_step(step: Step, device: torch.device, *, threads: int, min_run_time: float, min_samples: int) -> Timing:
    if device.type == "cuda":
        return _time_cuda(step, device, min_run_time=min_run_time, min_samples=min_samples)
    return _time_cpu(step, threads=threads, min_run_time=min_run_time, min_samples=min_samples)


def _time_cpu(step: Step, *, threads: int, min_run_time: float, min_samples: int) -> Timing:
    timer = torch_benchmark.Timer(stmt="step()", globals={"step": step}, num_threads=threads)
    for _ in range(CPU_WARMUP_CALLS):
        timer.timeit(1)
    estimate_s = timer.timeit(1).median
    # Blocks of calls instead of blocked_autorange's own sizing, which asks for blocks of 10,000
    # times the timer's overhead: under load that is a single block of a second, one sample.
    calls_per_sample = max(1, math.ceil(MIN_SAMPLE_S / estimate_s))
    times, spent_s = [], 0.0
    while len(times) < min_samples or spent_s < min_run_time:
        times.append(timer.timeit(calls_per_sample).median)
        spent_s += times[-1] * calls_per_sample
    return summarize(times)


def _time_cuda(step: Step, device: torch.device, *, min_run_time: float, min_samples: int) -> Timing:
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        step()
    end.record()
    torch.cuda.synchronize(device)
    estimate_s = max(start.elapsed_time(end) / 1e3 / 5, 1e-6)

    for _ in range(max(1, int(CUDA_WARMUP_S / estimate_s))):
        step()
    samples = min(CUDA_MAX_SAMPLES, max(min_samples, int(min_run_time / estimate_s)))
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(samples)]
    for before, after in events:
        before.record()
        step()
        after.record()
    torch.cuda.synchronize(device)
    return summarize([before.elapsed_time(after) / 1e3 for before, after in events])


def peak_extra_bytes(step: Step, device: torch.device) -> int | None:
    """Peak bytes allocated during one step beyond what was allocated before it.

    CUDA: `torch.cuda.max_memory_allocated`. CPU has no such counter, so the profiler records
    every allocation and free of PyTorch's CPU allocator during the step and the peak of their
    running sum is taken; memory that bypasses that allocator is not seen. None if the
    profiler cannot be read.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before

    from torch.profiler import ProfilerActivity, profile

    with _stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    try:
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        events.sort(key=lambda e: e.start_ns())
        cpu = torch.autograd.DeviceType.CPU
        running = itertools.accumulate(e.nbytes() for e in events if e.device_type() == cpu)
        return max(0, max(running, default=0))
    except (AttributeError, RuntimeError):
        return None


@contextlib.contextmanager
def _stderr_silenced():
    # Kineto prints start/stop lines (and, without a GPU, a device-count error) straight to file
    # descriptor 2 on every profile; they would bury the progress bar.
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


CPU_MEMORY_METHOD = "peak of allocations minus frees in PyTorch's CPU allocator (torch.profiler)"
CUDA_MEMORY_METHOD = "torch.cuda.max_memory_allocated minus memory allocated before the step"


def copy_bandwidth_gbps(device: torch.device, *, threads: int, min_run_time: float) -> float:
    """Device-to-device copy bandwidth: bytes read plus bytes written per second, in GB/s.

    The tensor is eight times the last-level cache so that the copy streams through memory.
    """
    nbytes = max(256 * 2**20, 8 * cache_bytes(device))
    source = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    timing = time_step(
        lambda: target.copy_(source),
        device,
        threads=threads,
        min_run_time=min_run_time,
        min_samples=5,
    )
    return 2 * nbytes / (timing.median_ms / 1e3) / 1e9
