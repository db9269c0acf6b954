import dataclasses

import torch

from detector.coco import CocoFolder, write_coco_folder
from detector.data import DigitCanvas, digit_split
from detector.train import train


def test_dataset_is_deterministic_per_seed(tiny_config):
    first, second = DigitCanvas("train", tiny_config.data)[5], DigitCanvas("train", tiny_config.data)[5]
    assert torch.equal(first[0], second[0]) and torch.equal(first[1]["boxes"], second[1]["boxes"])
    tiny_config.data.seed = 1
    other = DigitCanvas("train", tiny_config.data)[5]
    assert not torch.equal(first[0], other[0])


def test_train_and_test_use_disjoint_digits():
    split = digit_split(0, 0.25)
    assert len(set(split["train"]) & set(split["test"])) == 0
    assert len(split["train"]) + len(split["test"]) == 1797


def test_boxes_lie_inside_and_cover_all_coco_sizes():
    dataset = DigitCanvas("train")
    areas, size = [], dataset.config.canvas_size
    for index in range(60):
        image, target = dataset[index]
        boxes = target["boxes"]
        assert image.shape == (3, size, size) and 0.0 <= image.min() and image.max() <= 1.0
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= size).all()
        assert target["labels"].min() >= 0 and target["labels"].max() < 10
        areas += ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).tolist()
    areas = torch.tensor(areas)
    assert (areas < 32**2).any() and ((areas >= 32**2) & (areas < 96**2)).any() and (areas >= 96**2).any()


def test_coco_folder_round_trip_and_training(tiny_config, tmp_path):
    source = DigitCanvas("test", tiny_config.data)
    annotations = write_coco_folder(source, tmp_path / "coco")
    loaded = CocoFolder(tmp_path / "coco" / "images", annotations)
    assert len(loaded) == len(source) and loaded.num_classes == 10
    for index in range(len(source)):
        (image, target), (original, expected) = loaded[index], source[index]
        torch.testing.assert_close(image, original, atol=1 / 255, rtol=0)
        torch.testing.assert_close(target["boxes"], expected["boxes"])
        assert torch.equal(target["labels"], expected["labels"])

    tiny_config.data.coco_images = str(tmp_path / "coco" / "images")
    tiny_config.data.coco_annotations = str(annotations)
    tiny_config.train.loss = "torchvision"
    tiny_config.train.max_steps = 2
    assert train(tiny_config)["step"] == 2


def test_dense_preset_overlaps_at_most_its_iou_and_draws_distractors():
    from torchvision.ops import box_iou

    from detector.config import DataConfig, apply_dataset_preset

    config = apply_dataset_preset(DataConfig(), "digits-dense")
    dense, size = DigitCanvas("train", config), config.canvas_size
    counts, overlapping = [], 0
    for index in range(20):
        image, target = dense[index]
        boxes = target["boxes"]
        assert image.shape == (3, size, size) and (boxes >= 0).all() and (boxes <= size).all()
        iou = box_iou(boxes, boxes).fill_diagonal_(0)
        assert iou.max() <= config.max_overlap_iou + 1e-6
        overlapping += int((iou > 0).any())
        counts.append(len(boxes))
    assert max(counts) <= config.max_digits and sum(counts) / len(counts) > config.min_digits
    assert overlapping > 0  # boxes do overlap, unlike the default data's 2 px gaps
    # The distractors are ink with no box: drawing none changes the image but no target.
    plain = dataclasses.replace(config, min_distractors=0, max_distractors=0)
    image, target = DigitCanvas("train", plain)[0]
    assert not torch.equal(image, dense[0][0])
