"""Where one training step's time goes, with the fused focal loss and with torchvision's.

    python -m detector.timing --steps 20 --output detector/results/step_time.json

Both losses train the same model (same initial weights, same batches) in one
process, alternating step by step so that load from other processes hits both
alike. A step is split into:

    backbone+head   forward of backbone, FPN and heads + their backward
    loss            focal + box loss forward + backward down to the head outputs
    rest            batch generation, anchor assignment, optimizer step

The backward is cut in two with torch.autograd.grad at the head outputs. Medians
and quartiles over the timed steps, after warm-up; the thread count is printed.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from detector.config import Config
from detector.data import DigitCanvas
from detector.model import build_model
from detector.train import build_optimizer, training_batch

PARTS = ("backbone+head", "loss", "rest", "total")


class _Clock:
    def __init__(self, device: torch.device):
        self.device = device
        self.last = self._now()

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def lap(self) -> float:
        now = self._now()
        elapsed, self.last = now - self.last, now
        return elapsed


def timed_step(model, optimizer, dataset, step: int, batch_size: int, device: torch.device) -> dict[str, float]:
    clock = _Clock(device)
    images, targets = training_batch(dataset, step, 0, 1, batch_size)
    images = images.to(device)
    data = clock.lap()
    logits, deltas, anchors = model.predict(images)
    logits, deltas, anchors = torch.cat(logits, 1), torch.cat(deltas, 1), torch.cat(anchors)
    forward = clock.lap()
    labels, matched_boxes = model.assign(anchors, targets)
    assign = clock.lap()
    losses = model.losses(logits, deltas, anchors, labels, matched_boxes)
    head_grads = torch.autograd.grad(losses["loss_cls"] + losses["loss_box"], [logits, deltas], retain_graph=True)
    loss = clock.lap()
    optimizer.zero_grad(set_to_none=True)
    torch.autograd.backward([logits, deltas], head_grads)
    backward = clock.lap()
    optimizer.step()
    update = clock.lap()
    return {
        "backbone+head": forward + backward,
        "loss": loss,
        "rest": data + assign + update,
        "total": data + forward + assign + loss + backward + update,
    }


def summarize(samples: list[float]) -> dict[str, float]:
    quartiles = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return {"median_ms": 1e3 * quartiles[1], "q25_ms": 1e3 * quartiles[0], "q75_ms": 1e3 * quartiles[2]}


def measure(config: Config, losses: list[str], steps: int, warmup: int) -> dict[str, dict]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dataset = DigitCanvas("train", config.data)
    runs = {}
    for name in losses:
        torch.manual_seed(0)
        model = build_model(config.model, name).to(device).train()
        runs[name] = (model, build_optimizer(model, config.train), {part: [] for part in PARTS})
    for step in range(warmup + steps):
        for model, optimizer, samples in runs.values():
            parts = timed_step(model, optimizer, dataset, step, config.train.batch_size, device)
            if step >= warmup:
                for part, seconds in parts.items():
                    samples[part].append(seconds)
    return {name: {part: summarize(s) for part, s in samples.items()} for name, (_, _, samples) in runs.items()}


def format_table(results: dict[str, dict]) -> str:
    lines = [f"{'loss':<12}" + "".join(f"{part:>22}" for part in PARTS)]
    for name, parts in results.items():
        cells = [f"{p['median_ms']:8.1f} [{p['q25_ms']:.0f}-{p['q75_ms']:.0f}]" for p in parts.values()]
        lines.append(f"{name:<12}" + "".join(f"{cell:>22}" for cell in cells))
    return "\n".join(lines) + "\n(median ms per step [quartiles])"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=Config().train.batch_size)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0 keeps the default")
    parser.add_argument("--losses", nargs="+", default=["fused", "torchvision"])
    parser.add_argument("--output", default="runs/step_time.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = Config()
    config.train.batch_size = args.batch_size
    results = measure(config, args.losses, args.steps, args.warmup)
    print(f"batch {args.batch_size}, canvas {config.data.canvas_size} px, {torch.get_num_threads()} threads")
    print(format_table(results))
    record = {
        "results": results,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "torch": torch.__version__,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
