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
    """Images of `canvas_size` px with min-max digits each; targets in absolute xyxy pixels."""

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
        self._draw_distractors(rng, image)
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
        # Dimmed so that the brighter digits stay visible on any background.
        low, high = self.config.background_brightness
        return (background * float(rng.uniform(low, high))).clamp_(0.0, 1.0)

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
                if all(self._may_overlap(box, other) for other in boxes):
                    break
            else:
                continue  # no free spot for this digit; the image gets one fewer
            self._ink(rng, image, glyph, top, left, height, width)
            boxes.append(box)
            labels.append(int(all_labels[digit]))
        return boxes, labels

    def _may_overlap(self, box: list, other: list) -> bool:
        if self.config.max_overlap_iou <= 0:
            return not _overlaps(box, other)
        return _iou(box, other) <= self.config.max_overlap_iou

    def _ink(self, rng, image: torch.Tensor, mask: torch.Tensor, top: int, left: int, height: int, width: int):
        """Blend `mask` (h, w) in [0, 1], resized to (height, width), into the image in one ink colour."""
        alpha = F.interpolate(mask[None, None], size=(height, width), mode="bilinear", align_corners=False)[0]
        low, high = self.config.ink_brightness
        colour = torch.from_numpy(rng.uniform(low, high, (3, 1, 1)).astype(np.float32))
        region = image[:, top : top + height, left : left + width]
        region.mul_(1 - alpha).add_(alpha * colour)

    def _draw_distractors(self, rng: np.random.Generator, image: torch.Tensor) -> None:
        """Hard negatives: things in digit colours and sizes that are not digits.

        A fragment (the top, bottom, left or right 35-60 % of a digit's ink), a pen
        stroke, or a Gaussian ink blob. They carry no box; digits may cover them.
        """
        cfg = self.config
        if cfg.max_distractors <= 0:
            return
        glyphs, _ = _digit_glyphs()
        canvas = image.shape[-1]
        for _ in range(int(rng.integers(cfg.min_distractors, cfg.max_distractors + 1))):
            side = float(np.exp(rng.uniform(math.log(cfg.min_object_size), math.log(cfg.max_object_size))))
            kind = rng.integers(3)
            if kind == 0:
                glyph = glyphs[int(self.digit_indices[rng.integers(len(self.digit_indices))])]
                keep = rng.uniform(0.35, 0.6)
                rows, cols = glyph.shape
                edge = rng.integers(4)
                if edge < 2:
                    cut = max(1, round(keep * rows))
                    mask = glyph[:cut] if edge == 0 else glyph[rows - cut :]
                else:
                    cut = max(1, round(keep * cols))
                    mask = glyph[:, :cut] if edge == 2 else glyph[:, cols - cut :]
            elif kind == 1:
                mask = _stroke(rng)
            else:
                mask = _blob(rng)
            aspect = mask.shape[1] / mask.shape[0]
            height = min(canvas, max(3, round(side / math.sqrt(aspect))))
            width = min(canvas, max(3, round(side * math.sqrt(aspect))))
            top = int(rng.integers(canvas - height + 1))
            left = int(rng.integers(canvas - width + 1))
            self._ink(rng, image, mask, top, left, height, width)


def _stroke(rng: np.random.Generator, grid: int = 16) -> torch.Tensor:
    """A straight or bent pen line on a (grid, grid) mask."""
    points = rng.uniform(1, grid - 1, (3, 2))
    if rng.random() < 0.5:
        points[1] = (points[0] + points[2]) / 2  # straight
    ys, xs = np.mgrid[0:grid, 0:grid] + 0.5
    distance = np.full((grid, grid), np.inf)
    for a, b in zip(points[:-1], points[1:]):
        d = b - a
        t = np.clip(((xs - a[0]) * d[0] + (ys - a[1]) * d[1]) / max(float(d @ d), 1e-6), 0, 1)
        distance = np.minimum(distance, np.hypot(xs - a[0] - t * d[0], ys - a[1] - t * d[1]))
    width = rng.uniform(0.8, 2.0)
    return torch.from_numpy(np.clip(width - distance + 0.5, 0, 1).astype(np.float32))


def _blob(rng: np.random.Generator, grid: int = 16) -> torch.Tensor:
    """An elliptical Gaussian ink blot on a (grid, grid) mask."""
    ys, xs = np.mgrid[0:grid, 0:grid] + 0.5 - grid / 2
    sx, sy = rng.uniform(grid / 8, grid / 3, 2)
    return torch.from_numpy(np.exp(-0.5 * ((xs / sx) ** 2 + (ys / sy) ** 2)).astype(np.float32))


def _iou(a: list, b: list) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


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
