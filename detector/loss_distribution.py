"""Figure 4 of the RetinaNet paper: how the focal loss spreads over easy and hard samples.

    python -m detector.loss_distribution runs/ablation/steps300/b-gamma2/seed0 --output docs/figure4.png

Runs a trained (gamma = 2) model on the held-out images, takes its (anchor, class)
predictions -- every positive and a random 1e5 of the negatives -- and for each gamma
computes -(1 - p_t)^gamma log p_t on those same predictions, sorts it, and plots the
cumulative share of the loss against the fraction of samples, positives and
negatives side by side.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

GAMMAS = (0.0, 0.5, 1.0, 2.0)


def focal_terms(log_p_t: Tensor, gamma: float) -> Tensor:
    """-(1 - p_t)^gamma log p_t from log p_t, in float64."""
    log_p_t = log_p_t.double()
    return -((-torch.expm1(log_p_t)) ** gamma) * log_p_t


def cumulative_loss(log_p_t: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    """(fraction of samples, cumulative share of the loss), samples sorted from easiest to hardest."""
    loss, _ = torch.sort(focal_terms(log_p_t, gamma))
    share = torch.cumsum(loss, 0) / loss.sum()
    fraction = torch.arange(1, len(loss) + 1, dtype=torch.float64) / len(loss)
    return fraction, share


def hardest_share(log_p_t: Tensor, gamma: float, fraction: float) -> float:
    """Share of the total loss held by the hardest `fraction` of the samples."""
    loss, _ = torch.sort(focal_terms(log_p_t, gamma), descending=True)
    count = int(round(fraction * len(loss)))
    return float(loss[:count].sum() / loss.sum())


def fraction_holding(log_p_t: Tensor, gamma: float, share: float) -> float:
    """Smallest fraction of the hardest samples whose loss reaches `share` of the total."""
    loss, _ = torch.sort(focal_terms(log_p_t, gamma), descending=True)
    cumulative = torch.cumsum(loss, 0) / loss.sum()
    return float((torch.searchsorted(cumulative, torch.tensor(share, dtype=torch.float64)) + 1) / len(loss))


@torch.no_grad()
def collect_log_p_t(model, dataset, num_negatives: int = 100_000, batch_size: int = 16, seed: int = 0):
    """log p_t of every positive and of `num_negatives` random negative (anchor, class) pairs.

    Positives: the true class of each positive anchor. Negatives: every other class of
    a non-ignored anchor. Labels follow `detector.matcher`.
    """
    from detector.data import collate

    model.eval()
    positives, negatives = [], []
    for start in range(0, len(dataset), batch_size):
        images, targets = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        logits, _, anchors = model.predict(images)
        logits = torch.cat(logits, 1).double()
        labels, _ = model.assign(torch.cat(anchors), targets)
        num_classes = logits.shape[-1]
        kept = labels >= 0
        target = F.one_hot(labels.clamp(min=0), num_classes + 1)[..., :num_classes].bool()
        log_p_t = torch.where(target, F.logsigmoid(logits), F.logsigmoid(-logits))
        positives.append(log_p_t[target & kept.unsqueeze(-1)])
        negatives.append(log_p_t[~target & kept.unsqueeze(-1)])
    negatives = torch.cat(negatives)
    generator = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(negatives), generator=generator)[:num_negatives]
    return torch.cat(positives), negatives[pick]


def plot(positives: Tensor, negatives: Tensor, png: str | Path, gammas=GAMMAS) -> None:
    from detector.plots import plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
    for ax, samples, title in ((axes[0], positives, "positive"), (axes[1], negatives, "negative")):
        for gamma in gammas:
            fraction, share = cumulative_loss(samples, gamma)
            ax.plot(fraction.numpy(), share.numpy(), label=f"γ = {gamma:g}")
        ax.set_title(f"{title} samples ({len(samples):,})")
        ax.set_xlabel("fraction of samples (easiest to hardest)")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("cumulative normalized loss")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def summary(positives: Tensor, negatives: Tensor, gammas=GAMMAS) -> dict:
    return {
        "num_positives": len(positives),
        "num_negatives": len(negatives),
        **{
            f"gamma{gamma:g}": {
                "positive_fraction_with_half_the_loss": fraction_holding(positives, gamma, 0.5),
                "negative_fraction_with_half_the_loss": fraction_holding(negatives, gamma, 0.5),
                "negative_share_of_hardest_1pct": hardest_share(negatives, gamma, 0.01),
            }
            for gamma in gammas
        },
    }


def main(argv: list[str] | None = None) -> dict:
    from detector.checkpoint import load_for_inference
    from detector.data import build_dataset

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a training output folder (holds checkpoint.pt)")
    parser.add_argument("--output", default="", help="PNG path; default <run_dir>/figure4.png")
    parser.add_argument("--num-negatives", type=int, default=100_000)
    args = parser.parse_args(argv)
    model, config, _ = load_for_inference(Path(args.run_dir) / "checkpoint.pt")
    positives, negatives = collect_log_p_t(model, build_dataset(config.data, "test"), args.num_negatives)
    png = Path(args.output or Path(args.run_dir) / "figure4.png")
    plot(positives, negatives, png)
    result = summary(positives, negatives)
    png.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
