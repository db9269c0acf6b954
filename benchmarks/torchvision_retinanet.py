"""torchvision's RetinaNet, stock vs ``fuse_focal_loss``: classification-loss time, training-step time, memory.

    python benchmarks/torchvision_retinanet.py                   # CUDA if present, else CPU
    python benchmarks/torchvision_retinanet.py --device cpu --batches 2,8,16 --train-size 512

Two measurements, each taking stock and fused turn about in one run (the order alternates every
repetition), so that both see the same machine; the speed-up is the median of the per-repetition
ratios.

* ``loss``: ``RetinaNetClassificationHead.compute_loss`` forward + backward on logits of the
  standard 800x800 input (120,087 anchors, 91 classes), with the targets the model's own matcher
  assigns to random boxes (``--boxes`` per image).
* ``train``: one SGD step of ``retinanet_resnet50_fpn`` (random weights) on a batch of random
  ``--train-size`` px images: forward, the four losses, backward, ``optimizer.step()``.

Peak memory is the peak allocated during one call beyond what was allocated before it (the
method is printed with the results). Writes ``torchvision-retinanet-<device>-<date>.json`` and
``.md`` under benchmarks/results/ (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import torch

sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks import report, timing  # noqa: E402
from benchmarks.run import Progress  # noqa: E402
from focal_loss_ext.integrations.torchvision import fuse_focal_loss, unfuse_focal_loss  # noqa: E402

VARIANTS = ("stock", "fused")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", default="2,8,16", help="batch sizes, comma-separated")
    parser.add_argument("--image-size", type=int, default=800, help="square input of the loss measurement")
    parser.add_argument("--num-classes", type=int, default=91)
    parser.add_argument("--boxes", type=int, default=7, help="objects per image (COCO averages 7.3)")
    parser.add_argument("--loss-reps", type=int, default=None, help="timed repetitions (default CPU 3, CUDA 20)")
    parser.add_argument("--train-size", type=int, default=None, help="square input of the training step (800)")
    parser.add_argument("--train-batches", default=None, help="batch sizes of the training step (--batches)")
    parser.add_argument("--train-reps", type=int, default=None, help="timed repetitions (default CPU 2, CUDA 10)")
    parser.add_argument("--skip-loss", action="store_true")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--tag", default="", help="appended to the output files' names")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    on_cpu = args.device == "cpu"
    args.batches = [int(b) for b in args.batches.split(",")]
    args.train_batches = [int(b) for b in args.train_batches.split(",")] if args.train_batches else args.batches
    args.train_size = args.train_size or args.image_size
    args.loss_reps = args.loss_reps or (3 if on_cpu else 20)
    args.train_reps = args.train_reps or (2 if on_cpu else 10)
    return args


def make_model(num_classes, size, device):
    from torchvision.models.detection import retinanet_resnet50_fpn

    model = retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes, min_size=size, max_size=size
    )
    return model.to(device).train()


def random_targets(batch, boxes, num_classes, size, device, generator):
    targets = []
    for _ in range(batch):
        corner = torch.rand(boxes, 2, generator=generator) * size * 0.7
        extent = size * (0.05 + 0.25 * torch.rand(boxes, 2, generator=generator))
        xyxy = torch.cat([corner, (corner + extent).clamp(max=size)], dim=1)
        labels = torch.randint(0, num_classes, (boxes,), generator=generator)
        targets.append({"boxes": xyxy.to(device), "labels": labels.to(device)})
    return targets


def loss_case(model, batch, args, device):
    """(steps by variant, anchors per image): compute_loss forward + backward on fixed inputs."""
    from torchvision.models.detection.image_list import ImageList
    from torchvision.ops import box_iou

    g = torch.Generator().manual_seed(batch)
    size = args.image_size
    images = ImageList(torch.zeros(batch, 3, size, size, device=device), [(size, size)] * batch)
    # The anchor generator reads only the feature maps' sizes: strides 8 to 128 (P3-P7).
    sizes = [size // 8]
    for _ in range(4):
        sizes.append((sizes[-1] + 1) // 2)
    features = [torch.zeros(batch, 1, s, s, device=device) for s in sizes]
    anchors = model.anchor_generator(images, features)
    targets = random_targets(batch, args.boxes, args.num_classes, size, device, g)
    matched = [model.proposal_matcher(box_iou(t["boxes"], a)) for t, a in zip(targets, anchors)]
    # Logits around the head's prior (p = 0.01), as at the start of training.
    logits = (-4.6 + torch.randn(batch, anchors[0].shape[0], args.num_classes, generator=g)).to(device)
    logits.requires_grad_()
    head = model.head.classification_head
    fused = fuse_focal_loss(model).head.classification_head.compute_loss
    unfuse_focal_loss(model)

    def step(compute_loss):
        def run():
            compute_loss(targets, {"cls_logits": logits}, matched).backward()

        return Step(prepare=lambda: setattr(logits, "grad", None), run=run)

    steps = {"stock": step(lambda *a: type(head).compute_loss(head, *a)), "fused": step(fused)}
    return steps, anchors[0].shape[0], (logits, targets, matched)


def train_case(model, batch, args, device):
    g = torch.Generator().manual_seed(1000 + batch)
    size = args.train_size
    images = [torch.rand(3, size, size, generator=g).to(device) for _ in range(batch)]
    targets = random_targets(batch, args.boxes, args.num_classes, size, device, g)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)

    def step(fuse):
        def prepare():
            fuse(model)
            optimizer.zero_grad(set_to_none=True)

        def run():
            losses = model(images, targets)
            sum(losses.values()).backward()
            optimizer.step()

        return Step(prepare, run)

    return {"stock": step(unfuse_focal_loss), "fused": step(fuse_focal_loss)}


class Step(NamedTuple):
    """``run`` is timed; ``prepare`` (dropping the last gradient, choosing stock or fused) is not,
    so that the peak memory of ``run`` does not net out the previous gradient's release."""

    prepare: Callable[[], object]
    run: Callable[[], object]


def time_once(step, device):
    step.prepare()
    step = step.run
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1e3
    begin = time.perf_counter()
    step()
    return time.perf_counter() - begin


def peak_extra_bytes(step, device):
    step.prepare()
    return timing.peak_extra_bytes(step.run, device)


def interleaved(steps, reps, device, progress):
    """Per variant: the times of ``reps`` calls after one warm-up, stock and fused taking turns."""
    times = {name: [] for name in steps}
    for name in steps:
        time_once(steps[name], device)  # warm-up: allocator, first-call set-up
    for rep in range(reps):
        order = VARIANTS if rep % 2 == 0 else VARIANTS[::-1]
        for name in order:
            times[name].append(time_once(steps[name], device))
            progress.update()
    return times


def summarize(kind, batch, times, peaks, extra):
    rows = []
    ratios = [s / f for s, f in zip(times["stock"], times["fused"])]
    for name in VARIANTS:
        t = timing.summarize(times[name])
        row = {"measure": kind, "batch": batch, "impl": name, "median_ms": t.median_ms, "q25_ms": t.q25_ms}
        row |= {"q75_ms": t.q75_ms, "samples": t.samples, "peak_extra_bytes": peaks[name]}
        row |= {"speedup_median": statistics.median(ratios), "speedup_min": min(ratios), "speedup_max": max(ratios)}
        rows.append(row | extra)
    return rows


def mib(n):
    return "–" if n is None else f"{n / 2**20:,.0f}"


def table(rows):
    lines = [
        "| measure | batch | stock ms | fused ms | speed-up (median, min–max) | stock peak MiB | fused peak MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    by_case = {}
    for row in rows:
        by_case.setdefault((row["measure"], row["batch"]), {})[row["impl"]] = row
    for (measure, batch), case in by_case.items():
        s, f = case["stock"], case["fused"]
        lines.append(
            f"| {measure} | {batch} | {s['median_ms']:,.1f} | {f['median_ms']:,.1f} | "
            f"{s['speedup_median']:.2f}× ({s['speedup_min']:.2f}–{s['speedup_max']:.2f}) | "
            f"{mib(s['peak_extra_bytes'])} | {mib(f['peak_extra_bytes'])} |"
        )
    return "\n".join(lines)


def check_same_loss(model, inputs):
    """The fused loss equals the stock one on the benchmark's own inputs (else the timing is moot)."""
    logits, targets, matched = inputs
    head = model.head.classification_head
    with torch.no_grad():
        stock = type(head).compute_loss(head, targets, {"cls_logits": logits}, matched)
        fused = fuse_focal_loss(model).head.classification_head.compute_loss(targets, {"cls_logits": logits}, matched)
    unfuse_focal_loss(model)
    torch.testing.assert_close(fused, stock, rtol=1e-4, atol=0)
    return stock.item()


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    env = report.environment(device, args.threads)
    loss_batches = [] if args.skip_loss else args.batches
    train_batches = [] if args.skip_train else args.train_batches
    total = 2 * (len(loss_batches) * args.loss_reps + len(train_batches) * args.train_reps)
    progress = Progress(total)
    load_before = os.getloadavg()[0]
    rows = []

    model = make_model(args.num_classes, args.image_size, device)
    for batch in loss_batches:
        progress.describe(f"loss, batch {batch}")
        steps, anchors, inputs = loss_case(model, batch, args, device)
        loss_value = check_same_loss(model, inputs)
        times = interleaved(steps, args.loss_reps, device, progress)
        peaks = {name: peak_extra_bytes(steps[name], device) for name in VARIANTS}
        logits_bytes = inputs[0].numel() * inputs[0].element_size()
        extra = {"anchors_per_image": anchors, "num_classes": args.num_classes, "image_size": args.image_size}
        rows += summarize("loss", batch, times, peaks, extra | {"logits_bytes": logits_bytes, "loss": loss_value})
        del steps, inputs
        progress.write(table(rows[-2:]))

    if train_batches:
        del model
        model = make_model(args.num_classes, args.train_size, device)
        for batch in train_batches:
            progress.describe(f"train step, batch {batch}")
            steps = train_case(model, batch, args, device)
            times = interleaved(steps, args.train_reps, device, progress)
            peaks = {name: peak_extra_bytes(steps[name], device) for name in VARIANTS}
            rows += summarize("train", batch, times, peaks, {"image_size": args.train_size, "model": "resnet50_fpn"})
            progress.write(table(rows[-2:]))
    progress.close()
    load = (load_before, os.getloadavg()[0])

    rows = [row | env for row in rows]
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "torchvision-retinanet-" + report.output_stem(env, quick=False) + (f"-{args.tag}" if args.tag else "")
    command = "python benchmarks/torchvision_retinanet.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    (args.out / f"{stem}.json").write_text(json.dumps(rows, indent=1) + "\n")
    memory_method = timing.CPU_MEMORY_METHOD if device.type == "cpu" else timing.CUDA_MEMORY_METHOD
    lines = [
        f"# torchvision RetinaNet: stock vs fuse_focal_loss ({env['device_name']})",
        "",
        f"`{command.strip()}` — torch {env['torch']}, {args.threads} CPU thread(s), commit "
        f"{report.short_commit(env)}, {env['date']}.",
        "",
        table(rows),
        "",
    ]
    if loss_batches:
        lines.append(
            f"- loss: `RetinaNetClassificationHead.compute_loss` forward + backward, {args.image_size} px "
            f"({rows[0]['anchors_per_image']:,} anchors per image), {args.num_classes} classes, "
            f"{args.boxes} random boxes per image matched by the model's matcher, float32."
        )
    if train_batches:
        lines.append(f"- train: `retinanet_resnet50_fpn` SGD step at {args.train_size} px, float32, random weights.")
    lines += [
        f"- Medians of {args.loss_reps} (loss) / {args.train_reps} (train) calls after one warm-up, stock "
        "and fused alternating; the speed-up is per repetition, median (min–max).",
        f"- Peak: {memory_method}, one call.",
        f"- Load average before / after: {load[0]:.1f} / {load[1]:.1f} (a shared machine: the spread of the "
        "ratios says how much to trust them).",
    ]
    text = "\n".join(lines)
    (args.out / f"{stem}.md").write_text(text + "\n")
    print(f"wrote {args.out / stem}.json, .md\n")
    print(table(rows))


if __name__ == "__main__":
    main()
