"""The rest of the focal-loss family against its pure-PyTorch equivalents, eager and compiled:
softmax focal loss on ImageNet-like rows (1000 classes) and FL* on RetinaNet-like anchors (80).

    python benchmarks/family.py              # CUDA if present, else CPU with 2 threads
    python benchmarks/family.py --quick      # small sizes, a few seconds
    python benchmarks/run.py --family ...    # the same, from the main runner

Prints a Markdown table and writes family-<device>-<date>.jsonl under benchmarks/results/.
Timing as in run.py (benchmarks/timing.py): warm-up, then at least --min-run-time seconds and 5
samples, median and quartiles; compile time excluded.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks import report, timing  # noqa: E402
from focal_loss_ext import (  # noqa: E402
    sigmoid_focal_loss_star,
    sigmoid_focal_loss_star_reference,
    softmax_focal_loss,
    softmax_focal_loss_reference,
)

GAMMA = 2.0
STAR_GAMMA, STAR_BETA, STAR_ALPHA = 4.0, 0.0, 0.25


@dataclass(frozen=True)
class Loss:
    name: str
    classes: int
    sizes: tuple[int, ...]  # on CUDA
    cpu_sizes: tuple[int, ...]  # the pure-PyTorch forms take seconds per call at the CUDA sizes
    quick_sizes: tuple[int, ...]
    ours: Callable
    reference: Callable


LOSSES = (
    Loss(
        "softmax_focal_loss",
        1000,
        (10_000, 100_000),
        (10_000,),
        (1_000,),
        lambda x, y: softmax_focal_loss(x, y, gamma=GAMMA),
        lambda x, y: softmax_focal_loss_reference(x, y, gamma=GAMMA),
    ),
    Loss(
        "sigmoid_focal_loss_star",
        80,
        (100_000, 1_000_000),
        (100_000,),
        (10_000,),
        lambda x, y: sigmoid_focal_loss_star(x, y, STAR_ALPHA, STAR_GAMMA, "mean", beta=STAR_BETA),
        lambda x, y: sigmoid_focal_loss_star_reference(x, y, STAR_ALPHA, STAR_GAMMA, "mean", beta=STAR_BETA),
    ),
)


def implementations(loss: Loss) -> dict[str, Callable[[], Callable]]:
    """name -> factory; called once per case, so that torch.compile starts afresh."""

    def compiled():
        torch._dynamo.reset()
        return torch.compile(loss.reference, dynamic=False)

    return {"ours": lambda: loss.ours, "pytorch-eager": lambda: loss.reference, "pytorch-compile": compiled}


def make_inputs(loss: Loss, rows: int, device: torch.device):
    generator = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(rows, loss.classes, generator=generator, device=device).requires_grad_()
    # softmax: one class per row; FL*: 2% of the anchors positive, the rest background (label K)
    labels = torch.randint(0, loss.classes, (rows,), generator=generator, device=device)
    if loss.name == "sigmoid_focal_loss_star":
        background = torch.rand(rows, generator=generator, device=device) >= 0.02
        labels[background] = loss.classes
    return logits, labels


def make_step(fn: Callable, logits: torch.Tensor, labels: torch.Tensor, mode: str):
    if mode == "forward":

        def forward():
            with torch.no_grad():
                return fn(logits, labels)

        return forward

    def forward_backward():
        logits.grad = None
        loss = fn(logits, labels)
        loss.backward()
        return loss

    return forward_backward


def run(device: torch.device, threads: int, quick: bool, min_run_time: float) -> list[dict]:
    torch.set_num_threads(threads)
    env = report.environment(device, threads)
    rows = []
    for loss in LOSSES:
        sizes = loss.quick_sizes if quick else loss.sizes if device.type == "cuda" else loss.cpu_sizes
        for size in sizes:
            logits, labels = make_inputs(loss, size, device)
            for mode in ("forward", "forward+backward"):
                for impl, factory in implementations(loss).items():
                    step = make_step(factory(), logits, labels, mode)
                    value = step().item()  # compiles, for torch.compile
                    timed = timing.time_step(step, device, threads=threads, min_run_time=min_run_time, min_samples=5)
                    print(
                        f"{loss.name} {mode} {size:,} x {loss.classes} {impl}: {timed.median_ms:.3g} ms",
                        file=sys.stderr,
                    )
                    rows.append(
                        {
                            "loss": loss.name,
                            "impl": impl,
                            "mode": mode,
                            "rows": size,
                            "classes": loss.classes,
                            "dtype": "float32",
                            "median_ms": timed.median_ms,
                            "q25_ms": timed.q25_ms,
                            "q75_ms": timed.q75_ms,
                            "samples": timed.samples,
                            "value": value,
                        }
                        | env
                    )
            del logits, labels
    return rows


def table(rows: list[dict]) -> str:
    ours = {(r["loss"], r["mode"], r["rows"]): r["median_ms"] for r in rows if r["impl"] == "ours"}
    lines = [
        "| loss | mode | rows x classes | impl | median ms (q25-q75) | ours faster by |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        speedup = r["median_ms"] / ours[(r["loss"], r["mode"], r["rows"])]
        lines.append(
            f"| {r['loss']} | {r['mode']} | {r['rows']:,} x {r['classes']} | {r['impl']} | "
            f"{r['median_ms']:.3g} ({r['q25_ms']:.3g}-{r['q75_ms']:.3g}) | "
            f"{'' if r['impl'] == 'ours' else f'{speedup:.2f}x'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--min-run-time", type=float, help="seconds per measurement (default 1, --quick 0.1)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows = run(device, args.threads, args.quick, args.min_run_time or (0.1 if args.quick else 1.0))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "family-" + report.output_stem(rows[0], args.quick)
    report.write_jsonl(rows, args.out / f"{stem}.jsonl")
    env = rows[0]
    print(f"{env['device_name']}, torch {env['torch']}, {args.threads} threads; wrote {args.out / stem}.jsonl\n")
    print(table(rows))


if __name__ == "__main__":
    main()
