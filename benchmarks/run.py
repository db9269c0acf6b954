"""Fused sigmoid focal loss vs torchvision (eager and torch.compile): time, memory, bandwidth.

    python benchmarks/run.py                 # 10k and 100k anchors; CUDA if present, else CPU with 2 threads
    python benchmarks/run.py --full          # every size, 1k .. 1.6M anchors
    python benchmarks/run.py --quick         # one small size, well under a minute (CI smoke test)
    python benchmarks/run.py --device cpu --sizes 10k,100k --threads 4

Prints a progress bar, then a Markdown table; writes <device>-<date>.jsonl / .md / .png under
benchmarks/results/ (or --out). See benchmarks/README.md for what each column means.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import time
from pathlib import Path

import torch

# `python benchmarks/run.py` puts only benchmarks/ on the path; the repository root goes last so
# that an installed focal_loss_ext still wins over the unbuilt source tree.
sys.path.append(str(Path(__file__).resolve().parent.parent))

try:
    from benchmarks import cases
except ImportError as error:
    sys.exit(f"cannot import focal_loss_ext ({error}); build it first: pip install -e .")
from benchmarks import report, timing
from benchmarks.plot import plot

# The default run ends in a few minutes on two CPU cores and still shows the headline case,
# 100k anchors (one 640 px image) forward + backward; --full adds the rest of the range.
DEFAULT_SIZES = "10k,100k"
FULL_SIZES = "1k,10k,100k,200k,1.6M"  # one small image .. one 640 px .. 800x1333 .. batch of 8
QUICK_SIZES = "10k"  # one size, both modes, every implementation: a smoke test
# Loose enough for a sum over millions of terms in another order; a wrong kernel is far off.
LOSS_RTOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 1e-2}


def parse_sizes(text: str) -> list[int]:
    """'1k,1.6M,5000' -> [1000, 1600000, 5000]."""
    scale = {"k": 10**3, "m": 10**6}
    sizes = []
    for item in text.split(","):
        item = item.strip().lower()
        sizes.append(round(float(item[:-1]) * scale[item[-1]]) if item[-1] in scale else int(item))
    return sizes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", help=f"anchors per call, K = 80 (default {DEFAULT_SIZES}; --full: {FULL_SIZES})")
    parser.add_argument("--dtypes", help="float32 on CPU; float32,bfloat16,float16 on CUDA")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument(
        "--impls", default=",".join(cases.IMPLEMENTATIONS), help="comma-separated subset of %(default)s"
    )
    parser.add_argument("--modes", default=",".join(cases.MODES))
    parser.add_argument("--min-run-time", type=float, help="seconds per measurement (default 1 on CPU, 0.5 on CUDA)")
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--full", action="store_true", help=f"every size: {FULL_SIZES}")
    sizes.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}, float32, 0.1 s per measurement")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument(
        "--family",
        action="store_true",
        help="benchmark softmax_focal_loss and FL* instead (benchmarks/family.py, its own options)",
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch.cuda.is_available() is False")

    args.sizes = parse_sizes(args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES if args.full else DEFAULT_SIZES))
    default_dtypes = "float32" if args.device == "cpu" or args.quick else "float32,bfloat16,float16"
    args.dtypes = [getattr(torch, name) for name in (args.dtypes or default_dtypes).split(",")]
    args.impls = [cases.IMPLEMENTATIONS[name] for name in args.impls.split(",")]
    args.modes = args.modes.split(",")
    full_run_time = 1.0 if args.device == "cpu" else 0.5  # GPU timings are steadier
    args.min_run_time = args.min_run_time or (0.1 if args.quick else full_run_time)
    return args


def measure(
    impl: cases.Implementation,
    input_sets: list[cases.Inputs],
    mode: str,
    device: torch.device,
    args: argparse.Namespace,
) -> dict:
    """One implementation on one case: first-call time, timing over all input sets, memory."""
    loss_fn = impl.make_loss()
    steps = [cases.make_step(loss_fn, inputs, mode) for inputs in input_sets]

    timing.synchronize(device)
    started = time.perf_counter()
    loss = steps[0]().item()  # compiles, for torch.compile
    first_call_s = time.perf_counter() - started

    timed = timing.time_step(
        timing.cycle_steps(steps), device, threads=args.threads, min_run_time=args.min_run_time, min_samples=5
    )
    input_sets[0].logits.grad = None  # its old gradient would be freed inside the measurement
    peak = timing.peak_extra_bytes(steps[0], device)
    for inputs in input_sets:
        inputs.logits.grad = None

    first = input_sets[0]
    min_bytes = cases.minimal_bytes(first, impl.targets, mode)
    return {
        "impl": impl.name,
        "targets": impl.targets,
        "mode": mode,
        "anchors": first.logits.shape[0],
        "classes": first.logits.shape[1],
        "dtype": str(first.logits.dtype).removeprefix("torch."),
        "median_ms": timed.median_ms,
        "q25_ms": timed.q25_ms,
        "q75_ms": timed.q75_ms,
        "samples": timed.samples,
        "input_sets": len(input_sets),
        "peak_extra_bytes": peak,
        "peak_extra_logits": None if peak is None else peak / first.logits_nbytes,
        "min_bytes": min_bytes,
        "gbps": min_bytes / (timed.median_ms / 1e3) / 1e9,
        "compile_s": first_call_s - timed.median_ms / 1e3 if impl.compiled else None,
        "loss": loss,
    }


def add_comparisons(case_rows: list[dict], copy_gbps: float, dtype: torch.dtype, log) -> None:
    """Speed-ups of ours over every other implementation of the same case, and loss agreement."""
    by_impl = {row["impl"]: row for row in case_rows}
    for row in case_rows:
        row["copy_gbps"] = copy_gbps
        row["pct_of_copy"] = 100 * row["gbps"] / copy_gbps
        row["speedup_vs"] = {
            other: by_impl[other]["median_ms"] / row["median_ms"]
            for other in by_impl
            if row["impl"] in cases.OURS and other not in cases.OURS
        }
    expected = by_impl.get("torchvision-eager", {}).get("loss")
    for row in case_rows:
        if not math.isfinite(row["loss"]):  # e.g. a float16 sum over many anchors overflows
            log(f"WARNING: {row['impl']} {row['mode']} {row['anchors']} {row['dtype']}: loss is {row['loss']}")
        if expected is not None and abs(row["loss"] - expected) > LOSS_RTOL[dtype] * abs(expected):
            log(
                f"WARNING: {row['impl']} {row['mode']} {row['anchors']} {row['dtype']}: "
                f"loss {row['loss']:.6g} != torchvision's {expected:.6g}"
            )


def notes(args, env: dict, copy_before: float, copy_after: float, load: tuple[float, float]) -> str:
    threading = ", ".join(f"`{k}={v}`" for k, v in env["threading_env"].items()) or "none (OpenMP's default)"
    lines = [
        f"- Threads: `torch.set_num_threads({args.threads})`."
        + (
            f" The machine's {os.cpu_count()} cores may have been shared with other work "
            f"(1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end)."
            if args.device == "cpu"
            else ""
        ),
        f"- Threading variables set: {threading}. Where cores are shared, OpenMP threads that spin "
        "while waiting (the default) slow each other's small ops down by 10x or more; "
        "`OMP_WAIT_POLICY=PASSIVE` avoids that.",
        f"- Each measurement: warm-up, then at least {args.min_run_time:g} s and 5 samples; "
        "median and quartiles (q25–q75). "
        + (
            "`torch.utils.benchmark.Timer`, each sample a block of calls lasting >= 1 ms."
            if args.device == "cpu"
            else "A pair of CUDA events around every call."
        ),
        "- Small cases cycle through several input sets so that a call finds little of its data in the "
        "last-level cache.",
        "- forward: the loss under `torch.no_grad()`. forward+backward: `loss.backward()` of the "
        "summed loss divided by the number of positives, as in training.",
        "- torch.compile: static shapes, compiled afresh per case; the compile time is excluded "
        "from the timings and shown as `compile s` (inductor's on-disk cache may shorten it).",
        "- Bandwidth: bytes that must move at minimum (logits read once, targets read once, the "
        "gradient written once in forward+backward) per second, and as a share of a "
        f"`copy_` of a large tensor ({max(copy_before, copy_after):.1f} GB/s read + write; "
        f"measured before and after the cases: {copy_before:.1f} and {copy_after:.1f} GB/s).",
        "- Peak extra memory: beyond what was allocated before the call (inputs, no gradient); "
        + (timing.CPU_MEMORY_METHOD if args.device == "cpu" else timing.CUDA_MEMORY_METHOD)
        + ". The gradient of the logits, one logits-sized buffer, is part of it.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv_list = sys.argv[1:] if argv is None else argv
    if "--family" in argv_list:
        from benchmarks import family

        return family.main([arg for arg in argv_list if arg != "--family"])
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    env = report.environment(device, args.threads)
    progress = Progress(len(args.sizes) * len(args.dtypes) * len(args.modes) * len(args.impls))

    load_before = os.getloadavg()[0]
    copy_before = timing.copy_bandwidth_gbps(device, threads=args.threads, min_run_time=0.2)
    measured = []  # (rows of one case, its dtype)
    for anchors in args.sizes:
        for dtype in args.dtypes:
            probe = cases.make_inputs(anchors, dtype, device, seed=0)
            sets = timing.rotation_count(probe.nbytes, device)
            input_sets = [probe] + [cases.make_inputs(anchors, dtype, device, seed=s) for s in range(1, sets)]
            for mode in args.modes:
                case_rows = []
                for impl in args.impls:
                    progress.describe(f"{mode} {anchors:,} {str(dtype)[6:]} {impl.name}")
                    case_rows.append(measure(impl, input_sets, mode, device, args) | env)
                    progress.update()
                measured.append((case_rows, dtype))
            del probe, input_sets
            if device.type == "cuda":
                torch.cuda.empty_cache()
    copy_after = timing.copy_bandwidth_gbps(device, threads=args.threads, min_run_time=0.2)
    load = (load_before, os.getloadavg()[0])
    progress.close()

    copy_gbps = max(copy_before, copy_after)
    for case_rows, dtype in measured:
        add_comparisons(case_rows, copy_gbps, dtype, print)
    rows = [row for case_rows, _ in measured for row in case_rows]
    names = [impl.name for impl in args.impls]
    stem = report.output_stem(env, args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    command = " ".join(f"{name}={value}" for name, value in env["threading_env"].items())
    command += " python benchmarks/run.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    report.write_jsonl(rows, args.out / f"{stem}.jsonl")
    (args.out / f"{stem}.md").write_text(
        report.markdown_report(rows, names, env, command.strip(), notes(args, env, copy_before, copy_after, load))
    )
    plotted = plot(
        rows,
        names,
        f"{env['device_name']} ({args.threads} threads), {env['date'][:10]}, {report.short_commit(env)}",
        args.out / f"{stem}.png",
    )

    print(f"wrote {args.out / stem}.jsonl, .md" + (", .png" if plotted else " (no matplotlib)"))
    print(
        f"{env['device_name']}, torch {env['torch']}, {args.threads} threads, "
        f"copy {copy_gbps:.1f} GB/s, commit {report.short_commit(env)}\n"
    )
    print(report.summary_table(rows, names))


class Progress:
    """tqdm when it is installed (and stderr is a terminal); otherwise silent."""

    def __init__(self, total: int):
        try:
            from tqdm import tqdm
        except ImportError:
            self.bar = None
        else:
            self.bar = tqdm(total=total, disable=None, dynamic_ncols=True)

    def describe(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description(text)

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update()

    def write(self, text: str) -> None:
        """Print a line without breaking the bar (benchmarks/torchvision_retinanet.py's running table)."""
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


if __name__ == "__main__":
    main()
