"""Shared fixtures: a tiny model and canvas so the detector suite runs in about a minute on 2 cores."""

from __future__ import annotations

import pytest

from detector.config import Config


@pytest.fixture
def tiny_config(tmp_path) -> Config:
    config = Config()
    config.data.canvas_size = 128
    config.data.max_object_size = 96.0
    config.data.num_test_images = 4
    config.model.backbone_width = 8
    config.model.fpn_channels = 16
    config.model.head_convs = 2
    config.train.batch_size = 2
    config.train.max_minutes = 0.0
    config.train.warmup_steps = 2
    config.train.log_every = 1
    config.train.output_dir = str(tmp_path / "run")
    return config


@pytest.fixture
def fast_config(tiny_config) -> Config:
    """For end-to-end runs of seconds: a 64 px canvas, two test images, few detections to score."""
    tiny_config.data.canvas_size, tiny_config.data.max_object_size = 64, 40.0
    tiny_config.data.num_test_images = 2
    tiny_config.model.topk_per_level, tiny_config.model.detections_per_image = 50, 10
    tiny_config.train.loss = "torchvision"
    return tiny_config
