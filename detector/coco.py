"""COCO-format data: a dataset over an image folder + annotations JSON, and the writers
that turn any detection dataset and model outputs into COCO dictionaries.

Inside the detector, classes are contiguous labels 0..K-1 (the JSON's category
ids in increasing order) and boxes are absolute xyxy. In the COCO dictionaries
written here, image ids are dataset index + 1, category ids are label + 1 and
annotation ids count from 1 (pycocotools treats id 0 as "no match").
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image


class CocoFolder(torch.utils.data.Dataset):
    """Images in `image_dir`, boxes and categories from a COCO `annotations` JSON.

    Crowd annotations are skipped. Returns (image (3, H, W) float in [0, 1],
    {"boxes": (G, 4) xyxy, "labels": (G,) int64, "image_id": index + 1}).
    """

    def __init__(self, image_dir: str | Path, annotations: str | Path):
        self.image_dir = Path(image_dir)
        with open(annotations) as f:
            coco = json.load(f)
        categories = sorted(coco["categories"], key=lambda c: c["id"])
        self.category_ids = [c["id"] for c in categories]
        self.class_names = [c["name"] for c in categories]
        label_of = {cat_id: label for label, cat_id in enumerate(self.category_ids)}
        self.images = sorted(coco["images"], key=lambda i: i["id"])
        per_image: dict[int, list] = {image["id"]: [] for image in self.images}
        for ann in coco.get("annotations", []):
            if ann.get("iscrowd", 0) or ann["image_id"] not in per_image:
                continue
            x, y, w, h = ann["bbox"]
            if w > 0 and h > 0:
                per_image[ann["image_id"]].append(([x, y, x + w, y + h], label_of[ann["category_id"]]))
        self.annotations = [per_image[image["id"]] for image in self.images]

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        info = self.images[index]
        with Image.open(self.image_dir / info["file_name"]) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        boxes = [box for box, _ in self.annotations[index]]
        labels = [label for _, label in self.annotations[index]]
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "image_id": index + 1,
        }
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous(), target


def ground_truth_dict(dataset, class_names: list[str] | None = None) -> dict:
    """The dataset's targets as a COCO ground-truth dictionary (box area = w * h)."""
    images, annotations = [], []
    for index in range(len(dataset)):
        image, target = dataset[index]
        images.append({"id": index + 1, "height": int(image.shape[-2]), "width": int(image.shape[-1])})
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
            x0, y0, x1, y1 = box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": label + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    names = class_names or [str(k) for k in range(dataset.num_classes)]
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def detections_to_coco(detections: list[dict], image_ids: list[int]) -> list[dict]:
    """Model outputs (xyxy boxes, scores, labels per image) as COCO result entries."""
    results = []
    for image_id, det in zip(image_ids, detections):
        for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()):
            x0, y0, x1, y1 = box
            results.append(
                {"image_id": image_id, "category_id": label + 1, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score}
            )
    return results


def write_coco_folder(dataset, folder: str | Path, class_names: list[str] | None = None) -> Path:
    """Write `dataset` as PNGs plus annotations.json; returns the JSON's path."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    coco = ground_truth_dict(dataset, class_names)
    for index, info in enumerate(coco["images"]):
        image, _ = dataset[index]
        info["file_name"] = f"{info['id']:06d}.png"
        pixels = (image.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / "images" / info["file_name"])
    path = folder / "annotations.json"
    path.write_text(json.dumps(coco))
    return path
