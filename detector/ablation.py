"""The RetinaNet paper's analysis in miniature: Table 1 (a), (b), (d) and prior initialization,
and the gain of focal loss over cross entropy and OHEM against the foreground fraction.

    python -m detector.ablation --list                     # the rows
    python -m detector.ablation                            # every row, seeds 0 1 2
    python -m detector.ablation --rows b-gamma2 a-alpha0.75 --seeds 0 --steps 20
    python -m detector.ablation --shard 0/2 & python -m detector.ablation --shard 1/2  # 2 cores
    python -m detector.ablation --imbalance                # the imbalance study, runs/imbalance/
    python -m detector.ablation --imbalance --settings fg0.1 --rows ce fl-gamma2 --seeds 0

The imbalance study (`--imbalance`) trains the loss rows of IMBALANCE_ROWS at each
setting of SETTINGS: the same 128 px canvas, digits and hard negatives, with fewer
digits per image, so the fraction of foreground anchors falls while the cost of a
step stays the same. It uses SGD with step decay and scores each run at several
points of its schedule (the "curve" of its result line), so convergence can be checked.

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
from detector.data import build_dataset, collate
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


@dataclass(frozen=True)
class Setting:
    """A point on the imbalance axis: DataConfig overrides on the fixed canvas, and its step budget."""

    name: str
    data: dict
    steps: int


IMBALANCE_CANVAS = 128
# Fewer digits per image on the same canvas: foreground anchors / all anchors (3,069 per
# image) of about 2.4 %, 0.6 %, 0.24 % and 0.11 % (measured: `foreground_statistics`), at the
# same cost per step. Fewer digits per image also means fewer digits seen per step, so the
# sparser settings get more steps (2 x, 2.7 x, 4 x those of fg2; still fewer digits seen).
# Each test set holds about 500 digits, so AP is about equally noisy at every setting.
SETTINGS = {
    s.name: s
    for s in (
        Setting("fg2", dict(min_digits=8, max_digits=12, num_test_images=50), 1500),
        Setting("fg0.5", dict(min_digits=2, max_digits=3, num_test_images=200), 3000),
        Setting("fg0.25", dict(min_digits=1, max_digits=1, num_test_images=500), 4000),
        Setting("fg0.1", dict(min_digits=0, max_digits=1, num_test_images=1100), 6000),
    )
}
DEFAULT_SETTINGS = tuple(SETTINGS)
# Cross entropy at table a's best alpha; FL at the paper's alpha for each gamma (Table 1b);
# OHEM 1:3 (plain cross entropy over the selected anchors) at 128 and 512 per image.
IMBALANCE_ROWS = [
    Row("ce", "imbalance", dict(focal_gamma=0.0, focal_alpha=0.75)),
    Row("fl-gamma2", "imbalance", dict(focal_gamma=2.0, focal_alpha=0.25)),
    Row("fl-gamma1", "imbalance", dict(focal_gamma=1.0, focal_alpha=0.25)),
    Row("fl-gamma0.5", "imbalance", dict(focal_gamma=0.5, focal_alpha=0.5)),
    Row("ohem128-1:3", "imbalance", dict(ohem_keep=128, ohem_negatives_per_positive=3.0)),
    Row("ohem512-1:3", "imbalance", dict(ohem_keep=512, ohem_negatives_per_positive=3.0)),
]
# Where each imbalance run is scored, as fractions of its budget (the last must be 1).
CURVE_POINTS = (0.25, 0.5, 0.75, 1.0)


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


def imbalance_config(setting: Setting, steps: int = 0) -> Config:
    """The imbalance study's recipe at one setting: the ablation model, a 128 px canvas, SGD.

    The paper's optimizer: SGD, momentum 0.9, weight decay 1e-4, linear warm-up, the lr
    divided by 10 at 2/3 and 8/9 of the budget. `steps` replaces the setting's budget.
    """
    config = base_config(steps or setting.steps)
    config.data.canvas_size = IMBALANCE_CANVAS
    for key, value in setting.data.items():
        setattr(config.data, key, value)
    config.train.optimizer = "sgd"
    config.train.lr = 0.04
    config.train.momentum = 0.9
    config.train.weight_decay = 1e-4
    config.train.lr_schedule = "step"
    config.train.warmup_steps = max(1, config.train.max_steps // 20)
    config.train.checkpoint_every = 250
    return config


def run_config(base: Config, row: Row, seed: int, output_dir: Path, setting: str = "") -> Config:
    config = Config.from_dict(base.to_dict())
    for key, value in row.model.items():
        setattr(config.model, key, value)
    config.train.train_seed = seed
    folder = output_dir / setting if setting else output_dir
    config.train.output_dir = str(folder / f"steps{config.train.max_steps}" / row.name / f"seed{seed}")
    return config


@torch.no_grad()
def foreground_statistics(config: Config, num_images: int = 200) -> dict:
    """The matcher's labels on the first `num_images` training images of the config's data.

    foreground_fraction = positive anchors / all anchors, summed over the images; the
    ignored fraction (IoU between the thresholds) and the counts per image come with it.
    """
    dataset = build_dataset(config.data, "train")
    model = build_model(config.model, "torchvision").eval()
    anchors = torch.cat(model.predict(collate([dataset[0], dataset[1]])[0])[2])
    positives = ignored = objects = 0
    for index in range(num_images):
        _, target = dataset[index]
        labels, _ = model.matcher(anchors, target["boxes"], target["labels"])
        positives += int(((labels >= 0) & (labels < model.matcher.background)).sum())
        ignored += int((labels < 0).sum())
        objects += len(target["labels"])
    total = num_images * len(anchors)
    return {
        "foreground_fraction": positives / total,
        "ignored_fraction": ignored / total,
        "anchors_per_image": len(anchors),
        "positives_per_image": positives / num_images,
        "objects_per_image": objects / num_images,
    }


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


def record_foreground(path: Path, name: str, config: Config, statistics: dict) -> None:
    """Keep each setting's matcher statistics and data overrides in one JSON file beside the results."""
    known = json.loads(path.read_text()) if path.exists() else {}
    data = config.data
    known[name] = {
        **statistics,
        "digits_per_image": [data.min_digits, data.max_digits],
        "canvas_size": data.canvas_size,
        "num_test_images": data.num_test_images,
        "steps": config.train.max_steps,
    }
    path.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n")


def finished_runs(results: Path) -> set[tuple[str, str, int, int]]:
    """(setting, row, seed, steps) of every result line; the ablation grid's setting is ""."""
    if not results.exists():
        return set()
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    return {(r.get("setting", ""), r["row"], r["seed"], r["steps"]) for r in rows}


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _checkpoint_step(path: Path) -> int:
    return torch.load(path, weights_only=False)["step"] if path.exists() else 0


def score(config: Config, checkpoint: str, test_images, train_images=None) -> tuple[dict, bool]:
    """COCO metrics of a checkpoint, all zero when its weights are not finite.

    With `train_images`, the metrics also hold `gradient_shares` of the run's loss there.
    """
    model = build_model(config.model, config.train.loss)
    model.load_state_dict(torch.load(checkpoint, weights_only=False)["model"])
    if any(not torch.isfinite(p).all() for p in model.parameters()):
        return {name: 0.0 for name in METRIC_NAMES}, True
    metrics = evaluate_model(model, test_images, batch_size=16)[0]
    if train_images is not None:
        probe = collate([train_images[PROBE_INDEX + i] for i in range(PROBE_IMAGES)])
        metrics = {**metrics, **{f"share_{k}": v for k, v in gradient_shares(model, *probe).items()}}
    return metrics, False


# Training images no run reads (seeds read from seed x 2**24 on), to probe every run the same way.
PROBE_INDEX, PROBE_IMAGES = 2**30, 16
EASY_NEGATIVE, HARD_NEGATIVE = 0.05, 0.5  # thresholds on a negative element's probability p


def gradient_shares(model, images: torch.Tensor, targets: list[dict]) -> dict[str, float]:
    """Where the classification loss pushes: the shares of sum |d loss_cls / d logit| by element kind.

    Elements are (anchor, class) logits of non-ignored anchors: "positive" (the anchor's own
    class), and negatives by their probability: "easy" (p < 0.05), "medium", "hard" (p >= 0.5).
    "easy_elements" is the fraction of elements that are easy negatives. Uses the model's own
    loss (focal, cross entropy, or OHEM's selection), batch statistics as in training.
    """
    was_training = model.training
    model.train()
    with torch.no_grad():
        logits, deltas, anchors = model.predict(images)
    model.train(was_training)
    logits = torch.cat(logits, 1).requires_grad_(True)
    all_anchors = torch.cat(anchors)
    labels, boxes = model.assign(all_anchors, targets)
    loss = model.losses(logits, torch.cat(deltas, 1), all_anchors, labels, boxes)["loss_cls"]
    (grad,) = torch.autograd.grad(loss, logits)
    num_classes = logits.shape[-1]
    valid = (labels >= 0).unsqueeze(-1).expand_as(logits)
    positive = torch.nn.functional.one_hot(labels.clamp(min=0), num_classes + 1)[..., :num_classes].bool() & valid
    negative = valid & ~positive
    p = torch.sigmoid(logits.detach())
    push = grad.abs().double()
    total = push[valid].sum().clamp(min=1e-300)
    kinds = {
        "positive": positive,
        "easy": negative & (p < EASY_NEGATIVE),
        "medium": negative & (p >= EASY_NEGATIVE) & (p < HARD_NEGATIVE),
        "hard": negative & (p >= HARD_NEGATIVE),
    }
    shares = {name: round(float(push[mask].sum() / total), 5) for name, mask in kinds.items()}
    shares["easy_elements"] = round(float(kinds["easy"].sum() / valid.sum().clamp(min=1)), 5)
    return shares


def run_one(
    config: Config, row: Row, train_images, test_images, curve_points: tuple[float, ...] = (1.0,), probe: bool = False
) -> dict:
    """Train (or resume) one run, scoring it at each fraction of its budget in `curve_points`.

    The run trains up to each point (`stop_at_step`: the schedule is unchanged) and is
    scored there (with `probe`, also its `gradient_shares` on fixed training images); the
    scores go to <run>/curve.jsonl, so a resumed run keeps them.
    cpu_seconds_per_step is this process's CPU time over the steps it trained.
    """
    steps = config.train.max_steps
    run_dir = Path(config.train.output_dir)
    torch.set_num_threads(config.train.threads or torch.get_num_threads())
    curve_path = run_dir / "curve.jsonl"
    train_seconds = eval_seconds = cpu_seconds = 0.0
    first_step = _checkpoint_step(run_dir / "checkpoint.pt")
    diverged = False
    for point in curve_points:
        stop = round(point * steps)
        config.train.stop_at_step = 0 if stop >= steps else stop
        start, cpu = time.perf_counter(), time.process_time()
        summary = train(config, dataset=train_images)
        train_seconds += time.perf_counter() - start
        cpu_seconds += time.process_time() - cpu
        if summary["step"] != stop or any(r["step"] == stop for r in _read_jsonl(curve_path)):
            continue  # resumed past this point, or scored there before
        start = time.perf_counter()
        metrics, diverged = score(config, summary["checkpoint"], test_images, train_images if probe else None)
        eval_seconds += time.perf_counter() - start
        with open(curve_path, "a") as f:
            f.write(json.dumps({"step": summary["step"], **{k: round(v, 5) for k, v in metrics.items()}}) + "\n")
    config.train.stop_at_step = 0
    curve = [r for r in _read_jsonl(curve_path) if r["step"] <= steps]
    metrics = (
        curve[-1] if curve and curve[-1]["step"] == steps else score(config, summary["checkpoint"], test_images)[0]
    )
    losses = _read_jsonl(run_dir / "metrics.jsonl")
    final_loss = losses[-1]["loss_cls"] + losses[-1]["loss_box"] if losses else math.nan
    diverged = diverged or not math.isfinite(final_loss)
    trained_steps = steps - first_step
    return {
        "row": row.name,
        "table": row.table,
        "seed": config.train.train_seed,
        "steps": steps,
        "images": steps * config.train.batch_size,
        **{name: round(metrics[name], 5) for name in METRIC_NAMES},
        "final_loss": final_loss,
        "diverged": diverged,
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        "cpu_seconds_per_step": round(cpu_seconds / trained_steps, 4) if trained_steps else None,
        "load_average": round(os.getloadavg()[0], 2),
        "overrides": row.model,
        **(
            {
                "curve": [
                    {k: v for k, v in r.items() if k in ("step", "AP", "AP50") or k.startswith("share_")} for r in curve
                ]
            }
            if len(curve_points) > 1
            else {}
        ),
    }


def select_rows(patterns: list[str] | None, grid: list[Row] = GRID) -> list[Row]:
    if not patterns:
        return list(grid)
    chosen = [row for row in grid if any(fnmatch.fnmatch(row.name, p) or row.table == p for p in patterns)]
    unknown = [p for p in patterns if not any(fnmatch.fnmatch(r.name, p) or r.table == p for r in grid)]
    if unknown:
        raise SystemExit(f"no row matches {unknown}; rows are: {' '.join(r.name for r in grid)}")
    return chosen


def run_grid(
    rows: list[Row],
    seeds: list[int],
    output_dir: Path,
    base: Config,
    shard: tuple[int, int] = (0, 1),
    settings: dict[str, Config] | None = None,
    curve_points: tuple[float, ...] = (1.0,),
    foreground_images: int = 200,
) -> list[dict]:
    """Run what is not yet in results.jsonl, seed-major; returns the new result rows.

    settings: name -> base config of each imbalance setting (None: `base` alone, the
    ablation grid); runs go seed by seed, then row by row, then setting by setting.
    shard (i, n): take every n-th run of the grid starting at the i-th, so n runners
    side by side share one grid (and one results file, appended a line at a time).
    Every result line records the setting's foreground fraction, measured on its first
    `foreground_images` training images.
    """
    bases = settings or {"": base}
    torch.set_num_threads(base.train.threads or torch.get_num_threads())
    output_dir.mkdir(parents=True, exist_ok=True)
    results = output_dir / "results.jsonl"
    done = finished_runs(results)
    grid = [(name, row, seed) for seed in seeds for row in rows for name in bases][shard[0] :: shard[1]]
    todo = [(n, row, seed) for n, row, seed in grid if (n, row.name, seed, bases[n].train.max_steps) not in done]
    print(f"{len(grid) - len(todo)} runs already done, {len(todo)} to go", flush=True)
    foreground, test_sets, new, clock = {}, {}, [], time.perf_counter()
    train_images, images_key = None, None
    for number, (name, row, seed) in enumerate(todo, 1):
        config = bases[name]
        if name not in foreground:
            foreground[name] = foreground_statistics(config, foreground_images)
            print(f"setting {name or 'ablation'}: {json.dumps(foreground[name])}", flush=True)
            record_foreground(output_dir / "foreground.json", name, config, foreground[name])
            test_sets[name] = KeptImages(build_dataset(config.data, "test"))
        if settings:  # images are cheap to make and large to keep at these budgets
            train_images = build_dataset(config.data, "train")
        elif seed != images_key:  # only one seed's images are kept at a time
            train_images, images_key = KeptImages(build_dataset(config.data, "train")), seed
        try:
            result = run_one(
                run_config(config, row, seed, output_dir, name),
                row,
                train_images,
                test_sets[name],
                curve_points,
                probe=bool(settings),
            )
        except Exception:  # one broken run must not stop the grid; a restart retries it
            traceback.print_exc()
            continue
        if settings:
            result = {"setting": name, **result}
        result["foreground_fraction"] = round(foreground[name]["foreground_fraction"], 6)
        with open(results, "a") as f:
            f.write(json.dumps(result) + "\n")
        new.append(result)
        elapsed = time.perf_counter() - clock
        eta = elapsed / number * (len(todo) - number)
        print(
            f"[{number}/{len(todo)}] {name + ' ' if name else ''}{row.name} seed {seed}: AP {result['AP']:.3f} "
            f"AP50 {result['AP50']:.3f} AP75 {result['AP75']:.3f} ({result['train_seconds']:.0f}+"
            f"{result['eval_seconds']:.0f} s, {result['cpu_seconds_per_step']} CPU s/step, "
            f"load {result['load_average']}); elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min",
            flush=True,
        )
    return new


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="*", help="row names, shell patterns (b-*) or tables (a, b, d, prior)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--steps", type=int, default=0, help=f"budget (default {DEFAULT_STEPS}; imbalance: each setting's)"
    )
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    parser.add_argument("--output-dir", default="", help="default runs/ablation (imbalance: runs/imbalance)")
    parser.add_argument("--shard", default="0/1", help="i/n: this runner's share when n run side by side")
    parser.add_argument("--list", action="store_true", help="print the rows (and settings) and exit")
    parser.add_argument("--imbalance", action="store_true", help="the imbalance study instead of the ablation grid")
    parser.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args(argv)
    rows = select_rows(args.rows, IMBALANCE_ROWS if args.imbalance else GRID)
    if args.list:
        for row in rows:
            print(f"{row.table:>5}  {row.name:<14} {json.dumps(row.model)}")
        if args.imbalance:
            for name in args.settings:
                print(f"setting {name:<7} {SETTINGS[name].steps} steps {json.dumps(SETTINGS[name].data)}")
        return
    shard = tuple(map(int, args.shard.split("/")))
    if args.imbalance:
        settings = {name: imbalance_config(SETTINGS[name], args.steps) for name in args.settings}
        output = Path(args.output_dir or "runs/imbalance")
        run_grid(rows, args.seeds, output, next(iter(settings.values())), shard, settings, CURVE_POINTS)
    else:
        base = base_config(args.steps or DEFAULT_STEPS, args.batch_size)
        run_grid(rows, args.seeds, Path(args.output_dir or "runs/ablation"), base, shard)


if __name__ == "__main__":
    sys.exit(main())
