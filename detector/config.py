"""Every recipe value in one place, each a dataclass field with its default.

The defaults follow the RetinaNet paper (Lin et al., 2017) except where a small
CPU-trained canvas needs otherwise; those fields say why in their comment.
`add_arguments` / `from_arguments` expose every field as a `--flag` so the
command lines of `detector.train` and `detector.evaluate` stay in sync with it.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field


@dataclass
class DataConfig:
    # "digits" (the defaults below) or "digits-dense": `--dataset digits-dense` first
    # sets the fields in DATASET_PRESETS, then any other flag overrides them.
    dataset: str = "digits"
    canvas_size: int = 160
    # Side of a digit's box, sqrt(w * h), drawn log-uniformly so that COCO's small
    # (< 32 px), medium and large (> 96 px) objects all occur.
    min_object_size: float = 12.0
    max_object_size: float = 128.0
    min_digits: int = 2
    max_digits: int = 5
    # Largest IoU a digit's box may have with an earlier one; 0 keeps boxes 2 px apart.
    max_overlap_iou: float = 0.0
    # Hard negatives per image: digit fragments, pen strokes and ink blobs in digit colours.
    min_distractors: int = 0
    max_distractors: int = 0
    # Background photo/noise is scaled by a factor drawn from this range, digit ink
    # colour from the next one: their gap is the contrast.
    background_brightness: tuple[float, ...] = (0.3, 0.65)
    ink_brightness: tuple[float, ...] = (0.75, 1.0)
    # Fraction of the 1797 scikit-learn digits reserved for the test images.
    test_digit_fraction: float = 0.25
    num_test_images: int = 300
    seed: int = 0
    # Train/evaluate on a COCO-format folder instead of the generated digits.
    coco_images: str = ""
    coco_annotations: str = ""
    coco_test_images: str = ""
    coco_test_annotations: str = ""


# The harder task of docs/ablation.md: many small, overlapping, low-contrast digits
# among hard negatives, on a smaller canvas (statistics in detector/README.md).
DATASET_PRESETS = {
    "digits": {},
    "digits-dense": dict(
        canvas_size=96,
        min_object_size=16.0,
        max_object_size=40.0,
        min_digits=3,
        max_digits=8,
        max_overlap_iou=0.2,
        min_distractors=0,
        max_distractors=2,
        background_brightness=(0.15, 0.45),
        ink_brightness=(0.75, 1.0),
        num_test_images=150,
    ),
}


def apply_dataset_preset(config: DataConfig, name: str) -> DataConfig:
    if name not in DATASET_PRESETS:
        raise ValueError(f"dataset must be one of {sorted(DATASET_PRESETS)}, got {name!r}")
    config.dataset = name
    for key, value in DATASET_PRESETS[name].items():
        setattr(config, key, value)
    return config


@dataclass
class ModelConfig:
    num_classes: int = 10
    # "small" is a from-scratch CPU-sized backbone; resnet18/34/50 are torchvision's.
    backbone: str = "small"
    backbone_width: int = 32
    backbone_weights: str = ""  # optional path to a local state_dict; nothing is downloaded
    fpn_channels: int = 64
    head_convs: int = 4
    head_norm: str = "gn"  # "gn", "bn" or "none"; see README for the measurement
    prior_prob: float = 0.01
    # Anchor base size = multiple x stride. The paper uses 4 (32 px on P3); our
    # digits go down to 12 px, so 2 keeps the smallest anchor at 16 px.
    anchor_size_multiple: float = 2.0
    anchor_scales: tuple[float, ...] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
    anchor_aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    fg_iou_threshold: float = 0.5
    bg_iou_threshold: float = 0.4
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    # Online hard example mining instead of the focal loss (docs/ablation.md, table d):
    # keep this many anchors per image (0 = off), at most this many negatives per positive (0 = any).
    ohem_keep: int = 0
    ohem_negatives_per_positive: float = 0.0
    ohem_nms_threshold: float = 0.7
    box_loss: str = "smooth_l1"  # "smooth_l1", "l1" or "giou"
    smooth_l1_beta: float = 0.1
    score_threshold: float = 0.05
    topk_per_level: int = 1000
    nms_threshold: float = 0.5
    detections_per_image: int = 100


@dataclass
class TrainConfig:
    loss: str = "fused"  # "fused" (focal_loss_ext) or "torchvision"
    batch_size: int = 16
    optimizer: str = "adamw"  # "adamw" or "sgd"
    lr: float = 4e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup_steps: int = 200
    # "cosine" to 0 over the budget, or "step": the lr times `lr_decay_factor` at each
    # fraction of the budget in `lr_decay_at` (the paper: 0.1 at 60k and 80k of 90k).
    lr_schedule: str = "cosine"
    lr_decay_at: tuple[float, ...] = (2 / 3, 8 / 9)
    lr_decay_factor: float = 0.1
    max_steps: int = 20000
    # Wall-clock budget. The cosine schedule follows whichever of steps or minutes
    # runs out first, so a slower (shared) machine still ends at a low learning
    # rate; 0 disables it and makes the schedule a pure function of the step.
    max_minutes: float = 30.0
    # End this invocation at this step without changing the schedule (0 = never):
    # splits one run into chunks on preemptible machines, and lets tests resume.
    stop_at_step: int = 0
    grad_clip: float = 10.0
    # Seeds the weights' initialization and picks the training images: seed s reads
    # images s * 2**24 onward, so seeds see disjoint images; the test set stays fixed.
    train_seed: int = 0
    output_dir: str = "runs/default"
    checkpoint_every: int = 200
    log_every: int = 20
    resume: bool = True
    threads: int = 0  # torch.set_num_threads; 0 keeps torch's default
    device: str = ""  # "" picks cuda when present


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Config:
        def build(kind, section):
            known = {f.name: f for f in dataclasses.fields(kind)}
            kwargs = {}
            for key, value in section.items():
                if key in known:
                    kwargs[key] = tuple(value) if isinstance(value, list) else value
            return kind(**kwargs)

        return cls(
            data=build(DataConfig, values.get("data", {})),
            model=build(ModelConfig, values.get("model", {})),
            train=build(TrainConfig, values.get("train", {})),
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--field-name` per config field, defaulting to None (= keep the config's)."""
    for section in (DataConfig, ModelConfig, TrainConfig):
        group = parser.add_argument_group(section.__name__)
        for f in dataclasses.fields(section):
            flag = "--" + f.name.replace("_", "-")
            default = f.default if f.default is not dataclasses.MISSING else None
            if isinstance(default, bool):
                group.add_argument(flag, type=_parse_bool, default=None, metavar="BOOL")
            elif isinstance(default, tuple):
                group.add_argument(flag, type=float, nargs="+", default=None)
            else:
                group.add_argument(flag, type=type(default), default=None)


def from_arguments(args: argparse.Namespace, base: Config | None = None) -> Config:
    config = base or Config()
    if getattr(args, "dataset", None) is not None:
        apply_dataset_preset(config.data, args.dataset)
    for section in (config.data, config.model, config.train):
        for f in dataclasses.fields(section):
            value = getattr(args, f.name, None)
            if value is not None:
                setattr(section, f.name, tuple(value) if isinstance(value, list) else value)
    return config


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")
