"""PNG figures: the training loss curve and test images with true and predicted boxes."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402


def plot_loss_curve(metrics_file: str | Path, png: str | Path) -> None:
    """Classification and box loss against images seen, from train's metrics.jsonl."""
    rows = [json.loads(line) for line in Path(metrics_file).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss_cls" in r]
    if not rows:
        return
    seen = [r["images_seen"] for r in rows]
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(6, 5), sharex=True, height_ratios=(3, 1))
    ax_loss.plot(seen, [r["loss_cls"] for r in rows], label="focal (classification)")
    ax_loss.plot(seen, [r["loss_box"] for r in rows], label="box regression")
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("loss per positive anchor")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_lr.plot(seen, [r["lr"] for r in rows], color="gray")
    ax_lr.set_ylabel("lr")
    ax_lr.set_xlabel("training images seen")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


def plot_detections(samples, png: str | Path, class_names=None, min_score: float = 0.3, columns: int = 4) -> None:
    """samples: list of (image (3, H, W), target dict, detection dict).

    True boxes dashed green with their class; predictions above `min_score` solid
    orange with class and score.
    """
    rows = -(-len(samples) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, target, detection) in zip(axes.flat, samples):
        ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
            _draw(ax, box, _name(class_names, label), "lime", "--", "bottom")
        keep = detection["scores"] >= min_score
        for box, label, score in zip(
            detection["boxes"][keep].tolist(), detection["labels"][keep].tolist(), detection["scores"][keep].tolist()
        ):
            _draw(ax, box, f"{_name(class_names, label)} {score:.2f}", "orange", "-", "top")
    fig.suptitle(f"true (green, dashed) and predicted (orange, score >= {min_score})", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)


def _name(class_names, label: int) -> str:
    return class_names[label] if class_names else str(label)


def _draw(ax, box, text: str, colour: str, style: str, where: str) -> None:
    x0, y0, x1, y1 = box
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linestyle=style, linewidth=1))
    y = y1 if where == "bottom" else y0
    ax.text(x0, y, text, color=colour, fontsize=6, va="top" if where == "bottom" else "bottom")
