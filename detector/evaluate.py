"""COCO AP of a trained checkpoint on the held-out test set.

    python -m detector.evaluate                         # the run in runs/default
    python -m detector.evaluate --output-dir runs/tv    # the folder `train --output-dir` wrote
    python -m detector.evaluate --checkpoint FILE.pt    # a checkpoint file anywhere

Prints AP, AP50, AP75, AP_S, AP_M, AP_L (pycocotools) and writes them to
<run folder>/eval/metrics.json, with a PNG of test images with predicted and true boxes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

import torch

from detector.coco import detections_to_coco, ground_truth_dict
from detector.data import build_dataset, collate
from detector.plots import plot_detections

METRIC_NAMES = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")


def coco_metrics(ground_truth: dict, detections: list[dict]) -> dict[str, float]:
    """pycocotools bbox metrics; all zero when there is no detection at all."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not detections:  # COCO.loadRes rejects an empty list
        return {name: 0.0 for name in METRIC_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = ground_truth
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # stats[:6] = AP@[.5:.95], AP50, AP75, AP small, medium, large; -1 means "no such objects".
    return {name: float(value) for name, value in zip(METRIC_NAMES, evaluator.stats[:6])}


@torch.no_grad()
def predict_dataset(model, dataset, batch_size: int = 16, device: str = "cpu") -> list[dict]:
    was_training = model.training
    model.eval()
    detections = []
    for start in range(0, len(dataset), batch_size):
        batch = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        images, _ = collate(batch)
        sizes = [tuple(image.shape[-2:]) for image, _ in batch]
        outputs = model(images.to(device), image_sizes=sizes)
        detections += [{k: v.cpu() for k, v in out.items()} for out in outputs]
    model.train(was_training)
    return detections


def evaluate_model(model, dataset, batch_size: int = 16, device: str = "cpu") -> tuple[dict, list[dict]]:
    detections = predict_dataset(model, dataset, batch_size, device)
    ground_truth = ground_truth_dict(dataset, getattr(dataset, "class_names", None))
    image_ids = [info["id"] for info in ground_truth["images"]]
    return coco_metrics(ground_truth, detections_to_coco(detections, image_ids)), detections


def format_metrics(metrics: dict[str, float]) -> str:
    header = " ".join(f"{name:>6}" for name in METRIC_NAMES)
    values = " ".join(f"{metrics[name]:6.3f}" for name in METRIC_NAMES)
    return f"{header}\n{values}"


def main(argv: list[str] | None = None) -> dict:
    from detector.checkpoint import load_for_inference

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="", help="the run folder train wrote (default runs/default)")
    parser.add_argument("--checkpoint", default="", help="default: <output-dir>/checkpoint.pt")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-plot-images", type=int, default=8)
    args = parser.parse_args(argv)

    if args.checkpoint:
        checkpoint = Path(args.checkpoint)
        run_dir = Path(args.output_dir) if args.output_dir else checkpoint.parent
    else:
        run_dir = Path(args.output_dir or "runs/default")
        checkpoint = run_dir / "checkpoint.pt"
    if not checkpoint.exists():
        sys.exit(f"no checkpoint at {checkpoint}; train one first with `python -m detector.train`")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, config, step = load_for_inference(checkpoint, device)
    dataset = build_dataset(config.data, "test")
    output_dir = run_dir / "eval"
    output_dir.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    metrics, detections = evaluate_model(model, dataset, args.batch_size, device)
    seconds = time.perf_counter() - start
    print(f"{len(dataset)} test images, checkpoint step {step}, {seconds:.1f} s")
    print(format_metrics(metrics))

    record = {"checkpoint": str(checkpoint), "step": step, "num_images": len(dataset), **metrics}
    (output_dir / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    count = min(args.num_plot_images, len(dataset))
    samples = [(*dataset[i], detections[i]) for i in range(count)]
    plot_detections(samples, output_dir / "detections.png", getattr(dataset, "class_names", None))
    print(f"wrote {output_dir / 'metrics.json'} and {output_dir / 'detections.png'}")
    return record


if __name__ == "__main__":
    main()
