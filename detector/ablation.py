"""The RetinaNet paper's analysis in miniature: Table 1 (a), (b), (d) and prior initialization.

    python -m detector.ablation --list                     # the rows
    python -m detector.ablation                            # every row, seeds 0 1 2
    python -m detector.ablation --rows b-gamma2 a-alpha0.75 --seeds 0 --steps 20
    python -m detector.ablation --shard 0/2 & python -m detector.ablation --shard 1/2  # 2 cores

Every run trains the same model on the same `digits-dense` data with the same step
budget and differs only in the row's overrides; then it is scored on the fixed test
set. One JSON line per finished run goes to <output-dir>/results.jsonl; a restart
skips the (row, seed, steps) already there, and an interrupted run resumes from its
checkpoint. Runs go seed by seed (seed 0 of every row first), so a partial grid
already covers every row. The report is `python -m detector.ablation_report`.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from detector.config import Config, apply_dataset_preset
from detector.data import build_dataset
from detector.evaluate import METRIC_NAMES, evaluate_model
from detector.model import build_model
from detector.train import train


@dataclass(frozen=True)
class Row:
    name: str
    table: str  # "a", "b", "d" or "prior"
    model: dict = field(default_factory=dict)  # ModelConfig overrides


def _grid() -> list[Row]:
    rows = []
    # (a) alpha-balanced cross entropy.
    for alpha in (0.10, 0.25, 0.50, 0.75, 0.90, 0.99, 0.999):
        rows.append(Row(f"a-alpha{alpha:g}", "a", dict(focal_gamma=0.0, focal_alpha=alpha)))
    # (b) focal loss with the paper's alpha for each gamma; gamma 0 is row a-alpha0.75.
    for gamma, alpha in ((0.1, 0.75), (0.2, 0.75), (0.5, 0.5), (1.0, 0.25), (2.0, 0.25), (5.0, 0.25)):
        rows.append(Row(f"b-gamma{gamma:g}", "b", dict(focal_gamma=gamma, focal_alpha=alpha)))
    # (d) OHEM with plain cross entropy.
    for keep in (128, 512):
        for ratio, suffix in ((0.0, ""), (3.0, "-1:3")):
            rows.append(Row(f"d-ohem{keep}{suffix}", "d", dict(ohem_keep=keep, ohem_negatives_per_positive=ratio)))
    # Prior initialization off (bias 0, p = 0.5); "on" is a-alpha0.5 (CE) and b-gamma2 (FL).
    rows.append(Row("p-ce-noprior", "prior", dict(focal_gamma=0.0, focal_alpha=0.5, prior_prob=0.5)))
    rows.append(Row("p-fl-noprior", "prior", dict(focal_gamma=2.0, focal_alpha=0.25, prior_prob=0.5)))
    return rows


GRID = _grid()
DEFAULT_STEPS = 500
DEFAULT_BATCH = 4


def base_config(steps: int = DEFAULT_STEPS, batch_size: int = DEFAULT_BATCH) -> Config:
    """The recipe every row shares: the CPU-sized model, dense data, a fixed step budget."""
    config = Config()
    apply_dataset_preset(config.data, "digits-dense")
    config.model.backbone_width = 16
    config.model.fpn_channels = 32
    config.model.head_convs = 2
    config.train.batch_size = batch_size
    config.train.max_steps = steps
    config.train.warmup_steps = max(1, steps // 10)
    config.train.max_minutes = 0.0  # the schedule is a function of the step only
    config.train.checkpoint_every = 100
    config.train.threads = 1
    return config


def run_config(base: Config, row: Row, seed: int, output_dir: Path) -> Config:
    config = Config.from_dict(base.to_dict())
    for key, value in row.model.items():
        setattr(config.model, key, value)
    config.train.train_seed = seed
    config.train.output_dir = str(output_dir / f"steps{config.train.max_steps}" / row.name / f"seed{seed}")
    return config


class KeptImages(torch.utils.data.Dataset):
    """A dataset that keeps every item it made: each run of a seed reads the same images."""

    def __init__(self, dataset):
        self.dataset, self.items = dataset, {}
        self.num_classes = dataset.num_classes

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        if index not in self.items:
            self.items[index] = self.dataset[index]
        return self.items[index]


def finished_runs(results: Path) -> set[tuple[str, int, int]]:
    if not results.exists():
        return set()
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    return {(r["row"], r["seed"], r["steps"]) for r in rows}


def run_one(config: Config, row: Row, train_images, test_images) -> dict:
    """Train (or resume) one run, then score it on the test images."""
    steps = config.train.max_steps
    torch.set_num_threads(config.train.threads or torch.get_num_threads())
    start = time.perf_counter()
    summary = train(config, dataset=train_images)
    train_seconds = time.perf_counter() - start
    log = Path(config.train.output_dir) / "metrics.jsonl"
    losses = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    final_loss = losses[-1]["loss_cls"] + losses[-1]["loss_box"] if losses else math.nan

    start = time.perf_counter()
    model = build_model(config.model, config.train.loss)
    model.load_state_dict(torch.load(summary["checkpoint"], weights_only=False)["model"])
    diverged = not math.isfinite(final_loss) or any(not torch.isfinite(p).all() for p in model.parameters())
    if diverged:
        metrics = {name: 0.0 for name in METRIC_NAMES}
    else:
        metrics, _ = evaluate_model(model, test_images, batch_size=16)
    return {
        "row": row.name,
        "table": row.table,
        "seed": config.train.train_seed,
        "steps": steps,
        "images": steps * config.train.batch_size,
        **{name: round(value, 5) for name, value in metrics.items()},
        "final_loss": final_loss,
        "diverged": diverged,
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(time.perf_counter() - start, 1),
        "load_average": round(os.getloadavg()[0], 2),
        "overrides": row.model,
    }


def select_rows(patterns: list[str] | None) -> list[Row]:
    if not patterns:
        return list(GRID)
    chosen = [row for row in GRID if any(fnmatch.fnmatch(row.name, p) or row.table == p for p in patterns)]
    unknown = [p for p in patterns if not any(fnmatch.fnmatch(r.name, p) or r.table == p for r in GRID)]
    if unknown:
        raise SystemExit(f"no row matches {unknown}; rows are: {' '.join(r.name for r in GRID)}")
    return chosen


def run_grid(
    rows: list[Row], seeds: list[int], output_dir: Path, base: Config, shard: tuple[int, int] = (0, 1)
) -> list[dict]:
    """Run what is not yet in results.jsonl, seed-major; returns the new result rows.

    shard (i, n): take every n-th run of the grid starting at the i-th, so n runners
    side by side share one grid (and one results file, appended a line at a time).
    """
    steps = base.train.max_steps
    output_dir.mkdir(parents=True, exist_ok=True)
    results = output_dir / "results.jsonl"
    done = finished_runs(results)
    grid = [(row, seed) for seed in seeds for row in rows][shard[0] :: shard[1]]
    todo = [(row, seed) for row, seed in grid if (row.name, seed, steps) not in done]
    print(f"{len(grid) - len(todo)} runs already done, {len(todo)} to go", flush=True)
    test_images = KeptImages(build_dataset(base.data, "test"))
    train_images, images_seed, new, clock = None, None, [], time.perf_counter()
    for number, (row, seed) in enumerate(todo, 1):
        if seed != images_seed:  # only one seed's images are kept at a time
            train_images, images_seed = KeptImages(build_dataset(base.data, "train")), seed
        try:
            result = run_one(run_config(base, row, seed, output_dir), row, train_images, test_images)
        except Exception:  # one broken run must not stop the grid; a restart retries it
            traceback.print_exc()
            continue
        with open(results, "a") as f:
            f.write(json.dumps(result) + "\n")
        new.append(result)
        elapsed = time.perf_counter() - clock
        eta = elapsed / number * (len(todo) - number)
        print(
            f"[{number}/{len(todo)}] {row.name} seed {seed}: AP {result['AP']:.3f} AP50 {result['AP50']:.3f} "
            f"AP75 {result['AP75']:.3f} ({result['train_seconds']:.0f}+{result['eval_seconds']:.0f} s, "
            f"load {result['load_average']}); elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min",
            flush=True,
        )
    return new


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="*", help="row names, shell patterns (b-*) or tables (a, b, d, prior)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    parser.add_argument("--output-dir", default="runs/ablation")
    parser.add_argument("--shard", default="0/1", help="i/n: this runner's share when n run side by side")
    parser.add_argument("--list", action="store_true", help="print the rows and exit")
    args = parser.parse_args(argv)
    rows = select_rows(args.rows)
    if args.list:
        for row in rows:
            print(f"{row.table:>5}  {row.name:<14} {json.dumps(row.model)}")
        return
    index, count = map(int, args.shard.split("/"))
    run_grid(rows, args.seeds, Path(args.output_dir), base_config(args.steps, args.batch_size), (index, count))


if __name__ == "__main__":
    sys.exit(main())
