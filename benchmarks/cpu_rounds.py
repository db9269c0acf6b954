"""The CPU throughput table: every case timed once per round, rounds interleaved, medians.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/cpu_rounds.py                # 100k x 80, 2 threads, 11 rounds
    python benchmarks/cpu_rounds.py --isas avx512 --rounds 5 --threads 1

On a shared machine the load changes from one minute to the next; timing each case once per round,
all cases in every round, exposes them all to the same load, and the median over rounds discards
the rounds where something else ran. The vector paths (--isas, default avx512 and avx2) are
switched in-process between cases, as FOCAL_LOSS_EXT_CPU_ISA would select them at start-up.

Cases, RetinaNet-like (benchmarks/cases.py: 2% positives, alpha 0.25, gamma 2, "sum" over
num_pos): ours with integer labels forward + backward and forward only, ours with one-hot float
targets forward + backward, ours in bfloat16 and float16 (integer labels, forward + backward),
torchvision's sigmoid_focal_loss eager and under torch.compile (forward + backward), and a copy_
of the logits into a mapped buffer (read + write of the logits' bytes) for the bandwidth scale.
Writes <out>/cpu-rounds-<cpu>-<threads>t-<date>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parent.parent))
from benchmarks import cases, report  # noqa: E402
from focal_loss_ext import sigmoid_focal_loss  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anchors", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--calls", type=int, default=5, help="calls per case per round; their median is the round's")
    parser.add_argument(
        "--isas", help="comma-separated vector paths (default: avx512 and avx2 where this CPU has them)"
    )
    parser.add_argument("--no-torchvision", action="store_true", help="only ours and the copy")
    parser.add_argument(
        "--anatomy",
        action="store_true",
        help="instead: ours, int labels and float targets x (forward, forward+backward) x ('sum', 'none'), "
        "on the current path, plus the copy and an allocation + fill of a logits-sized buffer",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    return parser.parse_args(argv)


def ours_step(inputs: cases.Inputs, targets: str, mode: str):
    impl = cases.IMPLEMENTATIONS["ours-int" if targets == "int" else "ours-float"]
    return cases.make_step(impl.make_loss(), inputs, mode)


def anatomy_cases(args) -> dict[str, tuple]:
    """Targets x mode x reduction on the current path: where integer labels or the gradient cost."""
    x = cases.make_inputs(args.anchors, torch.float32, torch.device("cpu"), seed=0)
    out = {}
    for targets in ("int", "float"):
        t = x.labels if targets == "int" else x.onehot
        for mode in ("forward", "forward+backward"):
            for reduction in ("sum", "none"):

                def loss_fn(inputs, t=t, reduction=reduction):
                    loss = sigmoid_focal_loss(
                        inputs.logits, t, cases.ALPHA, cases.GAMMA, reduction, normalizer=inputs.num_pos
                    )
                    return loss if reduction == "sum" else loss.sum()

                out[f"{targets} {mode} {reduction}"] = (None, cases.make_step(loss_fn, x, mode))
    source = x.logits.detach()
    target = torch.empty_like(source)
    out["copy"] = (None, lambda: target.copy_(source))
    out["allocate + fill"] = (None, lambda: torch.empty_like(source).fill_(0))
    return out


def build_cases(args) -> dict[str, tuple]:
    """name -> (isa or None, step)."""
    if args.anatomy:
        return anatomy_cases(args)
    device = torch.device("cpu")
    f32 = cases.make_inputs(args.anchors, torch.float32, device, seed=0)
    bf16 = cases.make_inputs(args.anchors, torch.bfloat16, device, seed=0)
    f16 = cases.make_inputs(args.anchors, torch.float16, device, seed=0)
    ops = torch.ops.focal_loss_ext
    isas = args.isas.split(",") if args.isas else [i for i in ("avx512", "avx2") if i in ops._cpu_isas_supported()]
    out = {}
    for isa in isas:
        out[f"{isa}: int fwd+bwd"] = (isa, ours_step(f32, "int", "forward+backward"))
        out[f"{isa}: float fwd+bwd"] = (isa, ours_step(f32, "float", "forward+backward"))
        out[f"{isa}: int forward"] = (isa, ours_step(f32, "int", "forward"))
        out[f"{isa}: bfloat16 int fwd+bwd"] = (isa, ours_step(bf16, "int", "forward+backward"))
        out[f"{isa}: float16 int fwd+bwd"] = (isa, ours_step(f16, "int", "forward+backward"))
    if not args.no_torchvision:
        for name in ("torchvision-compile", "torchvision-eager"):
            out[name] = (None, cases.make_step(cases.IMPLEMENTATIONS[name].make_loss(), f32, "forward+backward"))
    source = f32.logits.detach()
    target = torch.empty_like(source)
    out["copy"] = (None, lambda: target.copy_(source))
    return out


def run_rounds(named: dict[str, tuple], rounds: int, calls: int) -> dict[str, list[float]]:
    ops = torch.ops.focal_loss_ext
    for isa, step in named.values():  # warm-up (and torch.compile's compilation)
        if isa:
            ops._set_cpu_isa(isa)
        for _ in range(2):
            step()
    times = {name: [] for name in named}
    for _ in range(rounds):
        for name, (isa, step) in named.items():
            if isa:
                ops._set_cpu_isa(isa)
            samples = []
            for _ in range(calls):
                started = time.perf_counter()
                step()
                samples.append(time.perf_counter() - started)
            times[name].append(statistics.median(samples))
    return times


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    env = report.environment(torch.device("cpu"), args.threads)
    named = build_cases(args)
    times = run_rounds(named, args.rounds, args.calls)
    medians_ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    elements = args.anchors * cases.NUM_CLASSES
    copy_gbps = 2 * 4 * elements / (medians_ms["copy"] / 1e3) / 1e9
    # minimal bytes, forward + backward with integer labels: logits read, labels read, gradient written
    min_bytes = 4 * elements + 8 * args.anchors + 4 * elements
    rows = []
    lines = [
        f"{env['cpu_model']}, {args.threads} threads, {args.anchors:,} x {cases.NUM_CLASSES}, "
        f"{args.rounds} interleaved rounds of {args.calls} calls (median of each round, median over rounds), "
        f"torch {env['torch']}, commit {report.short_commit(env)}, {env['date']}",
        "",
        f"Copy of the float32 logits ({4 * elements / 1e6:.0f} MB read + written): {medians_ms['copy']:.2f} ms, "
        f"{copy_gbps:.1f} GB/s.",
        "",
        "| case | median ms | min ms | max ms | ns / element / thread | vs compile | vs eager | % of copy BW |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, ms in medians_ms.items():
        vs = {
            other: medians_ms[other] / ms
            for other in ("torchvision-compile", "torchvision-eager")
            if other in medians_ms and name != other and name != "copy"
        }
        pct = None
        if name.endswith("int fwd+bwd") and "float16" not in name and "bfloat16" not in name:
            pct = 100 * (min_bytes / (ms / 1e3)) / (copy_gbps * 1e9)
        row = {
            "case": name,
            "median_ms": ms,
            "min_ms": 1e3 * min(times[name]),
            "max_ms": 1e3 * max(times[name]),
            "rounds_ms": [1e3 * t for t in times[name]],
            "ns_per_element_thread": ms * 1e6 / elements * args.threads,
            "speedup_vs": vs,
            "pct_of_copy": pct,
        } | env
        rows.append(row)
        lines.append(
            f"| {name} | {ms:.2f} | {row['min_ms']:.2f} | {row['max_ms']:.2f} | {row['ns_per_element_thread']:.2f} | "
            + " | ".join(f"{vs[o]:.1f}x" if o in vs else "" for o in ("torchvision-compile", "torchvision-eager"))
            + f" | {'' if pct is None else f'{pct:.0f}%'} |"
        )
    text = "\n".join(lines)
    print(text)
    vendor = "intel" if "intel" in env["cpu_model"].lower() else "amd" if "amd" in env["cpu_model"].lower() else "cpu"
    stem = f"cpu-rounds-{vendor}-{'anatomy-' if args.anatomy else ''}{args.threads}t-{env['date'][:10]}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(rows, indent=1) + "\n")
    command = "python benchmarks/cpu_rounds.py " + " ".join(sys.argv[1:] if argv is None else argv)
    (args.out / f"{stem}.md").write_text(f"# CPU throughput table\n\n`{command.strip()}`\n\n{text}\n")
    print(f"wrote {args.out / stem}.json, .md")


if __name__ == "__main__":
    main()
