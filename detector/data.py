"""Digits on a canvas: a detection dataset generated offline, with no download.

Objects are scikit-learn's bundled 8x8 handwritten digits (1797 of them, 10
classes), cropped to their ink, scaled and pasted without overlap onto crops of
scikit-learn's sample photographs or onto smooth noise. The digit instances are
split once by `seed`: the test images only use digits the model never saw in
training. Every image is a pure function of (seed, split, index), so the test
set is fixed and training images can be generated on the fly and replayed
exactly after a resume.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from detector.config import DataConfig

_SPLIT_IDS = {"train": 0, "test": 1}
_TRAIN_LENGTH = 2**31 - 1  # training images are unbounded; any index is valid
_MAX_PLACEMENT_TRIES = 30


@functools.cache
def _digit_glyphs() -> tuple[list[torch.Tensor], np.ndarray]:
    """All 1797 digits as ink-cropped (8, w) tensors in [0, 1], with their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    glyphs = []
    for image in digits.images:
        columns = np.flatnonzero(image.max(axis=0) > 0)
        rows = np.flatnonzero(image.max(axis=1) > 0)
        crop = image[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]
        glyphs.append(torch.from_numpy(crop / 16.0).float())
    return glyphs, digits.target.astype(np.int64)


@functools.cache
def _background_photos() -> tuple[torch.Tensor, ...]:
    """scikit-learn's sample photographs (china.jpg, flower.jpg) as (3, H, W) in [0, 1]."""
    from sklearn.datasets import load_sample_images

    return tuple(torch.tensor(p).permute(2, 0, 1).float() / 255.0 for p in load_sample_images().images)


@functools.cache
def digit_split(seed: int, test_fraction: float) -> dict[str, np.ndarray]:
    """Indices of the digit instances used by each split; disjoint by construction."""
    _, labels = _digit_glyphs()
    order = np.random.default_rng(seed).permutation(len(labels))
    num_test = int(round(test_fraction * len(labels)))
    return {"test": np.sort(order[:num_test]), "train": np.sort(order[num_test:])}


class DigitCanvas(torch.utils.data.Dataset):
    """Images of `canvas_size` px with 2-5 digits each; targets in absolute xyxy pixels."""

    num_classes = 10

    def __init__(self, split: str, config: DataConfig | None = None):
        if split not in _SPLIT_IDS:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.split = split
        self.config = config or DataConfig()
        self.digit_indices = digit_split(self.config.seed, self.config.test_digit_fraction)[split]

    def __len__(self) -> int:
        return self.config.num_test_images if self.split == "test" else _TRAIN_LENGTH

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        rng = np.random.default_rng([self.config.seed, _SPLIT_IDS[self.split], index])
        size = self.config.canvas_size
        image = self._background(rng, size)
        boxes, labels = self._paste_digits(rng, image)
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "image_id": index + 1,
        }
        return image, target

    def _background(self, rng: np.random.Generator, size: int) -> torch.Tensor:
        if rng.random() < 0.5:
            photo = _background_photos()[rng.integers(2)]
            _, height, width = photo.shape
            side = int(rng.integers(size // 2, min(height, width) + 1))
            top = int(rng.integers(height - side + 1))
            left = int(rng.integers(width - side + 1))
            crop = photo[None, :, top : top + side, left : left + side]
            background = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)[0]
        else:
            # Smooth colour noise: a coarse random grid upsampled, plus fine grain.
            coarse = torch.from_numpy(rng.random((1, 3, 6, 6), dtype=np.float32))
            background = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0]
            background += torch.from_numpy(rng.normal(0.0, 0.05, (3, size, size)).astype(np.float32))
        # Dimmed so that the bright digits stay visible on any background.
        return (background * float(rng.uniform(0.3, 0.65))).clamp_(0.0, 1.0)

    def _paste_digits(self, rng: np.random.Generator, image: torch.Tensor) -> tuple[list, list]:
        glyphs, all_labels = _digit_glyphs()
        cfg = self.config
        canvas = image.shape[-1]
        boxes, labels = [], []
        count = int(rng.integers(cfg.min_digits, cfg.max_digits + 1))
        sides = np.exp(rng.uniform(math.log(cfg.min_object_size), math.log(cfg.max_object_size), count))
        # Largest first: a big digit rarely finds room on a canvas already filled.
        for side in sorted(sides, reverse=True):
            digit = int(self.digit_indices[rng.integers(len(self.digit_indices))])
            glyph = glyphs[digit]
            aspect = glyph.shape[1] / glyph.shape[0] * rng.uniform(0.85, 1.15)  # width / height
            height = min(canvas, max(4, round(side / math.sqrt(aspect))))
            width = min(canvas, max(3, round(side * math.sqrt(aspect))))
            for _ in range(_MAX_PLACEMENT_TRIES):
                top = int(rng.integers(canvas - height + 1))
                left = int(rng.integers(canvas - width + 1))
                box = [left, top, left + width, top + height]
                if all(not _overlaps(box, other) for other in boxes):
                    break
            else:
                continue  # no free spot for this digit; the image gets one fewer
            alpha = F.interpolate(glyph[None, None], size=(height, width), mode="bilinear", align_corners=False)[0]
            colour = torch.from_numpy(rng.uniform(0.75, 1.0, (3, 1, 1)).astype(np.float32))
            region = image[:, top : top + height, left : left + width]
            region.mul_(1 - alpha).add_(alpha * colour)
            boxes.append(box)
            labels.append(int(all_labels[digit]))
        return boxes, labels


def _overlaps(a: list, b: list, margin: int = 2) -> bool:
    return a[0] < b[2] + margin and b[0] < a[2] + margin and a[1] < b[3] + margin and b[1] < a[3] + margin


def collate(batch: list) -> tuple[torch.Tensor, list[dict]]:
    """Stack images, zero-padding to the largest height/width rounded up to 32."""
    images, targets = zip(*batch)
    height = max(i.shape[-2] for i in images)
    width = max(i.shape[-1] for i in images)
    height, width = -(-height // 32) * 32, -(-width // 32) * 32
    stacked = images[0].new_zeros((len(images), 3, height, width))
    for slot, image in zip(stacked, images):
        slot[:, : image.shape[-2], : image.shape[-1]].copy_(image)
    return stacked, list(targets)


def build_dataset(config: DataConfig, split: str) -> torch.utils.data.Dataset:
    """The COCO-format folder named in the config for `split`, else the generated digits."""
    images, annotations = (
        (config.coco_images, config.coco_annotations)
        if split == "train"
        else (config.coco_test_images or config.coco_images, config.coco_test_annotations or config.coco_annotations)
    )
    if annotations:
        from detector.coco import CocoFolder

        return CocoFolder(images, annotations)
    return DigitCanvas(split, config)
