"""Train the RetinaNet on the generated digits (or a COCO folder).

    python -m detector.train                              # default recipe, 30 minutes
    python -m detector.train --loss torchvision --max-minutes 5 --output-dir runs/tv
    torchrun --nproc-per-node 2 -m detector.train         # DDP: gloo on CPU, nccl on GPU

Writes <output-dir>/checkpoint.pt (resumed automatically), config.json,
metrics.jsonl and loss_curve.png. Training image i of step s on process r of W
is generated from index (s * W + r) * batch_size + i, so the data after a resume
is exactly the data the interrupted run would have seen.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from detector import distributed
from detector.checkpoint import load_checkpoint, save_checkpoint
from detector.config import Config, TrainConfig, add_arguments, from_arguments
from detector.data import build_dataset, collate
from detector.model import build_model
from detector.plots import plot_loss_curve


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {config.optimizer!r}")


def learning_rate(config: TrainConfig, step: int, time_fraction: float) -> float:
    """Linear warm-up, then cosine or step decay over whichever budget (steps, minutes) ends first."""
    progress = min(1.0, max(step / config.max_steps, time_fraction))
    warmup = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    if config.lr_schedule == "cosine":
        return config.lr * warmup * 0.5 * (1.0 + math.cos(math.pi * progress))
    if config.lr_schedule == "step":
        decays = sum(progress >= at for at in config.lr_decay_at)
        return config.lr * warmup * config.lr_decay_factor**decays
    raise ValueError(f"lr_schedule must be 'cosine' or 'step', got {config.lr_schedule!r}")


IMAGES_PER_SEED = 2**24


def training_batch(dataset, step: int, rank: int, world_size: int, batch_size: int, seed: int = 0):
    first = seed * IMAGES_PER_SEED + (step * world_size + rank) * batch_size
    return collate([dataset[first + i] for i in range(batch_size)])


class MetricsLog:
    """Appends JSON rows; on resume drops rows past the checkpoint so the curve has no repeats."""

    def __init__(self, path: Path, resume_step: int, enabled: bool):
        self.path, self.enabled = path, enabled
        if enabled and path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            kept = [row for row in rows if row.get("step", 0) <= resume_step]
            path.write_text("".join(json.dumps(row) + "\n" for row in kept))

    def write(self, row: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")


def train(config: Config, dataset=None) -> dict:
    """Train, or resume, the run in `config.train.output_dir`.

    `dataset` replaces the training set named in the config; `detector.ablation`
    passes one that keeps the images it made, since every run of a seed sees the same ones.
    """
    cfg = config.train
    process = distributed.setup(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dataset = dataset if dataset is not None else build_dataset(config.data, "train")
    config.model.num_classes = dataset.num_classes
    output_dir = Path(cfg.output_dir)
    checkpoint_path = output_dir / "checkpoint.pt"

    torch.manual_seed(config.data.seed + cfg.train_seed)
    model = build_model(config.model, cfg.loss).to(process.device)
    optimizer = build_optimizer(model, cfg)
    step, train_seconds = 0, 0.0
    if cfg.resume and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path, process.device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, train_seconds = state["step"], state["train_seconds"]
    if process.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    trained = DistributedDataParallel(model) if process.world_size > 1 else model
    log = MetricsLog(output_dir / "metrics.jsonl", step, process.is_main)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=process.device.type == "cuda")
    budget_seconds = cfg.max_minutes * 60.0

    def time_fraction(seconds: float) -> float:
        return seconds / budget_seconds if budget_seconds > 0 else 0.0

    fraction = time_fraction(train_seconds)
    running = torch.zeros(3, device=process.device)  # loss_cls, loss_box, positives since last log
    steps_since_log, clock = 0, time.perf_counter()

    def percent_done() -> float:
        """Of whichever budget, steps or minutes, ends the run first: the bar and its ETA follow it."""
        seconds = train_seconds + time.perf_counter() - clock
        return 100.0 * min(1.0, max(step / cfg.max_steps, time_fraction(seconds)))

    bar = tqdm(
        total=100.0,
        initial=percent_done(),
        disable=not process.is_main,
        dynamic_ncols=True,
        bar_format="{l_bar}{bar}| [{elapsed}<{remaining}{postfix}]",
    )
    model.train()

    def should_stop() -> bool:
        return step >= cfg.max_steps or fraction >= 1.0 or 0 < cfg.stop_at_step <= step

    while not should_stop():
        lr = learning_rate(cfg, step, fraction)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, targets = training_batch(
            dataset, step, process.rank, process.world_size, cfg.batch_size, cfg.train_seed
        )
        with autocast:
            losses = trained(images.to(process.device, non_blocking=True), targets)
        loss = losses["loss_cls"] + losses["loss_box"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        step += 1
        steps_since_log += 1
        running += torch.stack([losses["loss_cls"].detach(), losses["loss_box"].detach(), losses["num_positive"]])

        if step % cfg.log_every == 0 or step in (cfg.max_steps, cfg.stop_at_step):
            now = time.perf_counter()
            train_seconds += now - clock
            images_per_s = steps_since_log * cfg.batch_size * process.world_size / (now - clock)
            clock = now
            # Every process must stop at the same step, so they agree on the time used.
            fraction = time_fraction(distributed.max_over_processes(train_seconds, process.device))
            means = (running / steps_since_log).tolist()
            row = {
                "step": step,
                "images_seen": step * cfg.batch_size * process.world_size,
                "loss_cls": means[0],
                "loss_box": means[1],
                "positives_per_batch": means[2],
                "lr": lr,
                "images_per_s": images_per_s,
                "train_minutes": train_seconds / 60.0,
            }
            log.write(row)
            bar.set_postfix(
                step=f"{step}/{cfg.max_steps}",
                loss=f"{means[0] + means[1]:.3f}",
                lr=f"{lr:.2e}",
                img_s=f"{images_per_s:.1f}",
                minutes=f"{train_seconds / 60:.1f}" + (f"/{cfg.max_minutes:g}" if budget_seconds else ""),
            )
            running.zero_()
            steps_since_log = 0
        bar.update(percent_done() - bar.n)
        if process.is_main and (step % cfg.checkpoint_every == 0 or should_stop()):
            save_checkpoint(checkpoint_path, model, optimizer, step, train_seconds, config)
            plot_loss_curve(output_dir / "metrics.jsonl", output_dir / "loss_curve.png")
    bar.close()
    distributed.cleanup()
    return {"step": step, "train_minutes": train_seconds / 60.0, "checkpoint": str(checkpoint_path)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    summary = train(from_arguments(parser.parse_args(argv)))
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
